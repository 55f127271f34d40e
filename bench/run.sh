#!/bin/sh
# make bench: tether's cases and the shared anchors (raw-c, libuv-c, node,
# luv-lua) in one invocation, pinned to one core by default, then a table of
# ratios to raw-c; then the supervisor bench (bench/supervisor_bench.lua,
# pinned the same way) and its table; then the pool bench
# (bench/pool_bench.lua: tether's pool, Python's multiprocessing.Pool and
# Node fork() children, 2 workers each) on two cores, not one: a 2-worker
# pool exists to use 2 cores, and on one core its 3 processes would only
# take turns.  Results are kept in bench/results/.
#   BENCH_CPUS=0      core list for taskset ("" to not pin)
#   ANCHORS=DIR       the anchors (default ../shared/anchors)
#   ANCHOR_SECS, ANCHOR_WARM, ANCHOR_ONLY: passed through
#   SUP_BENCH=0       skip the supervisor bench
#   SUP_INSTANCES, SUP_IDLE_SECS, SUP_STORM_SECS, SUP_CASES: passed through
#   POOL_BENCH=0      skip the pool bench
#   POOL_CPUS=0,1     core list for the pool bench ("" to not pin; not
#                     pinned when there are fewer than 2 cores)
#   POOL_N, POOL_REPS, POOL_WARM, POOL_CONCURRENCY, POOL_TETHER_CHUNKS,
#   POOL_CASES, POOL_CHUNKSIZES, POOL_PYTHON, POOL_NODE: passed through
# Then the spawn-cost bench (bench/spawn_bench.lua: spawn-to-exit of `true`
# from parents holding 0, 200 and 2048 MiB, tether's posix_spawn against
# its uv_spawn (TETHER_SPAWN=uv) and plain C's posix_spawnp and fork + exec
# (bench/spawn_raw.c, built here), side by side), pinned like the first part.
#   SPAWN_BENCH=0     skip it
#   SPAWN_SIZES, SPAWN_REPS, SPAWN_ROUNDS, SPAWN_PROG, SPAWN_MODES: passed
#   through
# After the anchors, the per-message overhead (bench/overhead.sh: raw C,
# libuv C and tether's 16-byte ping-pong and call in interleaved rounds).
#   OVERHEAD_BENCH=0  skip it;  OVERHEAD_ROUNDS (default 9)
# Last, the Node.js interop bench (bench/node_bench.lua: a tether Lua
# parent with a Node child against a Node parent with a Node child, same
# messages), pinned like the first part.
#   NODE_BENCH=0      skip the Node bench (skipped too when node is missing)
#   NODE_CPUS=0       core list for the Node bench (default: BENCH_CPUS)
#   NODE_BENCH_N, NODE_BENCH_BIG_N, NODE_BENCH_PP_N, NODE_BENCH_PP_BIG_N,
#   NODE_BENCH_BIG, NODE_BENCH_REPS, NODE_BENCH_CASES, NODE: passed through
set -u
cd "$(dirname "$0")/.."
CPUS=${BENCH_CPUS-0}
ANCHORS=${ANCHORS:-../shared/anchors}
LUA=${LUA:-lua5.4}
mkdir -p bench/results
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ).txt
PIN=""
[ -n "$CPUS" ] && PIN="taskset -c $CPUS"
POOL_CPUS=${POOL_CPUS-0,1}
[ "$(nproc)" -lt 2 ] && POOL_CPUS=""
POOL_PIN=""
[ -n "$POOL_CPUS" ] && POOL_PIN="taskset -c $POOL_CPUS"
NODE_CPUS=${NODE_CPUS-$CPUS}
NODE_PIN=""
[ -n "$NODE_CPUS" ] && NODE_PIN="taskset -c $NODE_CPUS"
# the supervisor bench's 500 workers hold one channel fd each in the parent
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ "$nofile" -lt 4096 ]; then
  ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -H -n)" 2>/dev/null || true
fi

{
  echo "# tether bench: $(date -u +%Y-%m-%dT%H:%M:%SZ) host=$(uname -srm) cpus=$(nproc) pinned=${CPUS:-no} load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
  $PIN $LUA bench/bench.lua || echo "# tether bench FAILED rc=$?"
  if [ -x "$ANCHORS/run.sh" ] || [ -f "$ANCHORS/run.sh" ]; then
    ANCHOR_CPUS=$CPUS sh "$ANCHORS/run.sh" || echo "# anchors reported a failure"
  else
    echo "# anchors not found in $ANCHORS"
  fi
  if [ "${OVERHEAD_BENCH:-1}" != 0 ]; then
    # per-message overhead: interleaved short rounds, medians of the ratios
    BENCH_CPUS=$CPUS ANCHORS=$ANCHORS LUA=$LUA R=${OVERHEAD_ROUNDS:-9} sh bench/overhead.sh |
      sed 's/^\([0-9]\)/# overhead round \1/; s/^median/# overhead median/' ||
      echo "# overhead bench FAILED rc=$?"
  fi
  if [ "${SUP_BENCH:-1}" != 0 ]; then
    echo "# supervisor bench: ulimit -n $(ulimit -n)"
    BENCH_PINNED=${CPUS:-no} $PIN $LUA bench/supervisor_bench.lua || echo "# supervisor bench FAILED rc=$?"
    left=$(pgrep -f 'sup_[i]dle_worker|sup_[c]rash_worker' | tr '\n' ' ')
    [ -n "$left" ] && echo "# supervisor bench left processes behind: $left"
  fi
  if [ "${POOL_BENCH:-1}" != 0 ]; then
    echo "# pool bench: pinned=${POOL_CPUS:-no} load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
    $POOL_PIN $LUA bench/pool_bench.lua || echo "# pool bench FAILED rc=$?"
    left=$(pgrep -f 'pool_[e]cho_worker|pool_[n]ode\.js|pool_[p]ython\.py' | tr '\n' ' ')
    [ -n "$left" ] && echo "# pool bench left processes behind: $left"
  fi
  if [ "${SPAWN_BENCH:-1}" != 0 ]; then
    echo "# spawn bench: pinned=${CPUS:-no} load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
    mkdir -p build
    ${CC:-cc} -std=c11 -O2 -Wall -Wextra -o build/spawn_raw bench/spawn_raw.c ||
      echo "# spawn bench: bench/spawn_raw.c did not build: no raw C anchors"
    LUA=$LUA $PIN $LUA bench/spawn_bench.lua || echo "# spawn bench FAILED rc=$?"
  fi
  if [ "${NODE_BENCH:-1}" != 0 ]; then
    if command -v "${NODE:-node}" >/dev/null 2>&1; then
      echo "# node bench: pinned=${NODE_CPUS:-no} load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
      LUA=$LUA $NODE_PIN $LUA bench/node_bench.lua || echo "# node bench FAILED rc=$?"
      left=$(pgrep -f 'node_[e]cho_child|lua_[e]cho_child|node_[p]arent_bench' | tr '\n' ' ')
      [ -n "$left" ] && echo "# node bench left processes behind: $left"
    else
      echo "# node bench skipped: ${NODE:-node} not found"
    fi
  fi
} | tee "$out"
echo
$LUA bench/summarize.lua "$out"
echo
echo "raw results: $out"
