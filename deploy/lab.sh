#!/usr/bin/env bash
# SuperLink + SuperNodes on 127.0.0.1 (the real-device path, on one machine), then `flwr run`:
#   deploy/lab.sh deploy [CONFIG.toml] [--set key=value ...] [--insecure | --no-auth] [--work DIR]
#                        [--devices DIR] [--consent [nodeI=]FILE ...]
#       one device per user: DIR/nodeI/data (that user's files + the owner's consent.toml) and
#       DIR/nodeI/storage, a SuperNode with --node-config "data-dir=... storage-dir=..."; TLS and
#       SuperNode authentication (keys registered with `flwr supernode register`) unless
#       --insecure / --no-auth. Prints the results table and what each device sent (its audit log);
#       exits 1 when no result came back, 2 on an error, 130 on Ctrl-C.
#   deploy/lab.sh certs DIR [--host NAME_OR_IP ...]   CA + server certificate for a real SuperLink
#   deploy/lab.sh keys DIR NAME                       a SuperNode key pair NAME (0600), NAME.pub
#   deploy/lab.sh simulation [CONFIG.toml] ...        same as deploy/local_simulation.sh
# Paths are relative to where you run it; keys, certificates and devices must be outside the
# checkout (default --work: ~/.local/state/cdcda-fl/lab). Every process is stopped (process group
# and descendants) when the run ends, fails or is interrupted. See docs/flower.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${CDCDA_VENV:-$ROOT/.venv}/bin/python
[[ -x $PY ]] || { echo "lab.sh: no $PY; run ./run setup first" >&2; exit 1; }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m deploy.lab "$@"
