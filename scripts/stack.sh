#!/usr/bin/env bash
# The local stack in one command: Prefect server, work pool, blocks, every deployment, a worker.
#
#   scripts/stack.sh up       start what is down, (re)deploy everything; seconds when already up
#   scripts/stack.sh down     stop the worker (SIGINT), its flow runs (SIGTERM: Crashed) and the server
#   scripts/stack.sh status   what runs, where the UI is, and whether schedules make runs (exit 1 if not)
#   scripts/stack.sh env      the exports a client needs: eval "$(scripts/stack.sh env)"
#
# The server requires authentication: a random auth string made at the first `up`, kept mode
# 0600 in $TACC_ORCH_HOME/stack/api-auth (or PREFECT_API_AUTH_STRING when set). The server gets
# it as PREFECT_SERVER_API_AUTH_STRING; the worker, its flow runs and every client started here
# as PREFECT_API_AUTH_STRING; the UI asks for it at its login page.
#
# Settings: TACC_STACK_PORT (4200), TACC_ORCH_HOME (~/.tacc-orchestrator; logs and pids in its
# stack/), PREFECT_HOME (~/.prefect), TACC_ORCH_FAILURE_WEBHOOK_URL (when set, the example
# automation posts there when a job fails), TACC_STACK_ZOMBIE_AFTER_SECONDS (600: a flow run silent
# that long is crashed, deployments/automations.py). To run the server on PostgreSQL, export
# PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://USER@HOST:5432/DB before `up`.
set -euo pipefail
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
cd "$(dirname "$0")/.."

PORT=${TACC_STACK_PORT:-4200}
STATE=${TACC_ORCH_HOME:-$HOME/.tacc-orchestrator}/stack
POOL=tacc-local
export PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT=$PORT
export PREFECT_API_URL=http://127.0.0.1:$PORT/api PREFECT_UI_URL=http://127.0.0.1:$PORT
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY=${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}  # the worker's runs (zombie detection)
PREFECT=.venv/bin/prefect
AUTH_FILE=$STATE/api-auth

