#!/bin/sh
# make bench: tether's cases and the shared anchors (raw-c, libuv-c, node,
# luv-lua) in one invocation, pinned to one core by default, then a table of
# ratios to raw-c.  Results are kept in bench/results/.
#   BENCH_CPUS=0      core list for taskset ("" to not pin)
#   ANCHORS=DIR       the anchors (default ../shared/anchors)
#   ANCHOR_SECS, ANCHOR_WARM, ANCHOR_ONLY: passed through
set -u
cd "$(dirname "$0")/.."
CPUS=${BENCH_CPUS-0}
ANCHORS=${ANCHORS:-../shared/anchors}
LUA=${LUA:-lua5.4}
mkdir -p bench/results
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ).txt
PIN=""
[ -n "$CPUS" ] && PIN="taskset -c $CPUS"

{
  echo "# tether bench: $(date -u +%Y-%m-%dT%H:%M:%SZ) host=$(uname -srm) cpus=$(nproc) pinned=${CPUS:-no} load=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
  $PIN $LUA bench/bench.lua || echo "# tether bench FAILED rc=$?"
  if [ -x "$ANCHORS/run.sh" ] || [ -f "$ANCHORS/run.sh" ]; then
    ANCHOR_CPUS=$CPUS sh "$ANCHORS/run.sh" || echo "# anchors reported a failure"
  else
    echo "# anchors not found in $ANCHORS"
  fi
} | tee "$out"
echo
$LUA bench/summarize.lua "$out"
echo
echo "raw results: $out"
