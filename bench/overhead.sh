#!/bin/sh
# Per-message overhead against the anchors (issue 17, item 4): R short
# rounds, each running raw C's and libuv C's 16-byte ping-pong
# (../shared/anchors) and tether's ping-pong and serial call
# (bench/bench.lua) back to back, pinned to one core; prints each round and
# the medians of the per-round ratios.  Rounds interleave because this
# machine's speed drifts by 10-30 % within minutes: a ratio taken inside one
# round is what holds still.
#   R=15  ANCHOR_SECS=0.5  BENCH_CPUS=0  ANCHORS=../shared/anchors  LUA=lua5.4
set -u
cd "$(dirname "$0")/.."
R=${R:-15}
CPUS=${BENCH_CPUS-0}
ANCHORS=${ANCHORS:-../shared/anchors}
LUA=${LUA:-lua5.4}
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;${LUA_PATH:-;}"
export LUA_CPATH="$PWD/build/?.so;${LUA_CPATH:-;}"
export ANCHOR_SECS=${ANCHOR_SECS:-0.5} ANCHOR_WARM=${ANCHOR_WARM:-0.1}
PIN=""
[ -n "$CPUS" ] && PIN="taskset -c $CPUS"
mkdir -p build
cc -O2 -o build/raw_c "$ANCHORS/raw_c.c" || exit 1
# shellcheck disable=SC2046
cc -O2 -o build/libuv_c "$ANCHORS/libuv_c.c" $(pkg-config --cflags --libs libuv 2>/dev/null || echo -luv) || exit 1
value() { sed -n "s/.*case=$1 size=16 .*value=//p"; }
echo "# overhead: $(date -u +%Y-%m-%dT%H:%M:%SZ) $(git rev-parse --short HEAD 2>/dev/null) rounds=$R secs=$ANCHOR_SECS pinned=${CPUS:-no} load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
echo "# round raw_c libuv_c tether_pingpong tether_call (round trips/s)"
out=$(mktemp)
trap 'rm -f "$out"' EXIT INT TERM
for i in $(seq "$R"); do
  raw=$($PIN build/raw_c 2>/dev/null | value pingpong)
  uvc=$($PIN build/libuv_c 2>/dev/null | value pingpong)
  t=$(BENCH_CASES="pingpong call" BENCH_SIZES=16 $PIN $LUA bench/bench.lua 2>/dev/null)
  pp=$(echo "$t" | value pingpong)
  cl=$(echo "$t" | value call)
  [ -n "$raw" ] && [ -n "$uvc" ] && [ -n "$pp" ] && [ -n "$cl" ] || { echo "# round $i failed" >&2; exit 1; }
  echo "$i $raw $uvc $pp $cl" | tee -a "$out"
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf "median tether pingpong / raw C  %.3f\n" "$(awk '{ print $4 / $2 }' "$out" | median)"
printf "median tether call / raw C      %.3f\n" "$(awk '{ print $5 / $2 }' "$out" | median)"
printf "median tether pingpong / libuv C %.3f\n" "$(awk '{ print $4 / $3 }' "$out" | median)"
printf "median libuv C / raw C          %.3f\n" "$(awk '{ print $3 / $2 }' "$out" | median)"
