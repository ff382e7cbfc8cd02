#!/usr/bin/env bash
# The local stack in one command: Prefect server, work pool, blocks, every deployment, a worker.
#
#   scripts/stack.sh up       start what is down, (re)deploy everything; seconds when already up
#   scripts/stack.sh down     stop the worker (SIGINT) and the server
#   scripts/stack.sh status   what runs, and where the UI is
#
# Settings: TACC_STACK_PORT (4200), TACC_ORCH_HOME (~/.tacc-orchestrator; logs and pids in its
# stack/), PREFECT_HOME (~/.prefect), TACC_ORCH_FAILURE_WEBHOOK_URL (when set, the example
# automation posts there when a job fails). To run the server on PostgreSQL, export
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
PREFECT=.venv/bin/prefect

log() { printf '[stack] %s\n' "$*" >&2; }
alive() { [[ -f $STATE/$1.pid ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
healthy() { .venv/bin/python -c "import httpx,sys; sys.exit(httpx.get('$PREFECT_API_URL/health', timeout=2).status_code != 200)" 2>/dev/null; }

up() {
  ./scripts/bootstrap.sh
  mkdir -p "$STATE"
  if ! healthy; then
    log "starting the Prefect server on $PREFECT_UI_URL"
    setsid nohup "$PREFECT" server start >"$STATE/server.log" 2>&1 </dev/null &
    echo $! >"$STATE/server.pid"
    for _ in $(seq 120); do healthy && break; sleep 0.5; done
    healthy || { log "the server did not become healthy; see $STATE/server.log"; exit 1; }
  fi
  "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 || "$PREFECT" work-pool create "$POOL" --type process >/dev/null
  "$PREFECT" block register -m blocks.credentials >/dev/null
  "$PREFECT" block register -m prefect_sqlalchemy >/dev/null
  log "deploying every flow of prefect.yaml"
  "$PREFECT" --no-prompt deploy --all >"$STATE/deploy.log" 2>&1 || { cat "$STATE/deploy.log" >&2; exit 1; }
  if [[ -n ${TACC_ORCH_FAILURE_WEBHOOK_URL:-} ]]; then  # the example automation: notify on FAILED jobs
    .venv/bin/python -m deployments.automations --webhook-url "$TACC_ORCH_FAILURE_WEBHOOK_URL" >&2
  fi
  if ! alive worker; then
    log "starting a worker on pool $POOL"
    setsid nohup "$PREFECT" worker start --pool "$POOL" >"$STATE/worker.log" 2>&1 </dev/null &
    echo $! >"$STATE/worker.pid"
  fi
  status
}

down() {
  # each daemon leads its own session (setsid): signal its whole process group. A worker stops
  # on SIGINT (not SIGTERM); one that hangs in its shutdown is terminated, then killed.
  for daemon in worker server; do
    for signal in INT TERM KILL; do
      alive "$daemon" || break
      kill "-$signal" -- "-$(cat "$STATE/$daemon.pid")" 2>/dev/null || true
      for _ in $(seq 40); do alive "$daemon" || break; sleep 0.25; done
    done
    rm -f "$STATE/$daemon.pid"
  done
  log "stopped"
}

status() {
  printf 'server  %s\n' "$(healthy && echo "up: $PREFECT_UI_URL (API $PREFECT_API_URL)" || echo down)"
  printf 'worker  %s\n' "$(alive worker && echo "up: pool $POOL, log $STATE/worker.log" || echo down)"
  printf 'export PREFECT_API_URL=%s\n' "$PREFECT_API_URL"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
