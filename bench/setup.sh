#!/usr/bin/env bash
# The bench's own tools, installed only when missing: wrk (the HTTP load generator, a Debian
# package), redis-server and redis-cli (the bench starts a Redis of its own; redis-cli --pipe
# fills it), and py-spy (profiles a missed goal) into the project's venv.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${BENCH_PYTHON:-$here/.venv/bin/python}"

need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v du >/dev/null 2>&1 || need_apt+=(coreutils)
if ((${#need_apt[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! "$python" -c "import shutil, sys, os; sys.exit(0 if os.path.exists(os.path.join(os.path.dirname(sys.executable), 'py-spy')) or shutil.which('py-spy') else 1)"; then
  "$python" -m pip install -q py-spy || echo "bench: py-spy not installed (profiling only)" >&2
fi
