/*
 * Worker pool: see tt_pool.h.
 *
 * Invariants:
 * - A task is in the pool's queue, or on exactly one worker's list (then
 *   it is a live request of that worker's rpc: its REQUEST went there, and
 *   the rpc matches the answer), or it has ended (its callback ran and it
 *   was freed).  A task keeps its payload until it ends, so a crash can
 *   send it again.  Leaving a worker's list cancels the request, so an
 *   answer that still comes is counted late by that rpc.
 * - A pool worker record is listed from the supervisor's on_start until
 *   on_exit of that incarnation (its serial), so an answer is matched
 *   against the tasks of the very process that sent it; it is freed once
 *   its rpc has closed.
 * - stats.running and stats.queued always equal the list lengths.
 */
#include "tt_pool.h"
#include "tt_handshake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tt_error.h"

enum {
  PL_CLOSING = 1u << 0, /* no new tasks */
  PL_ENDED = 1u << 1,   /* the supervisor was told to stop */
  PL_STOPPED = 1u << 2,
  PL_FREEING = 1u << 3,
  PL_SUP_CLOSED = 1u << 4,
  PL_FREED = 1u << 5
};

struct tt_task_s {
  TAILQ_ENTRY(tt_task_s) link; /* the queue, or its worker's tasks */
  tt_pool_t *pool;
  tt_pool_worker_t *w; /* while running */
  tt_request_t req;    /* while running */
  unsigned reruns;     /* after crashes */
  int started;         /* among its worker's first `concurrency`: running */
  int done;            /* finished: only its timer's close remains */
  tt_task_cb cb;
  void *arg;
  int timer_init;
  uv_timer_t timer;
  int *fds; /* our duplicates of the descriptors the task carries */
  unsigned nfds;
  size_t len;
  char payload[];
};

struct tt_pool_worker_s {
  TAILQ_ENTRY(tt_pool_worker_s) link;
  tt_pool_t *pool;
  unsigned id;
  uint64_t serial;
  tt_channel_t *ch;          /* NULL once unusable */
  tt_rpc_t rpc;              /* its tasks' requests */
  struct tt_task_list tasks; /* running here, in the order sent */
  unsigned running, taken;
  int retiring, stopping;
  int awaiting; /* retiring: its replacement is starting */
};

static void dispatch(tt_pool_t *p);
static void on_answer(tt_request_t *req, int status, unsigned kind,
                      const char *payload, size_t len);
static void maybe_end(tt_pool_t *p);
static void maybe_freed(tt_pool_t *p);

static void queue_remove(tt_pool_t *p, tt_task_t *t) {
  TAILQ_REMOVE(&p->queue, t, link);
  p->stats.queued--;
}

static void on_task_timeout(uv_timer_t *timer);

/* A worker runs its tasks in the order they came (the worker side of
 * tether.serve holds prefetched ones back), so its first `concurrency`
 * tasks are the running ones: only their clocks run. */
static void start_clocks(tt_pool_t *p, tt_pool_worker_t *w) {
  unsigned n = 0;
  if (w->stopping) return; /* its tasks will run elsewhere */
  for (tt_task_t *t = TAILQ_FIRST(&w->tasks);
       t != NULL && n < p->opts.concurrency; t = TAILQ_NEXT(t, link), n++) {
    if (t->started) continue;
    t->started = 1;
    if (p->opts.timeout_ms == 0) continue;
    if (!t->timer_init) {
      uv_timer_init(p->loop, &t->timer);
      t->timer_init = 1;
    }
    t->timer.data = t;
    tt__timer_start(&t->timer, on_task_timeout, p->opts.timeout_ms, 0);
  }
}

/* `next`: the next task in that worker's line begins (its clock starts);
 * not when the worker is about to be stopped for this one. */
static void worker_take(tt_pool_t *p, tt_task_t *t, int next) {
  tt_pool_worker_t *w = t->w;
  TAILQ_REMOVE(&w->tasks, t, link);
  tt_rpc_cancel(&t->req); /* (a no-op when it was answered) */
  w->running--;
  t->w = NULL;
  p->stats.running--;
  if (t->timer_init) uv_timer_stop(&t->timer);
  if (t->started) {
    t->started = 0;
    if (next) start_clocks(p, w);
  }
}

