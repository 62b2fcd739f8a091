#!/usr/bin/env bash
# Deploy a fedkit run across machines over ssh: one coordinator, one worker per line of a hosts file.
#
# Usage:
#   scripts/deploy_ssh.sh --experiment exp.toml --coordinator HOST[:PORT] --hosts workers.txt \
#       [--certs DIR] [--remote-dir DIR] [--python PATH] [--out DIR] [--insecure] [--dry-run]
#
# workers.txt has one line per worker: "ssh_target client_id [data_dir]", e.g.
#   alice@10.0.0.11  0  /data/fedkit
#   alice@10.0.0.12  1
# The data directory is the worker's own (its FEDKIT_DATA when omitted): client data never moves.
#
# What it does:
#   1. unless --certs is given or --insecure, creates a CA and certificates with
#      `fedkit certs create` for the coordinator host and every worker (mutual TLS);
#   2. copies the experiment file and, to each machine, only its own certificate, key and the CA;
#   3. starts `fedkit coordinator` on the coordinator host (state in --out, resumable), then
#      `fedkit worker` on each worker host under nohup, logs in REMOTE_DIR/*.log.
# fedkit must already be installed on every machine (same version; PYTHON points at its venv).
# Re-running after a coordinator crash restarts it: it resumes from its last committed round and
# the workers, which retry with backoff, reconnect by themselves.
set -euo pipefail

EXPERIMENT="" COORD="" HOSTS="" CERTS="" REMOTE_DIR="fedkit-deploy" PY="python3" OUT="coordinator-state"
INSECURE=0 DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --experiment) EXPERIMENT="$2"; shift 2 ;;
    --coordinator) COORD="$2"; shift 2 ;;
    --hosts) HOSTS="$2"; shift 2 ;;
    --certs) CERTS="$2"; shift 2 ;;
    --remote-dir) REMOTE_DIR="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --insecure) INSECURE=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -f "$EXPERIMENT" ]] || { echo "error: --experiment FILE is required and must exist" >&2; exit 2; }
[[ -n "$COORD" ]] || { echo "error: --coordinator HOST[:PORT] is required" >&2; exit 2; }
[[ -f "$HOSTS" ]] || { echo "error: --hosts FILE is required and must exist" >&2; exit 2; }

COORD_SSH="${COORD%%:*}"; PORT="7070"
[[ "$COORD" == *:* ]] && PORT="${COORD##*:}"
COORD_HOST="${COORD_SSH#*@}"          # the address workers dial
mapfile -t LINES < <(grep -v '^\s*\(#\|$\)' "$HOSTS")
N=${#LINES[@]}
[[ $N -gt 0 ]] || { echo "error: $HOSTS lists no workers" >&2; exit 2; }

run() { if [[ $DRY -eq 1 ]]; then printf '+ %q ' "$@"; echo; else "$@"; fi; }

TLS_ARGS=()
if [[ $INSECURE -eq 1 ]]; then
  TLS_ARGS=(--insecure)
else
  if [[ -z "$CERTS" ]]; then
    CERTS="$(mktemp -d)/certs"
    run fedkit certs create --out "$CERTS" --coordinator-host "$COORD_HOST" --workers "$N"
  fi
  TLS_ARGS=(--tls-dir certs)  # relative to REMOTE_DIR, where the commands run
fi

EXP_NAME="$(basename "$EXPERIMENT")"
push() {  # push TARGET FILE... : copy files into REMOTE_DIR (certs into REMOTE_DIR/certs)
  local target="$1"; shift
  run ssh "$target" "mkdir -p '$REMOTE_DIR/certs' && chmod 700 '$REMOTE_DIR/certs'"
  run scp -q "$EXPERIMENT" "$target:$REMOTE_DIR/$EXP_NAME"
  if [[ $# -gt 0 ]]; then run scp -q "$@" "$target:$REMOTE_DIR/certs/"; fi
}

# Coordinator: the CA, its own certificate and key.
if [[ $INSECURE -eq 1 ]]; then push "$COORD_SSH"; else
  push "$COORD_SSH" "$CERTS/ca.pem" "$CERTS/coordinator.pem" "$CERTS/coordinator.key"; fi
run ssh "$COORD_SSH" "cd '$REMOTE_DIR' && nohup $PY -m fedkit coordinator \
  --experiment '$EXP_NAME' --listen 0.0.0.0:$PORT --out '$OUT' ${TLS_ARGS[*]} --json -v \
  > coordinator.log 2>&1 &"

# Workers: each gets only its own key.
i=0
for line in "${LINES[@]}"; do
  read -r target cid data <<<"$line"
  if [[ $INSECURE -eq 1 ]]; then push "$target"; else
    push "$target" "$CERTS/ca.pem" "$CERTS/worker-$i.pem" "$CERTS/worker-$i.key"; fi
  DATA_ARG=""; [[ -n "${data:-}" ]] && DATA_ARG="--data '$data'"
  NAME_ARG=""; [[ $INSECURE -eq 0 ]] && NAME_ARG="--tls-name worker-$i"
  run ssh "$target" "cd '$REMOTE_DIR' && nohup $PY -m fedkit worker \
    --coordinator $COORD_HOST:$PORT --experiment '$EXP_NAME' --client-id $cid $DATA_ARG \
    ${TLS_ARGS[*]} $NAME_ARG --state-dir client-state -v > worker-$cid.log 2>&1 &"
  i=$((i + 1))
done
echo "started 1 coordinator ($COORD_HOST:$PORT) and $N workers; logs in $REMOTE_DIR/*.log on each host"
echo "final result: ssh $COORD_SSH tail -1 $REMOTE_DIR/coordinator.log"
