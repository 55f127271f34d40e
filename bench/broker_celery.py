"""Celery side of bench/broker_bench.lua (Debian's python3-celery and
python3-redis, run by /usr/bin/python3).  Broker and result backend are the
same redis-server, over its Unix socket: redis+socket:///path/r.sock.

    python3 bench/broker_celery.py worker SOCK QUEUE CONCURRENCY
        an "agent": `celery worker -P prefork -c CONCURRENCY -Q QUEUE`
        (a main process and CONCURRENCY pool processes), Celery's defaults
        otherwise (prefetch multiplier 4, early acknowledgement); without
        gossip, mingle and heartbeat (events between workers, not used
        here).  Prints "READY <pid>" once it consumes (worker_ready); exits
        when its stdin ends (the bench went away: the whole process group).

    python3 bench/broker_celery.py client SOCK
        the submitting side: noop.apply_async((payload,), queue=Q) and each
        result through AsyncResult.then(callback), the redis backend's
        result consumer (a pub/sub subscription per task) drained in the
        loop: results arrive as they complete, in any order.  Commands on
        stdin, one answer line each (as bench/broker_bullmq.js):
          tp Q SIZE WARM_S SECS WINDOW   closed loop, WINDOW in flight
          lat Q SIZE RATE WARM_S SECS    open loop at RATE, latency from the
                                         task's due time
          quit
"""
import os
import sys
import threading
import time

from celery import Celery
from celery.signals import worker_ready


def make_app(sock):
    url = "redis+socket://" + sock
    app = Celery("broker_celery", broker=url, backend=url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
    )

    @app.task(name="noop")
    def noop(p):
        return len(p)

    return app, noop


def watch_stdin():
    """The bench went away (stdin ended): the whole group goes."""
    # os.read on the descriptor, not sys.stdin: a thread blocked inside
    # sys.stdin's buffered reader holds its lock, and the pool processes
    # forked meanwhile close sys.stdin at start (billiard): they would wait
    # for that lock for ever
    def run():
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        os.killpg(os.getpgrp(), 9)
    threading.Thread(target=run, daemon=True).start()


def worker(sock, queue, concurrency):
    app, _ = make_app(sock)
    # our READY line goes to stdout, not to Celery's logger
    app.conf.worker_redirect_stdouts = False

    @worker_ready.connect
    def ready(**_):
        print("READY %d" % os.getpid(), flush=True)

    watch_stdin()
    app.worker_main(["worker", "-P", "prefork", "-c", str(concurrency), "-Q", queue,
                     "--without-gossip", "--without-mingle", "--without-heartbeat",
                     "-l", "warning", "-n", "bench%d@%%h" % os.getpid()])


def pct(s, p):
    if not s:
        return float("nan")
    import math
    return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]