static void worker_remove(tt_pool_t *p, tt_task_t *t) { worker_take(p, t, 1); }

/* ---- ending a task ------------------------------------------------------- */

static void on_task_timer_closed(uv_handle_t *h) {
  tt_task_t *t = h->data;
  tt_pool_t *p = t->pool;
  free(t);
  p->pending_closes--;
  maybe_freed(p);
}

/* The task is on no list.  Runs its callback once and frees it. */
static void finish_on(tt_task_t *t, int status, unsigned kind,
                      const char *payload, size_t len, tt_channel_t *ch) {
  tt_pool_t *p = t->pool;
  tt_task_cb cb = t->cb;
  void *arg = t->arg;
  t->done = 1;
  tt__free_fds(t->fds, t->nfds); /* (sent, or never to be) */
  t->fds = NULL;
  t->nfds = 0;
  if (status != 0 || kind == TT_FRAME_FAULT)
    p->stats.failed++;
  else
    p->stats.done++;
  if (t->timer_init) {
    uv_timer_stop(&t->timer);
    t->timer.data = t;
    p->pending_closes++;
    uv_close((uv_handle_t *)&t->timer, on_task_timer_closed);
  } else {
    free(t);
  }
  cb(arg, status, kind, payload, len, ch);
}

static void finish(tt_task_t *t, int status, unsigned kind,
                   const char *payload, size_t len) {
  finish_on(t, status, kind, payload, len, NULL);
}

/* What tasks that end because the pool ended are told. */
static const char *end_why(int status) {
  return status == TT_ERR_CLOSED ? "pool is closed" : NULL;
}

static void fail_queue(tt_pool_t *p, int status) {
  tt_task_t *t;
  const char *why = end_why(status);
  while ((t = TAILQ_FIRST(&p->queue)) != NULL) {
    queue_remove(p, t);
    finish(t, status, 0, why, why ? strlen(why) : 0);
  }
}

static void fail_running(tt_pool_t *p, int status) {
  const char *why = end_why(status);
  tt_pool_worker_t *w;
  TAILQ_FOREACH(w, &p->workers, link) {
    tt_task_t *t;
    while ((t = TAILQ_FIRST(&w->tasks)) != NULL) {
      worker_remove(p, t);
      finish(t, status, 0, why, why ? strlen(why) : 0);
    }
  }
}

/* ---- workers ------------------------------------------------------------- */

static tt_pool_worker_t *worker_of(tt_pool_t *p, uint64_t serial) {
  tt_pool_worker_t *w;
  TAILQ_FOREACH(w, &p->workers, link)
    if (w->serial == serial) return w;
  return NULL;
}

static void on_worker_rpc_closed(tt_rpc_t *rpc) {
  tt_pool_worker_t *w = rpc->data;
  tt_pool_t *p = w->pool;
  free(w);
  p->pending_closes--;
  maybe_freed(p);
}

/* Unlisted, without tasks: its record goes once its rpc has closed. */
static void worker_release(tt_pool_t *p, tt_pool_worker_t *w) {
  p->late_gone += w->rpc.stats.late_replies;
  p->stats.workers--;
  w->rpc.data = w;
  p->pending_closes++;
  tt_rpc_close(&w->rpc, on_worker_rpc_closed);
}

static void stop_worker(tt_pool_t *p, tt_pool_worker_t *w,
                        tt_exit_reason_t why, int polite) {
  if (w->stopping) return;
  w->stopping = 1;
  tt_supervisor_stop_worker(&p->sup, w->serial, why, polite);
}

/* No more tasks for `w`; a replacement starts now, and `w` stops once its
 * last task is done. */
