/*
 * tether handshake: the environment contract between a parent and the
 * child it spawns with a channel, in one place for both sides.
 *
 * The parent (tt_process_spawn) sets, for the child only:
 *   TETHER_CHANNEL_FD=3        the channel (native frames), or
 *   NODE_CHANNEL_FD=3 and NODE_CHANNEL_SERIALIZATION_MODE=json
 *                              for JSON lines (what a Node.js child reads);
 *   TETHER_PARENT_PID=<pid>    who the parent is (the child watches it);
 *   TETHER_MAX_MESSAGE=<n>     the parent's max_message, when set;
 *   TETHER_DETACHED=1          the child outlives its parent;
 *   TETHER_POOL_CONCURRENCY=<n> set by a pool: tasks a worker runs at once;
 *   TETHER_CLUSTER=<mode>[:fd,...] set by a cluster: "rr" (connections come
 *                              as control frames) or "shared"/"reuseport"
 *                              with the listening sockets passed to it.
 * A variable the caller put in the child's env itself wins over ours (for
 * tests and tools); the parent's own copies of these are never passed on.
 *
 * The child reads them once, at its first tt_handshake() call, and removes
 * them from its environment so its own children never inherit them.
 * TETHER_WORKER_ID (a supervisor's slot) is not part of it: it is for the
 * user's script and stays.
 */
#ifndef TT_HANDSHAKE_H
#define TT_HANDSHAKE_H

#include <stddef.h>

#define TT_ENV_CHANNEL_FD "TETHER_CHANNEL_FD"
#define TT_ENV_NODE_CHANNEL_FD "NODE_CHANNEL_FD"
#define TT_ENV_NODE_MODE "NODE_CHANNEL_SERIALIZATION_MODE"
#define TT_ENV_PARENT_PID "TETHER_PARENT_PID"
#define TT_ENV_MAX_MESSAGE "TETHER_MAX_MESSAGE"
#define TT_ENV_DETACHED "TETHER_DETACHED"
#define TT_ENV_POOL_CONCURRENCY "TETHER_POOL_CONCURRENCY"
#define TT_ENV_CLUSTER "TETHER_CLUSTER"

typedef struct {
  /* A channel was named (by tether or Node.js); fd is usable when
   * channel_error is 0: non-blocking and close-on-exec. */
  int named;
  int fd;            /* -1 when none or unusable */
  int channel_error; /* UV_EBADF (not a number, or fds 0-2), UV_ENOTSOCK,
                        UV_ENOTSUP (Node's "advanced" serialization) */
  int lines;         /* JSON lines: started by Node.js or in JSON mode */
  int parent_pid;    /* 0: unknown (not started by tether: the parent is
                        getppid() at the first call) */
  size_t max_message;   /* 0: the default */
  unsigned concurrency; /* 0: not a pool worker */
  int detached;
  const char *cluster; /* TETHER_CLUSTER as given; NULL: not in a cluster */
} tt_handshake_t;

/* The child's side, read once (the first call reads and removes the
 * variables; later calls return the same). */
const tt_handshake_t *tt_handshake(void);

/* In a worker forked by a zygote (tt_zygote.h): forgets what the zygote
 * read and reads the (new) environment again. */
void tt_handshake_reload(void);

#endif /* TT_HANDSHAKE_H */
