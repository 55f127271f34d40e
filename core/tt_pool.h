/*
 * tether worker pool: a queue of tasks (opaque payloads) run by `size`
 * supervised workers, each answering REQUEST frames with a REPLY (result)
 * or a FAULT (the task raised).
 *
 * A task goes to the least-loaded running worker with fewer than
 * `concurrency` tasks.  Every task's callback runs exactly once:
 * - status 0 with kind REPLY or FAULT and the payload;
 * - TT_ERR_TIMEOUT after `timeout_ms` (the worker is then stopped and
 *   replaced; a late answer is dropped);
 * - TT_ERR_WORKER_CRASH when its worker died and it was already re-run
 *   `retries` times (each re-run goes to whichever worker is free; tasks
 *   that were on a worker stopped for another task's timeout are re-run
 *   without counting);
 * - TT_ERR_CLOSED after tt_pool_terminate() or when the pool closes;
 * - TT_ERR_WORKER_INIT when the workers cannot start (the supervisor gave
 *   up: more than max_restarts start failures within the window).
 *
 * Recycling: a worker that took `max_tasks_per_worker` tasks, or whose RSS
 * is over `max_memory`, gets no more tasks; its replacement is started at
 * once and the old one is stopped when its last task is done.
 */
#ifndef TT_POOL_H
#define TT_POOL_H

#include <stdint.h>
#include <sys/queue.h>
#include <uv.h>

#include "tt_rpc.h"
#include "tt_supervisor.h"

typedef struct tt_pool_s tt_pool_t;
typedef struct tt_task_s tt_task_t;
typedef struct tt_pool_worker_s tt_pool_worker_t;
TAILQ_HEAD(tt_task_list, tt_task_s);
TAILQ_HEAD(tt_pool_worker_list, tt_pool_worker_s);

/* `ch` is the channel the answer came on (status 0), else NULL: an
 * answer the owner cannot decode is failed there (tt_channel_fail) and the
 * pool replaces that worker.  With an error status, `payload` may say why
 * in words (`len` bytes, e.g. how the worker died), or be NULL. */
typedef void (*tt_task_cb)(void *arg, int status, unsigned kind,
                           const char *payload, size_t len, tt_channel_t *ch);

typedef struct {
  /* workers.instances is the pool size; restarts are counted only for
   * workers that die before they are ready. */
  tt_supervisor_options_t workers;
  size_t max_queue;              /* queued tasks; 0: no limit */
  uint64_t timeout_ms;           /* per task; 0: none */
  unsigned retries;              /* re-runs after a crash */
  unsigned max_tasks_per_worker; /* 0: no limit */
  uint64_t max_memory;           /* bytes of RSS; 0: no limit */
  uint64_t memory_interval_ms;   /* 0: 1000 */
  unsigned concurrency;          /* tasks per worker at once; 0: 1 */
  /* Tasks sent ahead to a worker beyond `concurrency`, waiting in its
   * socket and in tether.serve's line, so a worker never waits a round
   * trip for its next task.  Their timeout clock starts when they begin;
   * a crash re-runs them without counting. */
  unsigned prefetch;
} tt_pool_options_t;

typedef struct {
  uint64_t queued, running;     /* now */
  uint64_t submitted, done;     /* done: answered with a result */
  uint64_t failed;              /* ended with an error or a fault */
  uint64_t retried;             /* re-runs after a crash */
  uint64_t timeouts, crashes;   /* crashes: workers that died with tasks */
  uint64_t recycled;            /* workers retired by the limits */
  uint64_t late;                /* answers dropped (the task had ended) */
  uint64_t workers;             /* running workers now */
} tt_pool_stats_t;

struct tt_pool_s {
  void *data; /* owner's */
  /* Frames from workers other than answers (messages, runner reports,
   * requests), with the worker's channel: a frame the owner cannot decode
   * is failed there (tt_channel_fail), and the pool replaces that worker. */
  void (*on_frame)(tt_pool_t *p, unsigned id, tt_channel_t *ch,
                   const tt_frame_header_t *h, const char *payload);
  void (*on_error)(tt_pool_t *p, unsigned id, int err, const char *why);
  void (*on_give_up)(tt_pool_t *p, const char *why);
  /* Every worker stopped after close/terminate (or give-up). */
  void (*on_stopped)(tt_pool_t *p);