static void retire(tt_pool_t *p, tt_pool_worker_t *w) {
  if (w->retiring || w->stopping) return;
  w->retiring = 1;
  p->stats.recycled++;
  /* The replacement starts now; `w` stays (taking nothing) until it is
   * ready, so the pool never has no worker.  When one cannot start now
   * (another is starting for this slot), the supervisor restarts the slot
   * once `w` has stopped. */
  w->awaiting = tt_supervisor_replace(&p->sup, w->id, 1) == 0;
  if (w->running == 0 && !w->awaiting) stop_worker(p, w, TT_EXIT_RETIRED, 1);
}

/* Slot `id` got its replacement (or it failed to start): retiring workers
 * of the slot stop once idle. */
static void replacement_settled(tt_pool_t *p, unsigned id, uint64_t serial) {
  tt_pool_worker_t *w;
  TAILQ_FOREACH(w, &p->workers, link) {
    if (w->id != id || w->serial == serial || !w->awaiting) continue;
    w->awaiting = 0;
    if (w->running == 0) stop_worker(p, w, TT_EXIT_RETIRED, 1);
  }
}

static void on_task_timeout(uv_timer_t *timer) {
  tt_task_t *t = timer->data;
  tt_pool_t *p = t->pool;
  tt_pool_worker_t *w = t->w;
  /* Its answer may be in the socket already (we were stopped or busy past
   * the deadline): read it first. */
  if (w->ch != NULL) {
    tt_channel_read_now(w->ch);
    if (t->done) return;
    w = t->w;
  }
  /* no clock starts for a task sent ahead to it: that one never began,
   * and runs again elsewhere once the worker is stopped */
  worker_take(p, t, 0);
  p->stats.timeouts++;
  /* Whatever it is doing cannot be interrupted from here: the process is
   * replaced, and its other tasks are run again elsewhere. */
  stop_worker(p, w, TT_EXIT_TIMEOUT, 0);
  finish(t, TT_ERR_TIMEOUT, 0, NULL, 0);
  dispatch(p);
}

/* The least-loaded worker with a free slot.  Tasks are sent ahead
 * (prefetch) only once every slot of the pool has a working worker and all
 * are busy: a task sent ahead waits on its worker even if another becomes
 * free, so it must not go to the first worker up while the others start. */
static tt_pool_worker_t *least_loaded(tt_pool_t *p) {
  tt_pool_worker_t *best = NULL;
  tt_pool_worker_t *w;
  unsigned able = 0, cap = p->opts.concurrency;
  TAILQ_FOREACH(w, &p->workers, link) {
    if (w->ch == NULL || w->retiring || w->stopping) continue;
    able++;
    if (best == NULL || w->running < best->running) best = w;
  }
  if (best != NULL && best->running >= cap &&
      able == p->opts.workers.instances)
    cap += p->opts.prefetch;
  return best != NULL && best->running < cap ? best : NULL;
}

/* A worker answered task `req` (the rpc matched the id).  Only answers end
 * a request here: the pool cancels its requests before their rpc closes. */
static void on_answer(tt_request_t *req, int status, unsigned kind,
                      const char *payload, size_t len) {
  tt_task_t *t = req->data;
  tt_pool_t *p = t->pool;
  tt_pool_worker_t *w = t->w;
  worker_remove(p, t);
  finish_on(t, status, kind, payload, len, w->rpc.ch);
  if (w->retiring && w->running == 0 && !w->awaiting)
    stop_worker(p, w, TT_EXIT_RETIRED, 1);
  dispatch(p);
}

