#!/usr/bin/env bash
# The walkthrough of docs/flower.md ("Walkthrough: a cloud and two devices, by hand"), as one script:
# certificates, a SuperLink with TLS, SuperNode authentication and a state database, two devices
# (each its own personas with distinct ids, its owner's consent.toml, its key pair, registered),
# a tiny first run, what each device sent (from its own audit log), teardown.
#   deploy/walkthrough.sh LAB_DIR [OUT_DIR]
# LAB_DIR (outside the checkout) gets cloud/ (certificates, state database, FLWR_HOME, logs) and
# phone1/, phone2/ (data + consent.toml, keys, storage with audit.jsonl, FLWR_HOME, log); OUT_DIR
# (default LAB_DIR/run) the run's results. Ports: PORT (SuperLink, default 39192) and
# NODE_PORT and NODE_PORT2 (the SuperNodes' runtime APIs, default 39194 and NODE_PORT+1).
# tests/test_walkthrough.py runs it on one machine with tiny models (~1.5 min on 2 cores).
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: deploy/walkthrough.sh LAB_DIR [OUT_DIR]" >&2; exit 2; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
LAB=$(cd "$1" && pwd)
OUT=${2:-$LAB/run}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PORT=${PORT:-39192}
NODE_PORT=${NODE_PORT:-39194}
NODE_PORT2=${NODE_PORT2:-$((NODE_PORT + 1))}
case "$LAB/" in "$REPO"/*) echo "error: $LAB is inside the checkout $REPO: keys must live outside it" >&2; exit 2;; esac

export PATH="$REPO/.venv/bin:$PATH" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export RAY_USAGE_STATS_ENABLED=0

PIDS=()
descendants() { local c; for c in $(pgrep -P "$1" || true); do echo "$c"; descendants "$c"; done; }
stop_all() {  # teardown: every process started here and what it started (flower-superexec, ClientApps)
  local all=() p
  for p in "${PIDS[@]}"; do all+=("$p" $(descendants "$p")); done
  [[ ${#all[@]} -gt 0 ]] || return 0
  kill -TERM "${all[@]}" 2>/dev/null || true
  for _ in $(seq 100); do
    local alive=0
    for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.2
  done
  kill -KILL "${all[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  PIDS=()
}
trap 'stop_all' EXIT
trap 'echo "interrupted: stopping" >&2; stop_all; exit 130' INT TERM
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done; return 1; }
step() { printf '\n== %s\n' "$*"; }

step "1. cloud: certificates (the CA's private key is never written)"
cd "$LAB"
"$REPO/deploy/lab.sh" certs cloud/certs

step "2. cloud: SuperLink with TLS, SuperNode authentication and a state database"
export FLWR_HOME=$LAB/cloud/flwr-home
mkdir -p "$FLWR_HOME"
flower-superlink --disable-runtime-dependency-installation --host 127.0.0.1 --port "$PORT" \
    --ssl-ca-certfile cloud/certs/ca.crt --ssl-certfile cloud/certs/server.pem --ssl-keyfile cloud/certs/server.key \
    --enable-supernode-auth --database cloud/state.db > cloud/superlink.log 2>&1 &
PIDS+=($!)
wait_port "$PORT" || { echo "error: the SuperLink did not start, see $LAB/cloud/superlink.log" >&2; exit 1; }
cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "local-deployment"

[superlink.local-deployment]
address = "127.0.0.1:$PORT"
root-certificates = "$LAB/cloud/certs/ca.crt"
EOF

step "3. each device: its own data (distinct ids), its owner's consent, a key pair the operator registers"
cdcda data personas --out phone1/data --users 1 --tasks LaMP_2,LaMP_5 --splits dev --user-prefix phone1-
cdcda data personas --out phone2/data --users 1 --tasks LaMP_2,LaMP_5 --splits dev --user-prefix phone2-
printf '[default]\nshare-fraction = 0.5\n' > phone1/data/consent.toml   # phone1 shares half of its records
printf '[default]\nshare-fraction = 0.0\n' > phone2/data/consent.toml   # phone2 shares none
"$REPO/deploy/lab.sh" keys phone1/keys phone1
"$REPO/deploy/lab.sh" keys phone2/keys phone2
flwr supernode register phone1/keys/phone1.pub local-deployment
flwr supernode register phone2/keys/phone2.pub local-deployment

step "4. each device: its SuperNode (own data-dir, storage-dir and FLWR_HOME)"
FLWR_HOME=$LAB/phone1/flwr-home flower-supernode --superlink "127.0.0.1:$PORT" --root-certificates cloud/certs/ca.crt \
    --auth-supernode-private-key phone1/keys/phone1 --port "$NODE_PORT" \
    --node-config "data-dir='$LAB/phone1/data' storage-dir='$LAB/phone1/storage'" > phone1/supernode.log 2>&1 &
PIDS+=($!)
FLWR_HOME=$LAB/phone2/flwr-home flower-supernode --superlink "127.0.0.1:$PORT" --root-certificates cloud/certs/ca.crt \
    --auth-supernode-private-key phone2/keys/phone2 --port "$NODE_PORT2" \
    --node-config "data-dir='$LAB/phone2/data' storage-dir='$LAB/phone2/storage'" > phone2/supernode.log 2>&1 &
PIDS+=($!)
flwr supernode list local-deployment

step "5. a tiny first run (untrained tiny models, 2 training steps; the table is printed at the end)"
flwr run "$REPO" local-deployment --stream --run-config "out-dir='$OUT' min-nodes=2 node-wait=300 \
tasks='LaMP_2,LaMP_5' methods='base,rag,local,cdcda' device.model='tiny-random' cloud.model='tiny-random' \
train.steps=2 synthetic.per-user=4 synthetic.max-rounds=1 synthetic.max-new-tokens=16 consent.share-fraction=1.0"
[[ -f $OUT/results.json ]] || { echo "error: the run wrote no $OUT/results.json (see the output above)" >&2; exit 1; }

step "6. what each device sent, from its own audit log"
cdcda audit sent phone1/storage phone2/storage

step "7. teardown: stop the SuperNodes and the SuperLink with their children (registrations stay in cloud/state.db)"
stop_all
echo "results: $OUT/results.json"
