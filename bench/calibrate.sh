#!/bin/sh
# What a number of user-space instructions per round trip costs in time
# (issue 17, item 4): the 16-byte ping-pong of bench/count_pingpong.lua,
# as is and with PAD empty loop steps added in the child per message.
# Instructions come from callgrind (deterministic), the time from R rounds
# alternating the two, pinned to one core; prints the median of the
# per-round rate ratios, and so the share of a round trip's time 1000
# instructions take.  Read it next to bench/instructions.sh: a change
# that saves K instructions per round trip can gain about K/1000 times
# that share, and no more.
#   R=9  PAD=100  PP_N=60000  BENCH_CPUS=0  LUA=lua5.4
set -u
cd "$(dirname "$0")/.."
R=${R:-9}
PAD=${PAD:-100}
N=${PP_N:-60000}
CPUS=${BENCH_CPUS-0}
LUA=${LUA:-lua5.4}
command -v valgrind >/dev/null || { echo "calibrate.sh: valgrind is needed" >&2; exit 2; }
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;${LUA_PATH:-;}"
export LUA_CPATH="$PWD/build/?.so;${LUA_CPATH:-;}"
PIN=""
[ -n "$CPUS" ] && PIN="taskset -c $CPUS"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
# instructions the pad adds per round trip (the child's, two run lengths)
for pad in 0 "$PAD"; do
  for n in 1000 3000; do
    PP_PAD=$pad PP_N=$n valgrind --tool=callgrind --trace-children=yes \
      --callgrind-out-file="$tmp/cg.%p" "$LUA" bench/count_pingpong.lua 2>"$tmp/log" >/dev/null
    grep 'Collected' "$tmp/log" | head -1 | sed 's/.*: *//; s/,//g' > "$tmp/ir.$pad.$n"
    rm -f "$tmp"/cg.*
  done
done
added=$(awk -v a="$(cat "$tmp/ir.0.1000")" -v b="$(cat "$tmp/ir.0.3000")" \
            -v c="$(cat "$tmp/ir.$PAD.1000")" -v d="$(cat "$tmp/ir.$PAD.3000")" \
            'BEGIN { printf "%.0f", ((d - c) - (b - a)) / 2000 }')
rate() { PP_PAD=$1 PP_N=$N $PIN "$LUA" bench/count_pingpong.lua 2>&1 >/dev/null | sed -n 's/.* \([0-9]*\) rt\/s$/\1/p'; }
echo "# calibrate: $(date -u +%Y-%m-%dT%H:%M:%SZ) $(git rev-parse --short HEAD 2>/dev/null) rounds=$R pad=$PAD n=$N pinned=${CPUS:-no}"
echo "# round rt/s(pad 0) rt/s(pad $PAD)"
for i in $(seq "$R"); do
  a=$(rate 0)
  b=$(rate "$PAD")
  [ -n "$a" ] && [ -n "$b" ] || { echo "# round $i failed" >&2; exit 1; }
  echo "$i $a $b" | tee -a "$tmp/rounds"
done
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
slow=$(awk '{ print 1 - $3 / $2 }' "$tmp/rounds" | median)
echo "instructions added per round trip: $added"
printf "median rate lost: %.1f %%\n" "$(awk -v s="$slow" 'BEGIN { print 100 * s }')"
printf "1000 instructions per round trip take about %.2f %% of its time\n" \
  "$(awk -v s="$slow" -v a="$added" 'BEGIN { print 100 * s * 1000 / a }')"
