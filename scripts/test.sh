#!/usr/bin/env bash
# Runs every suite and prints per-suite results, then the plain totals line
# "N passed, N failed".  Usage: scripts/test.sh [asan]
#   asan: the busted specs against the ASan+UBSan build (the C tests are run
#         with sanitizers too).
#   valgrind: the busted specs with lua5.4 under valgrind memcheck.
#   TETHER_COUNTS=FILE appends "passed failed"; TETHER_GC=aggressive makes
#   every Lua state (specs and workers) collect garbage continuously.
set -u
cd "$(dirname "$0")/.."
mode=${1:-plain}
passed=0
failed=0
status=0

count_tap() { # file -> "passed failed"
  local ok notok
  ok=$(grep -c '^ok ' "$1" || true)
  notok=$(grep -c '^not ok ' "$1" || true)
  echo "$ok $notok"
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT

label=$mode
[ -n "${TETHER_GC:-}" ] && label="$mode, TETHER_GC=$TETHER_GC"
if [ "$mode" != valgrind ]; then
  if [ "$mode" = asan ]; then
    make -s build-asan/run_c_tests || exit 2
    cbin=build-asan/run_c_tests
  else
    make -s build/run_c_tests || exit 2
    cbin=build/run_c_tests
  fi
  CK_TAP_LOG_FILE_NAME="$log" CK_VERBOSITY=silent "$cbin" >/dev/null 2>&1 || status=1
  read -r p f <<<"$(count_tap "$log")"
  grep -E '^not ok' "$log" | head -20
  echo "C unit tests ($label): $p passed, $f failed"
  [ "$p" -gt 0 ] || { echo "C unit tests did not run"; status=1; f=$((f + 1)); }
  passed=$((passed + p)); failed=$((failed + f))
  # core/ from C without Lua (examples/c/squares.c): builds and runs a pool
  sbin=${cbin%/run_c_tests}/squares
  if make -s "$sbin" && timeout 120 "$sbin"; then
    echo "core without Lua ($label): 1 passed, 0 failed"
    passed=$((passed + 1))
  else
    echo "core without Lua ($label): 0 passed, 1 failed"
    failed=$((failed + 1)); status=1
  fi
fi

case $mode in
  asan) target=test-asan-lua ;;
  valgrind) target=test-valgrind-lua ;;
  *) target=test-lua ;;
esac
make -s $target BUSTED_OUT="-o TAP" >"$log" 2>&1 || status=1
grep -E '^not ok|^# ' "$log" | head -50
read -r p f <<<"$(count_tap "$log")"
if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
  tail -30 "$log"
  echo "busted specs did not run"
  f=1; status=1
fi
echo "busted specs ($label): $p passed, $f failed"
passed=$((passed + p)); failed=$((failed + f))

[ -n "${TETHER_COUNTS:-}" ] && echo "$passed $failed" >>"$TETHER_COUNTS"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && exit $status
exit 1
