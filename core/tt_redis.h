/*
 * tether redis: one connection to a Redis server on the loop, for the
 * distributed pools (doc/distributed.md).
 *
 * hiredis does what it is good at: formatting commands
 * (redisFormatCommandArgv) and parsing RESP (redisReader).  The socket,
 * pipelining, timeouts and reconnects are ours: hiredis 0.14's libuv
 * adapter drops poll errors and has no timeouts.
 *
 * Commands are pipelined: what is issued in one loop iteration goes out in
 * one write.  Replies are matched in order; every command's callback runs
 * exactly once: with the reply (which may be a Redis error reply: check
 * reply->type), or with reply NULL and an error: TT_ERR_BROKER_DOWN (not
 * connected, or the connection was lost with the command unanswered) or
 * TT_ERR_TIMEOUT (nothing read or written for reply_timeout_ms while a
 * reply is awaited: the connection is then dropped, since a reply may
 * still come and the order would be lost).  A connection is up once the
 * server answered a first PING (or SELECT): not while Redis is LOADING.
 *
 * The connection comes back by itself after a loss, after the backoff;
 * on_state tells the owner (connected 1 / 0).  Commands issued while it is
 * down fail at once (the owner decides what to retry).
 */
#ifndef TT_REDIS_H
#define TT_REDIS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <uv.h>

#include "tt_backoff.h"

struct redisReply;
struct redisReader;

typedef struct tt_redis_s tt_redis_t;
typedef struct tt_redis_cmd_s tt_redis_cmd_t;

/* reply is freed after the call; NULL when err != 0. */
typedef void (*tt_redis_cb)(tt_redis_t *r, struct redisReply *reply, int err,
                            void *arg);

typedef struct {
  uint64_t connect_timeout_ms; /* 0: 2000 */
  uint64_t reply_timeout_ms;   /* 0: 5000; added to a command's block_ms */
  tt_backoff_t backoff;        /* reconnects; zero: 100 ms doubling to 5 s */
} tt_redis_options_t;

TAILQ_HEAD(tt_redis_cmd_list, tt_redis_cmd_s);

struct tt_redis_cmd_s {
  TAILQ_ENTRY(tt_redis_cmd_s) link;
  tt_redis_cb cb;
  void *arg;
  uint64_t deadline; /* its BLOCK time: allowed on top of the timeout */
};

struct tt_redis_s {
  void *data; /* owner's */
  /* connected 1: ready for commands (SELECTed); 0: lost (err says why),
   * reconnecting after the backoff. */
  void (*on_state)(tt_redis_t *r, int connected, int err);

  /* private */
  uv_loop_t *loop;
  tt_redis_options_t opts;
  char *host; /* NULL for a Unix path */
  char *path;
  char *user, *password; /* AUTH on every connect; NULL: none */
  int port, db;
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } sock;
  uv_connect_t connect_req;
  uv_timer_t timer;    /* connect timeout, then the reconnect */
  uv_timer_t ticker;   /* reply deadlines */
  uv_idle_t flusher;   /* writes what this iteration queued */
  struct redisReader *reader;
  char *rbuf;
  char *out;           /* formatted commands not yet written */
  size_t out_len, out_cap;
  struct tt_redis_cmd_list pending; /* sent or queued, unanswered */
  struct tt_redis_cmd_list failed;  /* issued while down: failed next tick */
  unsigned attempts;   /* reconnects since the last success */
  unsigned gen;        /* connections so far (a callback may drop one) */
  int writing;         /* uv_writes in flight on the current socket */
  uint64_t progress;   /* loop ms of the last byte read or written */
  uint64_t seed;
  int state;           /* see redis.c */
  int sock_open, closing, pending_closes;
  void (*close_cb)(tt_redis_t *r);
};

/* "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]" (port 6379) or
 * "unix:PATH[?db=N][&user=U][&password=P]" (the query's parts in any
 * order, joined by '&'); HOST an address or a name (resolved at each
 * connect).  With a password, AUTH is the first command of every
 * connection (Redis 6 ACL users with USER); refused: TT_ERR_BROKER, and
 * retried after the backoff like any lost connection.  A Redis Cluster
 * node's MOVED answer moves the connection to the node it names (what was
 * pending fails with TT_ERR_BROKER_DOWN, as on any lost connection): a
 * client whose keys share one hash slot follows it to its node.
 * 0, or UV_EINVAL for an address it cannot read (nothing to close then).
 * Connecting starts at once; on_state(1) when ready. */
int tt_redis_start(uv_loop_t *loop, tt_redis_t *r, const char *address,
                   const tt_redis_options_t *opts);

/* Issues one command: argv[0..argc) with lengths (binary safe).
 * block_ms: how long the server may legitimately hold the reply (BLOCK
 * of XREAD/XREADGROUP), added to the reply timeout.  0, or UV_ENOMEM;
 * when the connection is down, cb runs from the loop with
 * TT_ERR_BROKER_DOWN (never from inside this call). */
int tt_redis_command(tt_redis_t *r, int argc, const char **argv,
                     const size_t *argvlen, uint64_t block_ms, tt_redis_cb cb,
                     void *arg);

int tt_redis_connected(const tt_redis_t *r);

/* Fails every pending command (TT_ERR_CLOSED; their callbacks run inside
 * this call), closes, and calls cb from the loop when the memory may be
 * freed.  Idempotent. */
void tt_redis_close(tt_redis_t *r, void (*cb)(tt_redis_t *r));

#endif /* TT_REDIS_H */
