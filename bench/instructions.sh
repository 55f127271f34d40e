#!/bin/sh
# Instructions per 16-byte round trip, parent and child, for send + echo and
# for call (bench/count_pingpong.lua under callgrind): two runs of different
# lengths, so start-up cancels out.  Deterministic, unlike a time: use it to
# compare two versions of the message path; the ratios against the anchors
# come from bench/overhead.sh.
#   LUA=lua5.4  N1=1000  N2=6000
set -u
cd "$(dirname "$0")/.."
LUA=${LUA:-lua5.4}
N1=${N1:-1000}
N2=${N2:-6000}
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is needed" >&2; exit 2; }
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;${LUA_PATH:-;}"
export LUA_CPATH="$PWD/build/?.so;${LUA_CPATH:-;}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
for mode in send call; do
  for n in "$N1" "$N2"; do
    # callgrind's own output names each process: the child ends first
    PP_MODE=$mode PP_N=$n valgrind --tool=callgrind --trace-children=yes \
      --callgrind-out-file="$tmp/cg.$n.%p" "$LUA" bench/count_pingpong.lua 2>"$tmp/log.$n" >/dev/null
    grep 'Collected' "$tmp/log.$n" | sed 's/.*: *//; s/,//g' > "$tmp/ir.$n"
    rm -f "$tmp"/cg.*
  done
  paste "$tmp/ir.$N1" "$tmp/ir.$N2" | awk -v m="$mode" -v d=$((N2 - N1)) \
    '{ printf "%s %s instructions_per_round_trip=%.0f\n", m, NR == 1 ? "child " : "parent", ($2 - $1) / d }'
done
