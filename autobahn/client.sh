#!/usr/bin/env bash
# Run Autobahn|Testsuite's fuzzingserver and let a WebSocket client test itself
# against it.
#
# Usage:
#   autobahn/client.sh [--cases '1.*,2.*,...'] [--expected FILE] [--update] \
#                      -- <client command...>
#
# This script installs wstest (autobahn/install.sh), starts
# `wstest -m fuzzingserver` on ws://127.0.0.1:9002, waits for the port, runs
# the client command in the foreground and then stops the fuzzingserver
# (always, also on failure or Ctrl-C) and compares the results with FILE via
# autobahn/compare.py.
#
# The client command is expected to, as the usual Autobahn test clients do:
#   1. GET ws://127.0.0.1:9002/getCaseCount         -> one text message, N
#   2. for i in 1..N: ws://127.0.0.1:9002/runCase?case=i&agent=switchboard
#      and echo back every text/binary message until the server closes
#   3. ws://127.0.0.1:9002/updateReports?agent=switchboard   (writes index.json)
# It gets AUTOBAHN_URL=ws://127.0.0.1:9002 and AUTOBAHN_AGENT=switchboard in
# its environment for convenience.
#
#   --cases    comma-separated case patterns
#              (default: 1.* to 13.*; there is no 8.*; nothing is excluded)
#   --expected expected results (default: autobahn/expected-client.json)
#   --update   rewrite the expected file from this run instead of comparing
#
# Exit status: 0 only if the client exits 0, the run matches the expected
# file and every case is OK or INFORMATIONAL.  The work dir (spec, logs, HTML
# reports) is kept and its path printed.
#
# Environment:
#   AUTOBAHN_WORKDIR        use this work dir instead of a fresh mktemp one
#   AUTOBAHN_RUN_TIMEOUT    seconds allowed for the client command (default 3600;
#                           includes compiling it if it is a `cargo run`)
#   SWITCHBOARD_CACHE       see autobahn/install.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AB_NAME="autobahn/client.sh"
# shellcheck source=autobahn/lib.sh
source "$HERE/lib.sh"

HOST=127.0.0.1
PORT=9002
AGENT=switchboard
CASES='1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,11.*,12.*,13.*'
EXPECTED="$HERE/expected-client.json"
UPDATE=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

while (($#)); do
  case "$1" in
    --cases)      (($# >= 2)) || usage; CASES="$2"; shift 2 ;;
    --cases=*)    CASES="${1#*=}"; shift ;;
    --expected)   (($# >= 2)) || usage; EXPECTED="$2"; shift 2 ;;
    --expected=*) EXPECTED="${1#*=}"; shift ;;
    --update)     UPDATE=(--update); shift ;;
    -h|--help)    usage ;;
    --)           shift; break ;;
    *)            ab_log "unknown argument: $1"; usage ;;
  esac
done
(($#)) || { ab_log "missing client command after --"; usage; }

WSTEST="$("$HERE/install.sh")"

WORK="${AUTOBAHN_WORKDIR:-$(mktemp -d -t switchboard-autobahn-client.XXXXXX)}"
mkdir -p "$WORK"
REPORTS="$WORK/reports/clients"
rm -rf "$REPORTS"

# The fuzzingserver spec: the requested cases, nothing excluded.
python3 - "$WORK/spec.json" "ws://$HOST:$PORT" "$REPORTS" "$(ab_cases_json "$CASES")" <<'EOF'
import json, sys
path, url, outdir, cases = sys.argv[1:]
spec = {
    "url": url,
    "outdir": outdir,
    "cases": json.loads(cases),
    "exclude-cases": [],
    "exclude-agent-cases": {},
    "options": {"failByDrop": False},
}
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
EOF
ab_log "work dir: $WORK (cases: $CASES)"

if ab_port_open "$HOST" "$PORT"; then
  ab_die "$HOST:$PORT is already in use; stop whatever listens there first"
fi

trap ab_stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- start the fuzzingserver (-u 0: no extra HTTP server on port 8080) --------
ab_log "starting wstest -m fuzzingserver (log: $WORK/wstest.log)"
ab_start --cwd "$WORK" "$WORK/wstest.log" "$WSTEST" -m fuzzingserver -s "$WORK/spec.json" -u 0
FUZZER_PID=$AB_PID
ab_wait_port "$HOST" "$PORT" "$FUZZER_PID" "$WORK/wstest.log" 60
ab_log "fuzzingserver is listening on $HOST:$PORT"

# --- run the client -----------------------------------------------------------
STARTED=$SECONDS
ab_log "running client: $* (log: $WORK/client.log)"
export AUTOBAHN_URL="ws://$HOST:$PORT" AUTOBAHN_AGENT="$AGENT"
ab_start "$WORK/client.log" "$@"
CLIENT_PID=$AB_PID
RC=0
ab_wait_done "$CLIENT_PID" "$WORK/wstest.log" "${AUTOBAHN_RUN_TIMEOUT:-3600}" "Running test case ID" || RC=$?
ab_log "client finished in $((SECONDS - STARTED))s with status $RC"

FAILED=0
if ((RC != 0)); then
  ab_tail "$WORK/client.log"
  ab_log "ERROR: the client failed (status $RC)"
  FAILED=1
fi
if ! ab_alive "$FUZZER_PID"; then
  ab_tail "$WORK/wstest.log"
  ab_log "ERROR: the fuzzingserver exited during the run (log: $WORK/wstest.log)"
  FAILED=1
fi

# --- stop the fuzzingserver (the EXIT trap would too) and compare -------------
ab_stop_all

CMP=0
if [[ -f "$REPORTS/index.json" ]]; then
  python3 "$HERE/compare.py" "$REPORTS" --agent "$AGENT" --expected "$EXPECTED" \
    ${UPDATE[@]+"${UPDATE[@]}"} || CMP=$?
else
  ab_log "ERROR: no report written ($REPORTS/index.json missing; did the client call /updateReports?agent=$AGENT ?)"
  CMP=1
fi

ab_log "HTML reports: $REPORTS/index.html"
if ((FAILED || CMP)); then
  ab_log "FAILED"
  exit 1
fi
ab_log "passed"
