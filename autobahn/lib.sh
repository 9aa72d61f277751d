# Shared helpers for autobahn/server.sh and autobahn/client.sh.
# Sourced, not run.  Expects `set -euo pipefail` in the caller.

AB_NAME="${AB_NAME:-autobahn}"
AB_PIDS=()          # background processes we started (each leads its own process group)

ab_log() { echo "$AB_NAME: $*" >&2; }

# ab_tail FILE: show the last lines of a log file on stderr.
ab_tail() {
  if [[ -s "$1" ]]; then
    echo "----- last lines of $1 -----" >&2
    tail -n "${AB_TAIL_LINES:-30}" "$1" >&2
    echo "-----" >&2
  fi
}

ab_die() { ab_log "ERROR: $*"; exit 1; }

# ab_cases_json "1.*,2.*": the comma-separated list as a JSON array.
ab_cases_json() {
  python3 -c 'import json, sys; print(json.dumps([c.strip() for c in sys.argv[1].split(",") if c.strip()]))' "$1"
}

# ab_port_open HOST PORT: true if something accepts TCP connections there.
ab_port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# ab_start [--cwd DIR] LOGFILE CMD...: start CMD in the background (in DIR)
# with stdout+stderr in LOGFILE and stdin from /dev/null.  setsid makes it the
# leader of its own process group, so ab_stop also reaches anything it spawns
# (e.g. `cargo run` and the server binary it starts).  The subshell execs
# setsid, which (not being a group leader) execs CMD without forking, so $! is
# CMD's own pid.  The pid is left in AB_PID.
ab_start() {
  local dir=.
  if [[ "$1" == --cwd ]]; then dir="$2"; shift 2; fi
  local logfile="$1"; shift
  (cd "$dir" && exec setsid "$@") >"$logfile" 2>&1 </dev/null &
  AB_PID=$!
  AB_PIDS+=("$AB_PID")
}

# ab_alive PID: true while the process has not exited.
ab_alive() {
  local state
  state="$(ps -o stat= -p "$1" 2>/dev/null || true)"
  [[ -n "$state" && "$state" != Z* ]]
}

# ab_stop PID: SIGTERM its process group, SIGKILL after 10 s, reap it.
ab_stop() {
  local pid="$1" i
  if kill -0 -- "-$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# ab_stop_all: stop every process started with ab_start, newest first.
# Installed as the EXIT trap by the callers, so it runs on failure too.
ab_stop_all() {
  local i
  for ((i = ${#AB_PIDS[@]} - 1; i >= 0; i--)); do
    ab_stop "${AB_PIDS[i]}"
  done
  AB_PIDS=()
}

# ab_wait_port HOST PORT PID LOGFILE TIMEOUT: wait until HOST:PORT accepts
# connections; fail early if PID exits, or after TIMEOUT seconds.
ab_wait_port() {
  local host="$1" port="$2" pid="$3" logfile="$4" timeout="$5"
  local deadline=$((SECONDS + timeout))
  until ab_port_open "$host" "$port"; do
    if ! ab_alive "$pid"; then
      ab_tail "$logfile"
      ab_die "process $pid exited before listening on $host:$port (log: $logfile)"
    fi
    if ((SECONDS >= deadline)); then
      ab_tail "$logfile"
      ab_die "nothing listening on $host:$port after ${timeout}s (log: $logfile)"
    fi
    sleep 0.2
  done
}

# ab_wait_done PID LOGFILE TIMEOUT PATTERN: wait for PID to exit, printing
# every 30 s how many lines of LOGFILE match PATTERN (cases run so far).
# Kills it after TIMEOUT seconds.  Returns its exit status (124 on timeout).
ab_wait_done() {
  local pid="$1" logfile="$2" timeout="$3" pattern="$4"
  local start=$SECONDS next=$((SECONDS + 30)) rc=0
  while ab_alive "$pid"; do
    if ((SECONDS - start >= timeout)); then
      ab_log "timed out after ${timeout}s, stopping process $pid"
      ab_stop "$pid"
      return 124
    fi
    if ((SECONDS >= next)); then
      ab_log "... $(grep -c -- "$pattern" "$logfile" || true) cases so far ($((SECONDS - start))s)"
      next=$((SECONDS + 30))
    fi
    sleep 0.5
  done
  wait "$pid" || rc=$?
  return "$rc"
}