static void dispatch(tt_pool_t *p) {
  if (p->dispatching) {
    p->again = 1;
    return;
  }
  p->dispatching = 1;
  do {
    p->again = 0;
    while (!TAILQ_EMPTY(&p->queue) && !(p->flags & PL_ENDED)) {
      tt_pool_worker_t *w = least_loaded(p);
      tt_task_t *t = TAILQ_FIRST(&p->queue);
      int err;
      if (w == NULL) break;
      err = tt_rpc_request_fds(&w->rpc, &t->req, t->payload, t->len, t->fds,
                               t->nfds, on_answer);
      if (err == TT_ERR_IPC_CHANNEL_CLOSED) {
        w->ch = NULL; /* going away: its exit comes */
        continue;
      }
      if (err != 0) {
        /* no memory or no descriptor for this frame: the task's failure,
         * not the worker's (which would wait for an exit that never
         * comes) */
        queue_remove(p, t);
        finish(t, err, 0, NULL, 0);
        continue;
      }
      queue_remove(p, t);
      if (w->taken == 0) tt_supervisor_mark_worked(&p->sup, w->serial);
      t->w = w;
      TAILQ_INSERT_TAIL(&w->tasks, t, link);
      w->running++;
      w->taken++;
      p->stats.running++;
      t->started = 0;
      start_clocks(p, w);
      if (p->opts.max_tasks_per_worker > 0 &&
          w->taken >= p->opts.max_tasks_per_worker)
        retire(p, w);
    }
  } while (p->again);
  p->dispatching = 0;
  maybe_end(p);
}

/* ---- supervisor events --------------------------------------------------- */

static tt_pool_t *pool_of(tt_supervisor_t *s) { return s->data; }

static void on_start(tt_supervisor_t *s, unsigned id, uint64_t serial) {
  tt_pool_t *p = pool_of(s);
  tt_pool_worker_t *w = calloc(1, sizeof *w);
  if (w == NULL) {
    /* Without its record the worker cannot get tasks: let another come. */
    tt_supervisor_stop_worker(s, serial, TT_EXIT_RETIRED, 1);
    if (p->on_error) p->on_error(p, id, UV_ENOMEM, "worker record");
    return;
  }
  w->pool = p;
  w->id = id;
  w->serial = serial;
  w->ch = tt_supervisor_worker_channel(s, serial);
  TAILQ_INIT(&w->tasks);
  tt_rpc_init(p->loop, &w->rpc, w->ch);
  TAILQ_INSERT_HEAD(&p->workers, w, link);
  p->stats.workers++;
  replacement_settled(p, id, serial);
  dispatch(p);
}

static void on_worker_exit(tt_supervisor_t *s, unsigned id, uint64_t serial,
                           int64_t status, int sig,
                           tt_exit_reason_t reason) {
  tt_pool_t *p = pool_of(s);
  tt_pool_worker_t *w = worker_of(p, serial);
  int crashed = 0;
  if (w == NULL) { /* never started: maybe a replacement */
    replacement_settled(p, id, serial);
    return;
  }
  TAILQ_REMOVE(&p->workers, w, link);
  /* Its tasks go back to the front of the queue, in their order. */
  while (!TAILQ_EMPTY(&w->tasks)) {
    tt_task_t *t = TAILQ_LAST(&w->tasks, tt_task_list);
    int started = t->started;
    t->started = 0; /* (no clock to start on a dead worker) */
    worker_remove(p, t);
    t->w = NULL;
    if (p->end_status != 0) {
      finish(t, p->end_status, 0, NULL, 0);
      continue;
    }
    /* innocent bystanders are not counted: tasks on a worker stopped for
     * another's timeout, and prefetched ones that had not begun */
    if (reason != TT_EXIT_TIMEOUT && started) {
      crashed = 1;
      if (t->reruns >= p->opts.retries) {
        char why[200];
        const char *name = tt_signal_name(sig);
        const char *what = tt_strerror(TT_ERR_WORKER_CRASH);
        int n = sig != 0
                    ? (name ? snprintf(why, sizeof why, "%s: worker %u was killed by %s", what, id, name)
                            : snprintf(why, sizeof why, "%s: worker %u was killed by signal %d", what, id, sig))
                    : snprintf(why, sizeof why, "%s: worker %u exited with code %lld", what, id,
                               (long long)status);
        if (n < 0 || (size_t)n >= sizeof why) n = 0;
        snprintf(why + n, sizeof why - (size_t)n, " (%s; the task ran %u time%s)",
                 tt_exit_reason_name(reason), t->reruns + 1, t->reruns ? "s" : "");
        finish(t, TT_ERR_WORKER_CRASH, 0, why, strlen(why));
        continue;
      }
      t->reruns++;
      p->stats.retried++;
    }
    TAILQ_INSERT_HEAD(&p->queue, t, link);
    p->stats.queued++;
  }
  if (crashed) p->stats.crashes++;
  worker_release(p, w);
  dispatch(p);
}

