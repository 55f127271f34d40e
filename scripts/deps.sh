#!/bin/sh
# Installs the Debian packages tether needs when run as root; otherwise
# prints the exact apt-get line.  Usage: scripts/deps.sh [extra packages...]
set -e
PKGS="gcc make pkg-config lua5.4 liblua5.4-dev libuv1-dev lua-busted luarocks check lua-filesystem lua-luv lua-socket util-linux lua-cjson libhiredis-dev redis-server $*"
# JSON mode is tested against the real Node.js: Debian's unless one is there
command -v node >/dev/null 2>&1 || PKGS="$PKGS nodejs"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "# installing:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq $missing >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq $missing >/dev/null
  fi
else
  echo "tether needs these Debian packages; run as root:" >&2
  echo "  apt-get install -y$missing" >&2
  exit 1
fi
