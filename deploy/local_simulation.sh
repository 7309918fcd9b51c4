#!/usr/bin/env bash
# `flwr run . local-simulation`, offline, with the same results as `cdcda run` for the same config:
#   deploy/local_simulation.sh [CONFIG.toml] [--set key=value ...] [--work DIR] [--timeout S]
# Starts `flower-superlink --simulation --disable-runtime-dependency-installation` on a free
# 127.0.0.1 port with FLWR_HOME=WORK/home, runs `flwr run . local-simulation --stream` with the
# config as --run-config (absolute out-dir), waits for the run to finish and stops the SuperLink.
# WORK: --work, default ~/.local/state/cdcda-fl/lab; logs WORK/logs/{superlink,flwr-run}.log.
# Paths are relative to where you run it. See docs/flower.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${CDCDA_VENV:-$ROOT/.venv}/bin/python
[[ -x $PY ]] || { echo "local_simulation.sh: no $PY; run ./run setup first" >&2; exit 1; }
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m deploy.lab simulation "$@"