static void on_frame(tt_supervisor_t *s, unsigned id, uint64_t serial,
                     tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload) {
  tt_pool_t *p = pool_of(s);
  tt_pool_worker_t *w = worker_of(p, serial);
  /* answers of tasks that timed out or were terminated count late there */
  if (w != NULL && tt_rpc_dispatch(&w->rpc, h, payload)) return;
  if (h->kind == TT_FRAME_REPLY || h->kind == TT_FRAME_FAULT) {
    p->stats.late++; /* (no record: cannot happen while the worker runs) */
    return;
  }
  if (p->on_frame) p->on_frame(p, id, ch, h, payload);
}

/* The worker's channel ended but the process runs on (a frame was refused,
 * or it disconnected): it cannot take or answer tasks any more, so it is
 * replaced, and its tasks run again elsewhere as after a crash. */
static void on_worker_disconnect(tt_supervisor_t *s, unsigned id,
                                 uint64_t serial) {
  tt_pool_t *p = pool_of(s);
  tt_pool_worker_t *w = worker_of(p, serial);
  (void)id;
  if (w == NULL) return;
  /* At an end of stream it is most often exiting (its channel ends
   * first): it is given a moment to, so that its exit is told as it was,
   * not as our SIGTERM.  One that sent what cannot be read is stopped. */
  stop_worker(p, w, TT_EXIT_UNRESPONSIVE,
              w->ch != NULL && tt_channel_end_error(w->ch) == 0 ? TT_STOP_GRACE
                                                                : 0);
  w->ch = NULL;
  dispatch(p);
}

static void on_error(tt_supervisor_t *s, unsigned id, int err,
                     const char *why) {
  tt_pool_t *p = pool_of(s);
  if (p->on_error) p->on_error(p, id, err, why);
}

static void on_give_up(tt_supervisor_t *s, const char *why) {
  tt_pool_t *p = pool_of(s);
  p->flags |= PL_CLOSING | PL_ENDED;
  if (p->end_status == 0) p->end_status = TT_ERR_WORKER_INIT;
  if (p->on_give_up) p->on_give_up(p, why); /* first: the owner may add
                                                why to the tasks' errors */
  fail_queue(p, p->end_status);
}

static void on_stopped(tt_supervisor_t *s) {
  tt_pool_t *p = pool_of(s);
  p->flags |= PL_CLOSING | PL_ENDED | PL_STOPPED;
  if (p->end_status == 0) p->end_status = TT_ERR_CLOSED;
  fail_queue(p, p->end_status);
  fail_running(p, p->end_status);
  if (p->on_stopped) p->on_stopped(p);
}

/* ---- memory -------------------------------------------------------------- */

/* The supervisor's memory watch found `serial` over max_memory: it is
 * retired, not stopped mid-task. */
static void on_memory(tt_supervisor_t *s, unsigned id, uint64_t serial,
                      uint64_t rss) {
  tt_pool_t *p = pool_of(s);
  tt_pool_worker_t *w = worker_of(p, serial);
  (void)id;
  (void)rss;
  if (w != NULL && !w->retiring && !w->stopping) retire(p, w);
}

/* ---- API ----------------------------------------------------------------- */

