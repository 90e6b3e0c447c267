#!/usr/bin/env bash
# Makes sure a command some tests need is there: ensure-debian.sh COMMAND PACKAGE...
# installs Debian's packages when it is missing (only the package registries answer here).
# Not root: said, and those tests skip, saying so; root and the install fails: exit 1.
set -euo pipefail
cmd=$1
shift
command -v "$cmd" >/dev/null && exit 0
echo "$cmd missing: installing Debian's $*" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: cannot install $*; the tests that need $cmd will be skipped" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
command -v "$cmd" >/dev/null || { echo "$cmd did not install" >&2; exit 1; }