def client(sock):
    app, noop = make_app(sock)
    rc = None
    limit_s = float(os.environ.get("BROKER_LIMIT_S", "60"))

    def drain(timeout):
        # one pub/sub message per call at most: read what is there
        nonlocal rc
        rc = rc or app.backend.result_consumer
        rc.drain_events(timeout=timeout)
        for _ in range(256):
            before = st["events"]
            rc.drain_events(timeout=0)
            if st["events"] == before:
                break

    st = {"events": 0}

    def tp(q, size, warm, secs, window):
        payload = "x" * size
        t0 = time.monotonic()
        t_start, t_end = t0 + warm, t0 + warm + secs
        c = {"sent": 0, "done": 0, "measured": 0, "errors": 0, "dup": 0, "first": ""}
        seen = set()
        live = {}

        def on_ready(r):
            t = time.monotonic()
            st["events"] += 1
            if r.id in seen:
                c["dup"] += 1
                return
            seen.add(r.id)
            live.pop(r.id, None)
            c["done"] += 1
            v = r.result
            if r.status != "SUCCESS" or v != size:
                c["errors"] += 1
                c["first"] = c["first"] or repr(v)
            if t_start <= t < t_end:
                c["measured"] += 1

        def submit():
            r = noop.apply_async((payload,), queue=q)
            live[r.id] = r
            r.then(on_ready)
            c["sent"] += 1

        for _ in range(window):
            submit()
        deadline = t_end + limit_s
        why = ""
        while True:
            now = time.monotonic()
            if now < t_end:
                while c["sent"] - c["done"] < window:
                    submit()
            elif c["done"] >= c["sent"]:
                break
            if now > deadline:
                why = " why=timeout"
                break
            drain(0.001)
        lost = c["sent"] - c["done"]
        if lost:  # were they run? (a result key is there if so)
            import redis as _r
            cl = _r.Redis(unix_socket_path=sock)
            for tid in list(live)[:5]:
                print("# lost %s meta=%s" % (tid, cl.get("celery-task-meta-" + tid)), file=sys.stderr)
        return ("OK tp rate=%.1f measured=%d sent=%d done=%d errors=%d dup=%d lost=%d%s%s" % (
            c["measured"] / secs, c["measured"], c["sent"], c["done"], c["errors"], c["dup"], lost, why,
            (" first_error=" + c["first"].replace(" ", "_")) if c["first"] else ""))

    def lat(q, size, rate, warm, secs):
        payload = "x" * size
        total = max(1, round(rate * (warm + secs)))
        t0 = time.monotonic() + 0.002
        t_start = t0 + warm
        c = {"sent": 0, "done": 0, "errors": 0, "last": t0}
        lats = []
        due = {}

        def on_ready(r):
            t = time.monotonic()
            st["events"] += 1
            c["done"] += 1
            c["last"] = t
            if r.status != "SUCCESS" or r.result != size:
                c["errors"] += 1
            sched = due.pop(r.id, None)
            if sched is not None and sched >= t_start:
                lats.append((t - sched) * 1000)

        deadline = t0 + warm + secs + limit_s
        why = ""
        while c["sent"] < total or c["done"] < c["sent"]:
            now = time.monotonic()
            if now > deadline:
                why = " why=timeout"
                break
            want = min(total, int((now - t0) * rate) + 1) if now >= t0 else 0
            while c["sent"] < want:
                sched = t0 + c["sent"] / rate
                c["sent"] += 1
                r = noop.apply_async((payload,), queue=q)
                due[r.id] = sched
                r.then(on_ready)
            drain(0.0005)
        lats.sort()
        return ("OK lat p50=%.3f p90=%.3f p99=%.3f max=%.3f n=%d sent=%d done=%d errors=%d span=%.3f%s" % (
            pct(lats, 0.5), pct(lats, 0.9), pct(lats, 0.99), lats[-1] if lats else float("nan"), len(lats),
            c["sent"], c["done"], c["errors"], c["last"] - t_start, why))

    import celery
    import kombu
    import redis
    print("READY %d celery=%s kombu=%s redis-py=%s python=%s" % (
        os.getpid(), celery.__version__, kombu.__version__, redis.__version__, sys.version.split()[0]), flush=True)
    for line in sys.stdin:
        a = line.split()
        if not a:
            continue
        try:
            if a[0] == "tp":
                out = tp(a[1], int(a[2]), float(a[3]), float(a[4]), int(a[5]))
            elif a[0] == "lat":
                out = lat(a[1], int(a[2]), float(a[3]), float(a[4]), float(a[5]))
            elif a[0] == "quit":
                print("OK quit", flush=True)
                break
            else:
                out = "ERR unknown command " + a[0]
        except Exception as e:  # reported, not raised: the bench goes on
            out = "ERR " + " ".join(repr(e).split())
        print(out, flush=True)


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "worker":
        # the task module is this file: `celery worker` finds noop by name
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "client":
        client(sys.argv[2])
    else:
        sys.exit("usage: broker_celery.py worker SOCK QUEUE CONCURRENCY | client SOCK")


if __name__ == "__main__":
    main()