int tt_pool_start(uv_loop_t *loop, tt_pool_t *p, const tt_pool_options_t *o) {
  tt_supervisor_options_t so = o->workers;
  p->loop = loop;
  p->opts = *o;
  if (p->opts.concurrency == 0) p->opts.concurrency = 1;
  TAILQ_INIT(&p->queue);
  TAILQ_INIT(&p->workers);
  p->late_gone = 0;
  p->end_status = 0;
  p->flags = 0;
  p->dispatching = p->again = 0;
  p->pending_closes = 0;
  p->close_cb = NULL;
  memset(&p->stats, 0, sizeof p->stats);

  so.restart = TT_RESTART_ALWAYS;
  so.exempt_worked = 1;
  so.max_memory = o->max_memory; /* on_memory: retired, not stopped */
  if (o->memory_interval_ms > 0) so.memory_interval_ms = o->memory_interval_ms;
  memset(&p->sup, 0, sizeof p->sup);
  p->sup.data = p;
  p->sup.on_start = on_start;
  p->sup.on_exit = on_worker_exit;
  p->sup.on_frame = on_frame;
  p->sup.on_disconnect = on_worker_disconnect;
  p->sup.on_error = on_error;
  p->sup.on_give_up = on_give_up;
  p->sup.on_stopped = on_stopped;
  p->sup.on_memory = on_memory;
  /* tether.serve in a worker runs at most `concurrency` tasks at once and
   * holds prefetched ones back (tt_handshake.h); the strings live here */
  snprintf(p->concurrency_var, sizeof p->concurrency_var,
           TT_ENV_POOL_CONCURRENCY "=%u", p->opts.concurrency);
  p->handshake[0] = p->concurrency_var;
  p->handshake[1] = NULL;
  so.process.handshake = p->handshake;
  return tt_supervisor_start(loop, &p->sup, &so);
}

int tt_pool_submit(tt_pool_t *p, const void *payload, size_t len,
                   tt_task_cb cb, void *arg) {
  return tt_pool_submit_fds(p, payload, len, NULL, 0, cb, arg);
}

int tt_pool_check_submit(const tt_pool_t *p, size_t len, unsigned nfds) {
  if (tt_channel_options_check_size(&p->opts.workers.process.channel_options,
                                    TT_FRAME_REQUEST, len) != 0)
    return TT_ERR_SERIALIZE;
  if (p->flags & PL_CLOSING)
    return p->end_status == TT_ERR_WORKER_INIT ? TT_ERR_WORKER_INIT
                                               : TT_ERR_CLOSED;
  if (p->opts.max_queue > 0 && p->stats.queued >= p->opts.max_queue)
    return TT_ERR_QUEUE_FULL;
  if (nfds > 0 && p->opts.workers.process.channel_options.lines)
    return UV_ENOTSUP;
  if (nfds > TT_FRAME_MAX_FDS) return UV_EINVAL;
  return 0;
}

int tt_pool_submit_fds(tt_pool_t *p, const void *payload, size_t len,
                       const int *fds, unsigned nfds, tt_task_cb cb,
                       void *arg) {
  int err;
  tt_task_t *t;
  if ((err = tt_pool_check_submit(p, len, nfds)) != 0) return err;
  t = malloc(sizeof *t + len);
  if (t == NULL) return UV_ENOMEM;
  memset(t, 0, sizeof *t);
  /* the task may wait, and be run again after a crash: it keeps its own
   * copies of the descriptors until it ends */
  if ((err = tt__dup_fds(fds, nfds, &t->fds)) != 0) {
    free(t);
    return err;
  }
  t->nfds = nfds;
  t->pool = p;
  t->cb = cb;
  t->arg = arg;
  t->len = len;
  if (len) memcpy(t->payload, payload, len);
  t->req.data = t;
  TAILQ_INSERT_TAIL(&p->queue, t, link);
  p->stats.queued++;
  p->stats.submitted++;
  dispatch(p);
  return 0;
}

static void maybe_end(tt_pool_t *p) {
  if (!(p->flags & PL_CLOSING) || (p->flags & PL_ENDED)) return;
  if (!TAILQ_EMPTY(&p->queue) || p->stats.running > 0) return;
  p->flags |= PL_ENDED;
  tt_supervisor_stop(&p->sup);
}

void tt_pool_drain(tt_pool_t *p) {
  p->flags |= PL_CLOSING;
  maybe_end(p);
}

