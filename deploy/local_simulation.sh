#!/usr/bin/env bash
# `flwr run . local-simulation`, offline, with the same results as `cdcda run` for the same config:
#   deploy/local_simulation.sh [CONFIG.toml] [--set key=value ...] [--work DIR] [--timeout S]
# Starts `flower-superlink --simulation --disable-runtime-dependency-installation` on a free
# 127.0.0.1 port with FLWR_HOME=.flwr/home, runs `flwr run . local-simulation --stream` with the
# config as --run-config (absolute out-dir), waits for the run to finish and stops the SuperLink.
# Logs: .flwr/logs/{superlink,flwr-run}.log. See docs/flower.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${CDCDA_VENV:-.venv}/bin/python
[[ -x $PY ]] || { echo "local_simulation.sh: no $PY; run ./run setup first" >&2; exit 1; }
exec "$PY" -m deploy.lab simulation "$@"