log() { printf '[stack] %s\n' "$*" >&2; }
alive() { [[ -f $STATE/$1.pid ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
open_to_anyone() { .venv/bin/python -c "import httpx,sys; sys.exit(httpx.post('$PREFECT_API_URL/deployments/count', timeout=5).status_code != 200)" 2>/dev/null; }
accepts_our_auth() { .venv/bin/python -c "import httpx,os,sys; user, _, password = os.environ['PREFECT_API_AUTH_STRING'].partition(':'); sys.exit(httpx.post('$PREFECT_API_URL/deployments/count', auth=(user, password), timeout=5).status_code != 200)" 2>/dev/null; }
healthy() { .venv/bin/python -c "import httpx,sys; sys.exit(httpx.get('$PREFECT_API_URL/health', timeout=2).status_code != 200)" 2>/dev/null; }

# The API's auth string: the operator's PREFECT_API_AUTH_STRING, else the one kept in AUTH_FILE
# (made at the first `up`: "admin:" and 32 random bytes, URL-safe).
authenticate() {
  if [[ -z ${PREFECT_API_AUTH_STRING:-} ]]; then
    if [[ ! -s $AUTH_FILE ]]; then
      (umask 077 && mkdir -p "$STATE" && .venv/bin/python -c 'import secrets; print("admin:" + secrets.token_urlsafe(32))' >"$AUTH_FILE")
    fi
    PREFECT_API_AUTH_STRING=$(<"$AUTH_FILE")
  fi
  export PREFECT_API_AUTH_STRING PREFECT_SERVER_API_AUTH_STRING=$PREFECT_API_AUTH_STRING
}

up() {
  ./scripts/bootstrap.sh
  (umask 077 && mkdir -p "$STATE")
  authenticate
  if ! healthy; then
    log "starting the Prefect server on $PREFECT_UI_URL"
    setsid nohup "$PREFECT" server start >"$STATE/server.log" 2>&1 </dev/null &
    echo $! >"$STATE/server.pid"
    for _ in $(seq 120); do healthy && break; sleep 0.5; done
    healthy || { log "the server did not become healthy; see $STATE/server.log"; exit 1; }
  elif open_to_anyone; then
    log "the server on $PREFECT_UI_URL answers without authentication (started by an older stack.sh, or by hand):"
    log "restart it, its jobs run on: scripts/stack.sh down && scripts/stack.sh up"
    exit 1
  elif ! accepts_our_auth; then
    log "the server on $PREFECT_UI_URL refuses this stack's auth string ($AUTH_FILE): another stack's server holds"
    log "the port. Stop that one (its own scripts/stack.sh down), or choose another port: TACC_STACK_PORT"
    exit 1
  fi
  "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 || "$PREFECT" work-pool create "$POOL" --type process >/dev/null
  "$PREFECT" block register -m blocks.credentials >/dev/null
  "$PREFECT" block register -m prefect_sqlalchemy >/dev/null
  log "deploying every flow of prefect.yaml"
  "$PREFECT" --no-prompt deploy --all >"$STATE/deploy.log" 2>&1 || { cat "$STATE/deploy.log" >&2; exit 1; }
  # flow runs whose process died (killed with the host) stop their heartbeats: crash them (deployments/automations.py)
  .venv/bin/python -m deployments.automations --crash-zombie-runs "${TACC_STACK_ZOMBIE_AFTER_SECONDS:-600}" >/dev/null
  if [[ -n ${TACC_ORCH_FAILURE_WEBHOOK_URL:-} ]]; then  # the example automation: notify on FAILED jobs
    .venv/bin/python -m deployments.automations --webhook-url "$TACC_ORCH_FAILURE_WEBHOOK_URL" >&2
  fi
  if ! alive worker; then
    log "starting a worker on pool $POOL"
    setsid nohup "$PREFECT" worker start --pool "$POOL" >"$STATE/worker.log" 2>&1 </dev/null &
    echo $! >"$STATE/worker.pid"
  fi
  # A server whose scheduler service fails looks healthy: wait for each schedule's first runs.
  scheduler --wait 60 >/dev/null || { log "the server schedules no runs; see $STATE/server.log"; scheduler >&2; exit 1; }
  status
}

down() {
  # each daemon leads its own session (setsid): signal its whole process group. A worker stops
  # on SIGINT (not SIGTERM); one that hangs in its shutdown is terminated, then killed.
  # The worker starts each flow run in sessions of their own (Prefect's workspace supervisor,
  # then the engine), so that signal misses them and they would run on, old code across an
  # upgrade, some ending on their own and some not: each run's engine gets SIGTERM while the
  # server is still up, ends Crashed, and watch-jobs follows its job.
  local runs=()
  alive worker && mapfile -t runs < <(flow_run_engines "$(cat "$STATE/worker.pid")")
  stop worker
  for run in "${runs[@]}"; do signal_until_gone "$run" TERM KILL; done
  [[ ${#runs[@]} -eq 0 ]] || log "stopped ${#runs[@]} flow run process(es): they end Crashed, their jobs run on"
  stop server
  log "stopped"
}

# the flow-run engines among a worker's descendants (not the embedded cluster's job supervisors)
flow_run_engines() {
  ps -eo pid=,ppid=,args= | awk -v worker="$1" '
    { parent[$1] = $2; engine[$1] = ($0 ~ / -m prefect\.engine( |$)/) }
    END { for (pid in parent) if (engine[pid]) { up = parent[pid]
            while (up in parent && up != worker) up = parent[up]
            if (up == worker) print pid } }'
}

# a daemon of ours, by its pid file: its whole process group
stop() {
  alive "$1" && signal_until_gone "-$(cat "$STATE/$1.pid")" INT TERM KILL
  rm -f "$STATE/$1.pid"
}

# signal a process (PID) or a process group (-PGID): each signal in turn, up to 10 s for each
signal_until_gone() {
  local target=$1 signal
  shift
  for signal in "$@"; do
    kill -0 -- "$target" 2>/dev/null || return 0
    kill "-$signal" -- "$target" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 -- "$target" 2>/dev/null || return 0; sleep 0.25; done
  done
}

scheduler() { .venv/bin/python -m deployments.health --server-log "$STATE/server.log" "$@"; }

status() {
  # exit status: 0 when the server, the worker and the scheduler are well, 1 otherwise
  local well=0
  if healthy; then
    printf 'server     up: %s (API %s)\n' "$PREFECT_UI_URL" "$PREFECT_API_URL"
  else
    printf 'server     down\n'; well=1
  fi
  if alive worker; then
    printf 'worker     up: pool %s, log %s\n' "$POOL" "$STATE/worker.log"
  else
    printf 'worker     down\n'; well=1
  fi
  if healthy; then scheduler || well=1; fi
  printf 'clients    eval "$(%s env)"\n' "$0"
  return $well
}

env_exports() {
  printf 'export PREFECT_API_URL=%q\n' "$PREFECT_API_URL"
  if [[ -n ${PREFECT_API_AUTH_STRING:-} ]] || [[ -s $AUTH_FILE ]]; then
    authenticate
    printf 'export PREFECT_API_AUTH_STRING=%q\n' "$PREFECT_API_AUTH_STRING"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) [[ -s $AUTH_FILE ]] && authenticate; status || exit 1 ;;
  env) env_exports ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