void tt_pool_terminate(tt_pool_t *p) {
  p->flags |= PL_CLOSING;
  if (p->end_status == 0) p->end_status = TT_ERR_CLOSED;
  fail_queue(p, p->end_status);
  fail_running(p, p->end_status);
  maybe_end(p);
}

int tt_pool_give_up(tt_pool_t *p, const char *why) {
  if (p->flags & PL_SUP_CLOSED) return TT_ERR_CLOSED;
  return tt_supervisor_give_up(&p->sup, why);
}

void tt_pool_stats(const tt_pool_t *p, tt_pool_stats_t *out) {
  const tt_pool_worker_t *w;
  *out = p->stats;
  out->late += p->late_gone;
  TAILQ_FOREACH(w, &p->workers, link) out->late += w->rpc.stats.late_replies;
}

int tt_pool_send(tt_pool_t *p, unsigned id, const void *payload, size_t len) {
  return tt_pool_send_fds(p, id, payload, len, NULL, 0);
}

int tt_pool_check_send(tt_pool_t *p, unsigned id, size_t len,
                       unsigned nfds) {
  if (p->flags & PL_SUP_CLOSED) return TT_ERR_CLOSED;
  return tt_supervisor_check_send(&p->sup, id, TT_FRAME_MESSAGE, len, nfds);
}

int tt_pool_send_fds(tt_pool_t *p, unsigned id, const void *payload,
                     size_t len, const int *fds, unsigned nfds) {
  if (p->flags & PL_SUP_CLOSED) return TT_ERR_CLOSED;
  return tt_supervisor_send_fds(&p->sup, id, TT_FRAME_MESSAGE, 0, payload,
                                len, fds, nfds, 0, NULL, NULL);
}

unsigned tt_pool_size(const tt_pool_t *p) {
  return p->opts.workers.instances;
}

size_t tt_pool_max_message(const tt_pool_t *p) {
  return tt_channel_options_max_message(
      &p->opts.workers.process.channel_options);
}

int tt_pool_info(tt_pool_t *p, unsigned id, tt_worker_info_t *out) {
  if (p->flags & PL_SUP_CLOSED) return TT_ERR_CLOSED;
  return tt_supervisor_info(&p->sup, id, out);
}

static void maybe_freed(tt_pool_t *p) {
  if (!(p->flags & PL_FREEING) || (p->flags & PL_FREED)) return;
  if (!(p->flags & PL_SUP_CLOSED)) return;
  while (!TAILQ_EMPTY(&p->workers)) { /* abandoned: no exits were reported */
    tt_pool_worker_t *w = TAILQ_FIRST(&p->workers);
    TAILQ_REMOVE(&p->workers, w, link);
    worker_release(p, w);
  }
  if (p->pending_closes > 0) return;
  p->flags |= PL_FREED;
  if (p->close_cb) p->close_cb(p);
}

static void on_sup_closed(tt_supervisor_t *s) {
  tt_pool_t *p = pool_of(s);
  p->flags |= PL_SUP_CLOSED;
  maybe_freed(p);
}

static void close_pool(tt_pool_t *p, int abandon, void (*cb)(tt_pool_t *p)) {
  if (p->flags & PL_FREEING) { /* a graceful close may turn into abandon */
    if (abandon && !(p->flags & PL_SUP_CLOSED))
      tt_supervisor_abandon(&p->sup, on_sup_closed);
    return;
  }
  p->flags |= PL_FREEING;
  p->close_cb = cb;
  p->on_frame = NULL;
  p->on_error = NULL;
  p->on_give_up = NULL;
  p->on_stopped = NULL;
  tt_pool_terminate(p); /* every callback runs, with TT_ERR_CLOSED */
  if (abandon)
    tt_supervisor_abandon(&p->sup, on_sup_closed);
  else
    tt_supervisor_close(&p->sup, on_sup_closed);
}

void tt_pool_close(tt_pool_t *p, void (*cb)(tt_pool_t *p)) {
  close_pool(p, 0, cb);
}

void tt_pool_abandon(tt_pool_t *p, void (*cb)(tt_pool_t *p)) {
  close_pool(p, 1, cb);
}
