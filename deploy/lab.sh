#!/usr/bin/env bash
# SuperLink + SuperNodes on 127.0.0.1 (the real-device path, on one machine), then `flwr run`:
#   deploy/lab.sh deploy [CONFIG.toml] [--set key=value ...] [--insecure | --no-auth] [--work DIR]
#       TLS (generated CA + server certificate) and SuperNode authentication (generated ECDSA
#       P-384 keys, registered with `flwr supernode register`) unless --insecure / --no-auth;
#       one SuperNode per user id with --node-config "data-dir=... user-id=... storage-dir=...".
#   deploy/lab.sh certs DIR [--host NAME_OR_IP ...]   CA + server certificate for a real SuperLink
#   deploy/lab.sh keys DIR NAME                       a SuperNode key pair NAME (0600), NAME.pub
#   deploy/lab.sh simulation [CONFIG.toml] ...        same as deploy/local_simulation.sh
# Every process is stopped (process group) when the run ends or fails. See docs/flower.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${CDCDA_VENV:-.venv}/bin/python
[[ -x $PY ]] || { echo "lab.sh: no $PY; run ./run setup first" >&2; exit 1; }
exec "$PY" -m deploy.lab "$@"
