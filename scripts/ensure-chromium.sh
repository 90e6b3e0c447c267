#!/usr/bin/env bash
# Makes sure Debian's chromium is there for the status page's browser test (tests/test_status.py).
# Debian's package, not a browser build fetched by a tool: only the package registries answer here.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
echo "chromium missing: installing Debian's package" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: cannot install chromium; the browser test will be skipped" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  chromium fonts-dejavu-core >/dev/null
[ -x /usr/bin/chromium ] || { echo "chromium did not install" >&2; exit 1; }
