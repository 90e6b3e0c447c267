#!/usr/bin/env bash
# The run command: set-up (venv, install) then the whole system on this machine (`cachemgr up`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/cachemgr up "$@"
