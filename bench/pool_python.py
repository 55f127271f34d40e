"""Python side of bench/pool_bench.lua: multiprocessing.Pool(2) running a
trivial echo over N tasks with imap, at several chunksizes.

    python3 bench/pool_python.py [N] [REPS] [CHUNKSIZES] [WARM]

The pool is started and warmed up (both workers have answered, then a
burst of WARM tasks, N by default, at chunksize 1 per payload) before any
clock starts: only the imap is timed, from the call until the last result
was consumed (and checked against its task, in order).  Each chunksize is
measured REPS times (median).  Output:
    RESULT pool_python_<int|str16>_chunk<C>_per_s <tasks/s>
"""
import multiprocessing as mp
import os
import statistics
import sys
import time


def echo(x):
    return x


def main():
    n = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("POOL_N", "20000"))
    reps = int(sys.argv[2] if len(sys.argv) > 2 else os.environ.get("POOL_REPS", "3"))
    chunks = [int(c) for c in (sys.argv[3] if len(sys.argv) > 3 else "1 10 100 1000").split()]
    warm = int(sys.argv[4]) if len(sys.argv) > 4 else n
    payloads = {
        "int": [i + 1 for i in range(n)],
        "str16": ["%016d" % (i + 1) for i in range(n)],
    }
    print("# python %s, multiprocessing start method %s" % (sys.version.split()[0], mp.get_start_method()))
    with mp.Pool(2) as pool:
        # warm-up: both workers started and the pipes used
        assert list(pool.imap(echo, range(2000), chunksize=1)) == list(range(2000))
        for name, tasks in payloads.items():
            assert list(pool.imap(echo, tasks[:warm], chunksize=1)) == tasks[:warm]
            for cs in chunks:
                rates = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    k = 0
                    for r in pool.imap(echo, tasks, chunksize=cs):
                        if r != tasks[k]:
                            raise SystemExit("VERIFY FAILED: %r != %r" % (r, tasks[k]))
                        k += 1
                    secs = time.perf_counter() - t0
                    if k != n:
                        raise SystemExit("VERIFY FAILED: %d results for %d tasks" % (k, n))
                    rates.append(n / secs)
                    print("# python %s chunksize=%d n=%d secs=%.3f verified" % (name, cs, n, secs),
                          file=sys.stderr)
                print("RESULT pool_python_%s_chunk%d_per_s %.6g" % (name, cs, statistics.median(rates)))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
