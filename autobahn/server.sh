#!/usr/bin/env bash
# Run Autobahn|Testsuite's fuzzingclient against a WebSocket server.
#
# Usage:
#   autobahn/server.sh [--cases '1.*,2.*,...'] [--expected FILE] [--update] \
#                      -- <server command...>
#
# The server command must serve WebSocket echo on ws://127.0.0.1:9001.  This
# script installs wstest (autobahn/install.sh), starts the server in the
# background, waits for the port, runs every requested case against it with
# agent name "switchboard", stops the server (always, also on failure or
# Ctrl-C) and compares the results with FILE via autobahn/compare.py.
#
#   --cases    comma-separated case patterns
#              (default: 1.* to 10.*; there is no 8.*; nothing is excluded)
#   --expected expected results (default: autobahn/expected-server.json)
#   --update   rewrite the expected file from this run instead of comparing
#
# Exit status: 0 only if the run matches the expected file and every case is
# OK or INFORMATIONAL.  The work dir (spec, logs, HTML reports) is kept and its
# path printed.
#
# Environment:
#   AUTOBAHN_WORKDIR        use this work dir instead of a fresh mktemp one
#   AUTOBAHN_START_TIMEOUT  seconds to wait for the server port (default 300,
#                           enough for a `cargo run` that has to compile)
#   AUTOBAHN_RUN_TIMEOUT    seconds allowed for the whole wstest run (default 3600)
#   SWITCHBOARD_CACHE       see autobahn/install.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AB_NAME="autobahn/server.sh"
# shellcheck source=autobahn/lib.sh
source "$HERE/lib.sh"

HOST=127.0.0.1
PORT=9001
AGENT=switchboard
CASES='1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*'
EXPECTED="$HERE/expected-server.json"
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
(($#)) || { ab_log "missing server command after --"; usage; }

WSTEST="$("$HERE/install.sh")"

WORK="${AUTOBAHN_WORKDIR:-$(mktemp -d -t switchboard-autobahn-server.XXXXXX)}"
mkdir -p "$WORK"
REPORTS="$WORK/reports/servers"
rm -rf "$REPORTS"

# The fuzzingclient spec: one server, the requested cases, nothing excluded.
python3 - "$WORK/spec.json" "$AGENT" "ws://$HOST:$PORT" "$REPORTS" "$(ab_cases_json "$CASES")" <<'EOF'
import json, sys
path, agent, url, outdir, cases = sys.argv[1:]
spec = {
    "outdir": outdir,
    "servers": [{"agent": agent, "url": url}],
    "cases": json.loads(cases),
    "exclude-cases": [],
    "exclude-agent-cases": {},
    "options": {"failByDrop": False},
}
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
EOF
ab_log "work dir: $WORK (cases: $CASES)"

# Another process on the port would silently be tested instead of ours.
if ab_port_open "$HOST" "$PORT"; then
  ab_die "$HOST:$PORT is already in use; stop whatever listens there first"
fi

trap ab_stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- start the server ---------------------------------------------------------
ab_log "starting server: $* (log: $WORK/server.log)"
ab_start "$WORK/server.log" "$@"
SERVER_PID=$AB_PID
ab_wait_port "$HOST" "$PORT" "$SERVER_PID" "$WORK/server.log" "${AUTOBAHN_START_TIMEOUT:-300}"
ab_log "server is listening on $HOST:$PORT"

# --- run the fuzzingclient ----------------------------------------------------
STARTED=$SECONDS
ab_log "running wstest -m fuzzingclient (log: $WORK/wstest.log)"
ab_start --cwd "$WORK" "$WORK/wstest.log" "$WSTEST" -m fuzzingclient -s "$WORK/spec.json"
WSTEST_PID=$AB_PID
RC=0
ab_wait_done "$WSTEST_PID" "$WORK/wstest.log" "${AUTOBAHN_RUN_TIMEOUT:-3600}" "Running test case ID" || RC=$?
ab_log "wstest finished in $((SECONDS - STARTED))s with status $RC"

FAILED=0
if ((RC != 0)); then
  ab_tail "$WORK/wstest.log"
  ab_log "ERROR: wstest failed (status $RC)"
  FAILED=1
fi
# When the server stops accepting connections, the fuzzingclient skips the
# remaining cases and still writes a (short) report: make that loud.
if grep -q "^Connection to .* failed" "$WORK/wstest.log"; then
  ab_log "ERROR: $(grep -m1 "^Connection to .* failed" "$WORK/wstest.log"); later cases did not run"
  FAILED=1
fi
if ! ab_alive "$SERVER_PID"; then
  ab_tail "$WORK/server.log"
  ab_log "ERROR: the server exited during the run (log: $WORK/server.log)"
  FAILED=1
fi

# --- stop the server (the EXIT trap would too) and compare --------------------
ab_stop_all

CMP=0
if [[ -f "$REPORTS/index.json" ]]; then
  python3 "$HERE/compare.py" "$REPORTS" --agent "$AGENT" --expected "$EXPECTED" \
    ${UPDATE[@]+"${UPDATE[@]}"} || CMP=$?
else
  ab_log "ERROR: no report written ($REPORTS/index.json missing)"
  CMP=1
fi

ab_log "HTML reports: $REPORTS/index.html"
if ((FAILED || CMP)); then
  ab_log "FAILED"
  exit 1
fi
ab_log "passed"
