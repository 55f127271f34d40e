/*
 * tether core: every limit and default in one place (as lua-cjson keeps
 * its DEFAULT_* together), so they are read, documented (README,
 * "Reference") and changed together.  Tuning that no caller sees (chunk
 * sizes, iovec counts) stays with its code.
 */
#ifndef TT_LIMITS_H
#define TT_LIMITS_H

#include <stddef.h>

/* ---- messages and channels ---------------------------------------------- */

/* Payload limit unless max_message says otherwise: 64 MiB.  The wire
 * allows up to 4 GiB - 1 (a 32-bit length). */
#define TT_FRAME_DEFAULT_MAX_MESSAGE ((size_t)64 << 20)
/* send() reports backpressure once more than this is queued (bytes). */
#define TT_CHANNEL_DEFAULT_HIGH_WATER ((size_t)1 << 20)
/* How long a disconnect (or an exit) waits for the peer to take the
 * backlog before dropping it, in ms. */
#define TT_CHANNEL_DEFAULT_FLUSH_TIMEOUT 5000
/* Received frames handed out per loop iteration (and bytes), so a burst
 * cannot keep a process from writing its answers or serving others. */
#define TT_CHANNEL_FRAMES_PER_TICK 256
/* A channel stops reading while its output waiting for the peer is over
 * this many times high_water, and reads again once it is down to
 * high_water: a peer that sends requests and never reads the answers
 * cannot grow our memory. */
#define TT_CHANNEL_HOLD_FACTOR 4
#define TT_CHANNEL_BYTES_PER_TICK ((size_t)1 << 20)
/* A piped stdin reports backpressure once more than this waits (bytes). */
#define TT_STDIN_HIGH_WATER ((size_t)1 << 20)

/* ---- logs ---------------------------------------------------------------- */

/* Bytes a log sink holds for a stalled reader before it drops lines. */
#define TT_LOGSINK_BUFFER ((size_t)1 << 20)
/* Worker output lines longer than this are logged in pieces. */
#define TT_LOG_MAX_LINE ((size_t)64 << 10)
/* After a worker's exit, output still in its pipes is logged for at most
 * this long (ms): a grandchild holding the pipe must not hold us. */
#define TT_DRAIN_MS 500

/* ---- supervisors and pools (tt_supervisor_options_init) ------------------ */

#define TT_SUP_DEFAULT_MAX_RESTARTS 10      /* within TT_SUP_DEFAULT_WITHIN_MS */
#define TT_SUP_DEFAULT_WITHIN_MS 60000
#define TT_SUP_DEFAULT_MIN_UPTIME_MS 1000   /* a run this long resets backoff */
#define TT_SUP_DEFAULT_MEMORY_INTERVAL_MS 1000 /* RSS sampling */
#define TT_SUP_DEFAULT_SHUTDOWN_TIMEOUT_MS 5000 /* shutdown message -> SIGTERM */
#define TT_SUP_DEFAULT_KILL_TIMEOUT_MS 3000 /* SIGTERM -> SIGKILL */
#define TT_SUP_DEFAULT_QUEUE_LIMIT 1024     /* queued sends per worker */
#define TT_SUP_MAX_INSTANCES 100000         /* slots of one supervisor */
#define TT_LOGSINK_MAX_KEEP 1000 /* old logs kept: renames per rotation */
/* Spawns per loop iteration: a fork+exec takes milliseconds, and hundreds
 * at once would keep the loop (signals, messages, timers of the workers
 * already up) waiting for seconds. */
#define TT_SPAWNS_PER_TICK 8

/* ---- backoff (tt_backoff_init) ------------------------------------------- */

#define TT_BACKOFF_DEFAULT_INITIAL_MS 100
#define TT_BACKOFF_DEFAULT_MAX_MS 10000
#define TT_BACKOFF_DEFAULT_FACTOR 2
#define TT_BACKOFF_DEFAULT_JITTER_MS 25 /* initial / 4 */

#endif /* TT_LIMITS_H */