  /* private */
  uv_loop_t *loop;
  tt_pool_options_t opts;
  tt_supervisor_t sup;
  struct tt_task_list queue;
  struct tt_pool_worker_list workers;
  uint64_t late_gone; /* late answers counted by workers now gone */
  int end_status; /* once ended: what late tasks fail with */
  unsigned flags;
  int dispatching, again;
  int pending_closes;
  char concurrency_var[48]; /* the workers' TETHER_POOL_CONCURRENCY */
  char *handshake[2];
  tt_pool_stats_t stats;
  void (*close_cb)(tt_pool_t *p);
};

/* Starts the workers.  On failure nothing needs closing. */
int tt_pool_start(uv_loop_t *loop, tt_pool_t *p, const tt_pool_options_t *o);
/* Queues a task (the payload is copied).  0, or TT_ERR_SERIALIZE (larger
 * than the workers' max_message), TT_ERR_QUEUE_FULL, TT_ERR_CLOSED,
 * TT_ERR_WORKER_INIT (the pool gave up), UV_ENOMEM; then `cb` is not
 * called. */
int tt_pool_submit(tt_pool_t *p, const void *payload, size_t len,
                   tt_task_cb cb, void *arg);
/* As tt_pool_submit, the task carrying `nfds` descriptors (tether
 * buffers' memfds): the task keeps duplicates until it ends, and each
 * REQUEST it is sent in carries them.  UV_ENOTSUP on JSON workers; EMFILE
 * when the duplicates cannot be made, then or when the task is sent (its
 * callback says so). */
int tt_pool_submit_fds(tt_pool_t *p, const void *payload, size_t len,
                       const int *fds, unsigned nfds, tt_task_cb cb,
                       void *arg);
/* What tt_pool_submit_fds would refuse a task of `len` bytes and `nfds`
 * descriptors with, before anything is made: 0, or its error (a caller
 * freezes buffers only for a task that will be taken). */
int tt_pool_check_submit(const tt_pool_t *p, size_t len, unsigned nfds);
/* Takes no more tasks; the queued and running ones finish, then the
 * workers stop (on_stopped). */
void tt_pool_drain(tt_pool_t *p);
/* Fails every queued and running task with TT_ERR_CLOSED and stops the
 * workers now (on_stopped follows). */
void tt_pool_terminate(tt_pool_t *p);
void tt_pool_stats(const tt_pool_t *p, tt_pool_stats_t *out);
/* The workers cannot start (e.g. their script does not load): queued
 * tasks fail with TT_ERR_WORKER_INIT now, as after the supervisor's own
 * give-up (on_give_up(why) first). */
int tt_pool_give_up(tt_pool_t *p, const char *why);
/* A frame to worker `id` outside the task protocol (e.g. Node's
 * NODE_HANDLE_NACK), queued as tt_supervisor_send() does. */
int tt_pool_send(tt_pool_t *p, unsigned id, const void *payload, size_t len);
/* As tt_pool_send, with `nfds` descriptors (the caller's stay open). */
int tt_pool_send_fds(tt_pool_t *p, unsigned id, const void *payload,
                     size_t len, const int *fds, unsigned nfds);
/* What tt_pool_send_fds would refuse at once (tt_supervisor_check_send). */
int tt_pool_check_send(tt_pool_t *p, unsigned id, size_t len, unsigned nfds);
int tt_pool_info(tt_pool_t *p, unsigned id, tt_worker_info_t *out);
/* The number of workers and their max_message (the default resolved). */
unsigned tt_pool_size(const tt_pool_t *p);
size_t tt_pool_max_message(const tt_pool_t *p);
/* Fails what is left with TT_ERR_CLOSED (as tt_pool_terminate), stops the
 * workers and frees everything: `cb` runs from the loop, never from inside
 * this call, when the memory may be freed.  Idempotent.  tt_pool_abandon
 * does not wait for the workers (the loop is being torn down); it may
 * follow a close that is still waiting. */
void tt_pool_close(tt_pool_t *p, void (*cb)(tt_pool_t *p));
void tt_pool_abandon(tt_pool_t *p, void (*cb)(tt_pool_t *p));

#endif /* TT_POOL_H */
