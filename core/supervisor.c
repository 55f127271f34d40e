/*
 * Supervisor: see tt_supervisor.h.
 *
 * Invariants:
 * - A slot has at most one `cur` worker and, during a reload or replace, one
 *   `next` candidate.  Every incarnation is on the supervisor's `all` list
 *   from its spawn until its memory is freed (replaced and exited ones
 *   included), which stop, abandon and the memory check walk.
 *   Every incarnation is counted in s->live from spawn until its memory is
 *   freed, and in s->alive until its exit was seen.
 * - An incarnation owns one timer, used by whichever watchdog its state
 *   needs: start timeout (STARTING), heartbeat (RUNNING), shutdown
 *   escalation (STOPPING), the bounded drain of its output after the exit.
 * - A message is in its slot's queue, or in a worker's channel (then the
 *   channel calls back exactly once), never both.  Every message's callback
 *   runs exactly once.
 * - s->pending_closes counts the supervisor's own uv handles (and message
 *   timers) not yet closed; the close callback runs when it and s->live are
 *   both 0.
 */
#include "tt_outbox.h"
#include "tt_peer.h"
#include "tt_supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tt_error.h"

enum {
  S_STARTED = 1u << 0,   /* first spawns done */
  S_STOPPING = 1u << 1,  /* nothing new starts */
  S_GAVE_UP = 1u << 2,
  S_STOPPED = 1u << 3,   /* on_stopped delivered */
  S_CLOSING = 1u << 4,
  S_CLOSED_CB = 1u << 5,
  S_ABANDONED = 1u << 6,
  S_LOGS_CLOSING = 1u << 7
};

enum {
  I_READY = 1u << 0,     /* reached RUNNING once */
  I_EXITED = 1u << 1,
  I_PING_OUT = 1u << 2,
  I_SENT_KILL = 1u << 3,
  I_ABANDONED = 1u << 4,
  I_RELOAD_OLD = 1u << 5, /* replaced by a reload step: its exit moves on */
  I_PCLOSE = 1u << 6,     /* tt_process_close() was called */
  I_PROMOTED = 1u << 7,   /* a replacement that took over while starting */
  I_WORKED = 1u << 8      /* tt_supervisor_mark_worked() */
};

/* A partial output line, waiting for its newline. */
typedef struct {
  char *buf;
  size_t len, cap;
} tt_line_t;

struct tt_incarnation_s {
  tt_process_t p;
  tt_supervisor_t *s;
  tt_incarnation_t *all_next, *all_prev;
  uint64_t serial;
  tt_slot_t *slot;
  tt_worker_state_t state;
  tt_exit_reason_t stop_reason; /* NONE unless we stop it */
  unsigned flags;
  int parts; /* of process and timer, not yet closed */
  int phase; /* while stopping: 1 message sent, 2 SIGTERM sent, 3 SIGKILL */
  uint32_t ping_id;
  uint64_t started_at;
  int64_t heap;
  uv_timer_t timer;
  tt_line_t lines[3];
};

struct tt_slot_s {
  tt_supervisor_t *s;
  unsigned id;
  tt_incarnation_t *cur, *next;
  int keep_old; /* the pending `next` replaces without stopping `cur` */
  unsigned restarts;
  unsigned failures; /* since the last healthy run: the backoff attempt */
  int restart_pending;
  int restart_counted; /* the pending restart counts toward max_restarts */
  int dead; /* will never run again */
  tt_exit_reason_t restart_reason;
  uv_timer_t timer;
  tt_outbox_t outbox; /* the owner's frames, for whichever worker runs */
  tt_exit_reason_t last_reason;
  int64_t last_status;
  int last_signal;
  char prefix[24];
  size_t prefix_len;
};

const char *tt_worker_state_name(tt_worker_state_t st) {
  static const char *const names[] = {"starting", "running", "stopping",
                                      "down"};
  return (unsigned)st <= TT_WORKER_DOWN ? names[st] : "unknown";
}

void tt_supervisor_options_init(tt_supervisor_options_t *o) {
  memset(o, 0, sizeof *o);
  o->instances = 1;
  o->restart = TT_RESTART_ALWAYS;
  o->max_restarts = TT_SUP_DEFAULT_MAX_RESTARTS;
  o->within_ms = TT_SUP_DEFAULT_WITHIN_MS;
  tt_backoff_init(&o->backoff);
  o->min_uptime_ms = TT_SUP_DEFAULT_MIN_UPTIME_MS;
  o->memory_interval_ms = TT_SUP_DEFAULT_MEMORY_INTERVAL_MS;
  o->shutdown_timeout_ms = TT_SUP_DEFAULT_SHUTDOWN_TIMEOUT_MS;
  o->kill_timeout_ms = TT_SUP_DEFAULT_KILL_TIMEOUT_MS;
  o->queue_limit = TT_SUP_DEFAULT_QUEUE_LIMIT;
}

static void spawn_worker(tt_slot_t *slot, int as_next);
static void stop_worker(tt_incarnation_t *w, tt_exit_reason_t why, int polite);
static void check_stopped(tt_supervisor_t *s);
static void maybe_closed(tt_supervisor_t *s);
static void reload_step(tt_supervisor_t *s);
static void reload_done(tt_supervisor_t *s, int status);

/* Fresh, not the iteration's start: deadlines and uptimes count from the
 * moment they are taken. */
static uint64_t now(tt_supervisor_t *s) {
  uv_update_time(s->loop);
  return uv_now(s->loop);
}

static void all_add(tt_supervisor_t *s, tt_incarnation_t *w) {
  w->all_prev = NULL;
  w->all_next = s->all;
  if (s->all) s->all->all_prev = w;
  s->all = w;
}

static void all_remove(tt_supervisor_t *s, tt_incarnation_t *w) {
  if (w->all_prev) w->all_prev->all_next = w->all_next;
  else s->all = w->all_next;
  if (w->all_next) w->all_next->all_prev = w->all_prev;
  w->all_next = w->all_prev = NULL;
}

static tt_incarnation_t *find_serial(tt_supervisor_t *s, uint64_t serial) {
  for (tt_incarnation_t *w = s->all; w != NULL; w = w->all_next)
    if (w->serial == serial) return w;
  return NULL;
}

/* ---- handles ------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h) {
  tt_supervisor_t *s = h->data;
  s->pending_closes--;
  maybe_closed(s);
}

static void close_handle(tt_supervisor_t *s, uv_handle_t *h) {
  if (uv_is_closing(h)) return;
  h->data = s;
  s->pending_closes++;
  uv_close(h, on_handle_closed);
}

static void on_outbox_closed(tt_outbox_t *ob) {
  tt_supervisor_t *s = ob->data;
  s->pending_closes--;
  maybe_closed(s);
}

static void on_log_closed(tt_logsink_t *ls) {
  tt_supervisor_t *s = ls->data;
  s->pending_closes--;
  maybe_closed(s);
}

static void close_logs(tt_supervisor_t *s) {
  if (s->flags & S_LOGS_CLOSING) return;
  s->flags |= S_LOGS_CLOSING;
  for (int i = 0; i < 3; i++) {
    if (!s->log_open[i]) continue;
    s->log_open[i] = 0;
    s->pending_closes++;
    tt_logsink_close(&s->logs[i], on_log_closed);
  }
}

static void maybe_closed(tt_supervisor_t *s) {
  if (!(s->flags & S_CLOSING) || (s->flags & S_CLOSED_CB)) return;
  if (s->live > 0 || s->pending_closes > 0 || !(s->flags & S_STOPPED))
    return;
  if (!(s->flags & S_LOGS_CLOSING)) { /* last: the workers' output is in */
    close_logs(s);
    if (s->pending_closes > 0) return;
  }
  s->flags |= S_CLOSED_CB;
  free(s->slots);
  s->slots = NULL;
  free(s->env);
  s->env = NULL;
  free(s->shutdown_message);
  s->shutdown_message = NULL;
  tt_policy_free(&s->policy);
  if (s->close_cb) s->close_cb(s);
}

/* ---- messages ---------------------------------------------------------- */

int tt_supervisor_send(tt_supervisor_t *s, unsigned id, unsigned kind,
                       uint32_t frame_id, const void *payload, size_t len,
                       uint64_t timeout_ms, tt_channel_send_cb cb, void *arg) {
  tt_slot_t *slot;
  if (id < 1 || id > s->opts.instances) return UV_EINVAL;
  if (tt_channel_options_check_size(&s->opts.process.channel_options, kind,
                                    len) != 0)
    return TT_ERR_SERIALIZE;
  slot = &s->slots[id - 1];
  if ((s->flags & S_STOPPING) || slot->dead) return TT_ERR_CLOSED;
  return tt_outbox_send(&slot->outbox, kind, frame_id, payload, len,
                        timeout_ms, cb, arg);
}

unsigned tt_supervisor_instances(const tt_supervisor_t *s) {
  return s->opts.instances;
}

size_t tt_supervisor_max_message(const tt_supervisor_t *s) {
  return tt_channel_options_max_message(&s->opts.process.channel_options);
}

/* ---- logs --------------------------------------------------------------- */

static void on_log_trouble(tt_logsink_t *ls, int err, uint64_t dropped) {
  tt_supervisor_t *s = ls->data;
  char why[160];
  if (s->on_error == NULL) return;
  if (err != 0) {
    snprintf(why, sizeof why, "writing the log %s", ls->path);
    s->on_error(s, 0, err, why);
  } else {
    snprintf(why, sizeof why,
             "the log %s is not being read: dropping lines (%llu so far)",
             ls->path, (unsigned long long)dropped);
    s->on_error(s, 0, UV_EAGAIN, why);
  }
}

static int line_append(tt_line_t *l, const char *p, size_t n) {
  if (l->len + n > l->cap) {
    size_t cap = l->cap ? l->cap : 256;
    char *nb;
    while (cap < l->len + n) cap *= 2;
    if ((nb = realloc(l->buf, cap)) == NULL) return UV_ENOMEM;
    l->buf = nb;
    l->cap = cap;
  }
  memcpy(l->buf + l->len, p, n);
  l->len += n;
  return 0;
}

/* Each complete line goes out as prefix + line in one write, so lines of
 * different workers never interleave within a line. */
static void log_output(tt_incarnation_t *w, int fd, const char *buf,
                       ssize_t n) {
  tt_supervisor_t *s = w->s;
  tt_slot_t *slot = w->slot;
  tt_line_t *l = &w->lines[fd];
  tt_line_t out = {NULL, 0, 0};
  int err = 0;
  if (n > 0) {
    const char *p = buf, *end = buf + n;
    while (p < end && err == 0) {
      const char *nl = memchr(p, '\n', (size_t)(end - p));
      size_t k = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
      err = line_append(l, p, k);
      p += k;
      if (err == 0 && (nl || l->len >= TT_LOG_MAX_LINE)) {
        if (!nl) err = line_append(l, "\n", 1);
        if (err == 0) err = line_append(&out, slot->prefix, slot->prefix_len);
        if (err == 0) err = line_append(&out, l->buf, l->len);
        l->len = 0;
      }
    }
  } else if (l->len > 0) { /* EOF: the last line had no newline */
    err = line_append(&out, slot->prefix, slot->prefix_len);
    if (err == 0) err = line_append(&out, l->buf, l->len);
    if (err == 0) err = line_append(&out, "\n", 1);
    l->len = 0;
  }
  if (err == 0 && out.len > 0 && s->log_open[fd])
    tt_logsink_write(&s->logs[fd], out.buf, out.len);
  free(out.buf);
  if (n <= 0) {
    free(l->buf);
    memset(l, 0, sizeof *l);
  }
  if (err != 0 && s->on_error)
    s->on_error(s, slot->id, err, fd == 1 ? "writing the stdout log"
                                          : "writing the stderr log");
}

int tt_supervisor_reopen_logs(tt_supervisor_t *s) {
  int first_err = 0;
  for (int i = 1; i < 3; i++) {
    int err;
    if (!s->log_open[i]) continue;
    err = tt_logsink_reopen(&s->logs[i]); /* keeps the old file on error */
    if (err != 0 && first_err == 0) first_err = err;
  }
  return first_err;
}

/* ---- memory ------------------------------------------------------------- */

/* Resident set size of `pid` in bytes, 0 when unknown. */
static uint64_t rss_of(int pid) {
  char path[64], buf[128];
  unsigned long long size, resident;
  ssize_t n;
  int fd;
  snprintf(path, sizeof path, "/proc/%d/statm", pid);
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return 0;
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  if (sscanf(buf, "%llu %llu", &size, &resident) != 2) return 0;
  return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void check_memory(tt_incarnation_t *w) {
  uint64_t rss;
  if (w == NULL || (w->flags & I_EXITED) || w->state == TT_WORKER_STOPPING)
    return;
  rss = rss_of(w->p.pid);
  if (rss > w->s->opts.max_memory) stop_worker(w, TT_EXIT_MEMORY, 1);
}

static void on_memory_timer(uv_timer_t *t) {
  tt_supervisor_t *s = t->data;
  tt_incarnation_t *w = s->all, *next;
  for (; w != NULL; w = next) {
    next = w->all_next; /* a stop may end it synchronously (spawn failed) */
    check_memory(w);
  }
}

/* ---- watchdogs and escalation ------------------------------------------- */

static void send_ping(tt_incarnation_t *w);

static void on_worker_timer(uv_timer_t *t) {
  tt_incarnation_t *w = t->data;
  tt_supervisor_t *s = w->s;
  /* A ready frame or a pong may be waiting in the socket (we were stopped
   * or busy past the deadline): read it before calling the worker dead. */
  if ((w->state == TT_WORKER_STARTING ||
       (w->state == TT_WORKER_RUNNING && (w->flags & I_PING_OUT))) &&
      w->p.channel != NULL && !(w->flags & I_EXITED)) {
    tt_worker_state_t before = w->state;
    tt_channel_read_now(w->p.channel);
    if (w->state != before || (w->flags & I_EXITED) ||
        (before == TT_WORKER_RUNNING && !(w->flags & I_PING_OUT)))
      return;
  }
  switch (w->state) {
  case TT_WORKER_STARTING: /* start_timeout */
    stop_worker(w, TT_EXIT_UNRESPONSIVE, 0);
    break;
  case TT_WORKER_RUNNING:
    if (w->flags & I_PING_OUT)
      stop_worker(w, TT_EXIT_UNRESPONSIVE, 0);
    else
      send_ping(w);
    break;
  case TT_WORKER_STOPPING:
    if (w->phase < 2) {
      w->phase = 2;
      tt_process_kill(&w->p, SIGTERM);
      tt_process_kill(&w->p, SIGCONT);
      tt__timer_start(&w->timer, on_worker_timer, s->opts.kill_timeout_ms, 0);
    } else if (w->phase == 2) {
      w->phase = 3;
      w->flags |= I_SENT_KILL;
      tt_process_kill(&w->p, SIGKILL);
    }
    break;
  default:
    break;
  }
}

static void send_ping(tt_incarnation_t *w) {
  tt_supervisor_t *s = w->s;
  if (++w->ping_id == 0) w->ping_id = 1; /* id 0 is the ready frame */
  /* A channel that is gone counts as a missing answer: a worker that closed
   * it but runs on is not exempt from the watch. */
  if (w->p.channel != NULL)
    tt_channel_send(w->p.channel, TT_FRAME_PING, w->ping_id, NULL, 0, NULL,
                    NULL);
  w->flags |= I_PING_OUT;
  tt__timer_start(&w->timer, on_worker_timer, s->opts.heartbeat_timeout_ms, 0);
}

/* polite: begin with the shutdown message, if there is one. */
static void stop_worker(tt_incarnation_t *w, tt_exit_reason_t why,
                        int polite) {
  tt_supervisor_t *s = w->s;
  if (w->state == TT_WORKER_STOPPING || (w->flags & I_EXITED)) return;
  w->state = TT_WORKER_STOPPING;
  w->stop_reason = why;
  if (w == w->slot->cur) tt_outbox_target(&w->slot->outbox, NULL);
  w->flags &= ~I_PING_OUT;
  uv_timer_stop(&w->timer);
  if (polite && s->shutdown_message != NULL && w->p.channel != NULL &&
      tt_channel_is_connected(w->p.channel) &&
      tt_channel_send(w->p.channel, TT_FRAME_MESSAGE, 0, s->shutdown_message,
                      s->opts.shutdown_message_len, NULL, NULL) >= 0) {
    w->phase = 1;
    tt__timer_start(&w->timer, on_worker_timer, s->opts.shutdown_timeout_ms,
                   0);
  } else {
    w->phase = 1;
    on_worker_timer(&w->timer); /* straight to SIGTERM */
  }
}

static void became_running(tt_incarnation_t *w) {
  tt_supervisor_t *s = w->s;
  tt_slot_t *slot = w->slot;
  w->state = TT_WORKER_RUNNING;
  w->flags |= I_READY;
  uv_timer_stop(&w->timer);
  if (s->opts.heartbeat_interval_ms > 0)
    tt__timer_start(&w->timer, on_worker_timer, s->opts.heartbeat_interval_ms,
                   0);
  if (w == slot->next) { /* a replacement: the old one goes */
    tt_incarnation_t *old = slot->cur;
    slot->cur = w;
    slot->next = NULL;
    if (old != NULL && slot->keep_old) {
      old = NULL; /* runs on, no longer the slot's, until its owner stops it */
    } else if (old != NULL) {
      old->flags |= I_RELOAD_OLD;
      stop_worker(old, TT_EXIT_RELOAD, 1);
      if (old->flags & I_EXITED) old = NULL;
    }
    if (old == NULL && s->reload_next == slot->id) {
      s->reload_next++;
      reload_step(s);
    }
  } else if ((w->flags & I_PROMOTED) && s->reload_next == slot->id) {
    /* the reload's new worker, up after the old one died meanwhile */
    s->reload_next++;
    reload_step(s);
  }
  if (w == slot->cur) tt_outbox_target(&slot->outbox, w->p.channel);
  if (s->on_start) s->on_start(s, slot->id, w->serial);
}

/* ---- frames ------------------------------------------------------------- */

static void on_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload) {
  tt_incarnation_t *w = ch->data;
  tt_supervisor_t *s = w->s;
  if (h->kind == TT_FRAME_PONG) {
    uint64_t heap;
    if (tt_peer_pong_heap(h, payload, &heap) == 0) w->heap = (int64_t)heap;
    if (h->id == 0) {
      if (w->state == TT_WORKER_STARTING) became_running(w);
    } else if (h->id == w->ping_id && (w->flags & I_PING_OUT) &&
               w->state == TT_WORKER_RUNNING) {
      w->flags &= ~I_PING_OUT;
      tt__timer_start(&w->timer, on_worker_timer,
                     s->opts.heartbeat_interval_ms, 0);
    }
    return;
  }
  if (h->kind == TT_FRAME_PING) return; /* workers do not ping us */
  if (s->on_frame) s->on_frame(s, w->slot->id, w->serial, ch, h, payload);
}

static void on_channel_error(tt_channel_t *ch, int err, const char *why) {
  tt_incarnation_t *w = ch->data;
  /* Frames lost with a dying worker: ours (pings, the shutdown message)
   * do not matter, and the owner's have callbacks that tell. */
  if (err == TT_ERR_IPC_CHANNEL_CLOSED) return;
  if (w->s->on_error) w->s->on_error(w->s, w->slot->id, err, why);
}

/* ---- lifecycle ---------------------------------------------------------- */

/* An incarnation is freed once its process and its timer are closed. */
static void part_closed(tt_incarnation_t *w) {
  tt_supervisor_t *s = w->s;
  if (--w->parts > 0) return;
  all_remove(s, w);
  for (int i = 0; i < 3; i++) free(w->lines[i].buf);
  free(w);
  s->live--;
  maybe_closed(s);
}

static void on_timer_closed(uv_handle_t *h) { part_closed(h->data); }

static void close_timer(tt_incarnation_t *w) {
  if (uv_is_closing((uv_handle_t *)&w->timer)) return;
  w->timer.data = w;
  uv_close((uv_handle_t *)&w->timer, on_timer_closed);
}

static void on_process_closed(tt_process_t *p) {
  tt_incarnation_t *w = p->data;
  close_timer(w);
  part_closed(w);
}

static void close_process(tt_incarnation_t *w) {
  if (w->flags & I_PCLOSE) return;
  w->flags |= I_PCLOSE;
  tt_process_close(&w->p, on_process_closed);
}

static void give_up(tt_supervisor_t *s, const char *why) {
  if (s->flags & (S_GAVE_UP | S_STOPPING)) return;
  s->flags |= S_GAVE_UP;
  if (s->on_give_up) s->on_give_up(s, why);
  tt_supervisor_stop(s);
}

int tt_supervisor_hurry(tt_supervisor_t *s) {
  if (!(s->flags & S_STOPPING)) return UV_EINVAL;
  for (tt_incarnation_t *w = s->all; w != NULL; w = w->all_next) {
    if (w->flags & I_EXITED) continue;
    w->flags |= I_SENT_KILL;
    w->phase = 3;
    tt_process_kill(&w->p, SIGKILL);
  }
  return 0;
}

int tt_supervisor_give_up(tt_supervisor_t *s, const char *why) {
  if (s->flags & (S_GAVE_UP | S_STOPPING)) return TT_ERR_CLOSED;
  give_up(s, why);
  return 0;
}

static void slot_down(tt_slot_t *slot);

/* The intensity window is charged here, when a restart happens, not when
 * it is scheduled: a give-up must not cancel restarts it already counted
 * (several workers crashing at once would give up with none done). */
static void on_restart_timer(uv_timer_t *t) {
  tt_slot_t *slot = t->data;
  tt_supervisor_t *s = slot->s;
  slot->restart_pending = 0;
  if (s->flags & S_STOPPING) return;
  if (slot->restart_counted && !tt_policy_charge(&s->policy, now(s))) {
    char why[128];
    snprintf(why, sizeof why,
             "more than %u restarts within %llu ms (worker %u: %s)",
             s->opts.max_restarts, (unsigned long long)s->opts.within_ms,
             slot->id, tt_exit_reason_name(slot->restart_reason));
    slot->restart_reason = TT_EXIT_NONE;
    slot_down(slot);
    give_up(s, why);
    return;
  }
  spawn_worker(slot, 0);
}

static void slot_down(tt_slot_t *slot) {
  slot->dead = 1;
  tt_outbox_shut(&slot->outbox, TT_ERR_CLOSED);
}

/* The slot's current worker is gone (exited or never spawned). */
static void after_exit(tt_slot_t *slot, tt_incarnation_t *w,
                       tt_exit_reason_t r) {
  tt_supervisor_t *s = slot->s;
  uint64_t delay = 0;
  slot->cur = NULL;
  tt_outbox_target(&slot->outbox, NULL);
  if (slot->next != NULL) {
    /* It died while a reload was starting its successor: that one takes
     * its place (and finishes the reload's step once it is running). */
    slot->cur = slot->next;
    slot->next = NULL;
    slot->cur->flags |= I_PROMOTED;
    return;
  }
  if (tt_policy_healthy(&s->policy, (w->flags & I_READY) != 0,
                        now(s) - w->started_at))
    slot->failures = 0;
  if (s->flags & S_STOPPING) {
    check_stopped(s);
    return;
  }
  if (!tt_policy_restarts(&s->policy, r)) {
    slot_down(slot);
    check_stopped(s);
    return;
  }
  slot->restart_counted =
      r != TT_EXIT_RELOAD &&
      !(s->opts.exempt_worked && (w->flags & I_READY) &&
        ((w->flags & I_WORKED) || w->p.term_signal != 0));
  if (slot->restart_counted) /* (tt_supervisor_restart(): at once) */
    delay = tt_policy_delay(&s->policy, ++slot->failures);
  slot->restart_reason = r;
  slot->restart_pending = 1;
  tt__timer_start(&slot->timer, on_restart_timer, delay, 0);
}

static tt_exit_reason_t classify(tt_incarnation_t *w) {
  if (w->stop_reason != TT_EXIT_NONE) return w->stop_reason;
  if (w->p.term_signal == SIGKILL && !(w->flags & I_SENT_KILL))
    return TT_EXIT_KILLED;
  if (w->p.term_signal != 0) return TT_EXIT_SIGNAL;
  return w->p.exit_status == 0 ? TT_EXIT_EXIT : TT_EXIT_CRASH;
}

static void worker_gone(tt_incarnation_t *w, tt_exit_reason_t r) {
  tt_slot_t *slot = w->slot;
  tt_supervisor_t *s = w->s;
  w->state = TT_WORKER_DOWN;
  if (w == slot->next) { /* a reload's new worker never got ready */
    slot->next = NULL;
    reload_done(s, TT_ERR_WORKER_INIT);
    check_stopped(s);
  } else if (w->flags & I_RELOAD_OLD) {
    if (s->reload_next == slot->id) {
      s->reload_next++;
      reload_step(s);
    }
    check_stopped(s);
  } else if (w == slot->cur) {
    after_exit(slot, w, r);
  } else {
    check_stopped(s);
  }
}

static void on_drain_timer(uv_timer_t *t) { close_process(t->data); }

static void on_worker_exit(tt_process_t *p, int64_t status, int sig) {
  tt_incarnation_t *w = p->data;
  tt_slot_t *slot = w->slot;
  tt_supervisor_t *s = w->s;
  tt_exit_reason_t r = classify(w);
  w->flags |= I_EXITED;
  s->alive--;
  uv_timer_stop(&w->timer);
  tt__timer_start(&w->timer, on_drain_timer, TT_DRAIN_MS, 0);
  slot->last_reason = r;
  slot->last_status = status;
  slot->last_signal = sig;
  if (s->on_exit) s->on_exit(s, slot->id, w->serial, status, sig, r);
  worker_gone(w, r);
}

/* Output still in the pipes after the exit is logged before the pipes
 * close (or TT_DRAIN_MS passed): only then is the worker done with. */
static void on_worker_closed(tt_process_t *p) { close_process(p->data); }

static void on_worker_disconnect(tt_process_t *p) {
  tt_incarnation_t *w = p->data;
  tt_supervisor_t *s = w->s;
  if ((w->flags & I_EXITED) || w->state == TT_WORKER_STOPPING) return;
  if (s->on_disconnect) s->on_disconnect(s, w->slot->id, w->serial);
}

static void on_worker_data(tt_process_t *p, int fd, const char *buf,
                           ssize_t n) {
  tt_incarnation_t *w = p->data;
  if (fd == 1 || fd == 2) log_output(w, fd, buf, n);
}

static void spawn_worker(tt_slot_t *slot, int as_next) {
  tt_supervisor_t *s = slot->s;
  tt_process_options_t po = s->opts.process;
  tt_incarnation_t *w;
  char idvar[40];
  int err;

  w = calloc(1, sizeof *w);
  if (w == NULL) {
    err = UV_ENOMEM;
    goto failed;
  }
  w->s = s;
  w->slot = slot;
  w->heap = -1;
  uv_update_time(s->loop); /* spawns take time: start timeouts count from now */
  w->started_at = now(s);
  snprintf(idvar, sizeof idvar, "TETHER_WORKER_ID=%u", slot->id);
  s->env[s->env_len] = idvar;
  s->env[s->env_len + 1] = NULL;
  po.env = s->env;
  for (int i = 1; i < 3; i++)
    if (s->log_open[i]) po.stdio[i] = TT_STDIO_PIPE;
  err = tt_process_spawn(s->loop, &w->p, &po);
  s->env[s->env_len] = NULL;
  uv_timer_init(s->loop, &w->timer);
  w->timer.data = w;
  w->p.data = w;
  w->parts = 2;
  w->serial = ++s->serial;
  s->live++;
  all_add(s, w);
  if (err != 0) {
    w->flags |= I_EXITED;
    close_process(w);
    goto failed;
  }
  s->alive++;
  w->p.on_exit = on_worker_exit;
  w->p.on_disconnect = on_worker_disconnect;
  w->p.on_data = on_worker_data;
  w->p.on_closed = on_worker_closed;
  if (w->p.channel != NULL) {
    w->p.channel->data = w;
    w->p.channel->on_frame = on_frame;
    w->p.channel->on_error = on_channel_error;
  }
  if (as_next) {
    slot->next = w;
  } else {
    slot->cur = w;
    slot->keep_old = 0;
    tt_outbox_target(&slot->outbox, NULL); /* until it is running */
  }
  if (slot->restart_reason != TT_EXIT_NONE || as_next) {
    slot->restarts++;
    if (s->on_restart)
      s->on_restart(s, slot->id,
                    as_next ? (slot->keep_old ? TT_EXIT_RETIRED
                                              : TT_EXIT_RELOAD)
                            : slot->restart_reason,
                    w->p.pid);
    slot->restart_reason = TT_EXIT_NONE;
  }
  if (w->state == TT_WORKER_STOPPING || (w->flags & I_EXITED)) return;
  if (s->opts.wait_ready && w->p.channel != NULL) {
    w->state = TT_WORKER_STARTING;
    if (s->opts.start_timeout_ms > 0)
      tt__timer_start(&w->timer, on_worker_timer, s->opts.start_timeout_ms, 0);
  } else {
    became_running(w);
  }
  return;

failed:
  if (s->on_error) s->on_error(s, slot->id, err, "spawn");
  if (as_next) {
    if (s->reload_next == slot->id) reload_done(s, err);
    return;
  }
  slot->last_reason = TT_EXIT_SPAWN;
  slot->last_status = err;
  slot->last_signal = 0;
  if (w != NULL) {
    /* counted as a worker that ran and ended at once */
    w->state = TT_WORKER_DOWN;
    after_exit(slot, w, TT_EXIT_SPAWN);
  } else {
    tt_incarnation_t none;
    memset(&none, 0, sizeof none);
    none.s = s;
    none.slot = slot;
    after_exit(slot, &none, TT_EXIT_SPAWN);
  }
}

static void on_start_timer(uv_timer_t *t) {
  tt_supervisor_t *s = t->data;
  unsigned n = 0;
  s->flags |= S_STARTED;
  while (s->start_next < s->opts.instances && n++ < TT_SPAWNS_PER_TICK &&
         !(s->flags & S_STOPPING))
    spawn_worker(&s->slots[s->start_next++], 0);
  if (s->start_next < s->opts.instances && !(s->flags & S_STOPPING))
    tt__timer_start(&s->start_timer, on_start_timer, 0, 0);
  else
    s->start_next = s->opts.instances;
  check_stopped(s);
}

/* ---- reload ------------------------------------------------------------- */

static void reload_done(tt_supervisor_t *s, int status) {
  if (s->reload_next == 0) return;
  s->reload_next = 0;
  if (s->on_reload) s->on_reload(s, status);
}

static void reload_step(tt_supervisor_t *s) {
  while (s->reload_next != 0 && s->reload_next <= s->opts.instances) {
    tt_slot_t *slot = &s->slots[s->reload_next - 1];
    if (slot->cur != NULL && slot->cur->state == TT_WORKER_RUNNING &&
        slot->next == NULL) {
      slot->keep_old = 0;
      spawn_worker(slot, 1); /* continues from became_running/worker_gone */
      return;
    }
    /* down, restarting or starting: it comes up with the new code anyway */
    s->reload_next++;
  }
  reload_done(s, 0);
}

int tt_supervisor_reload(tt_supervisor_t *s) {
  if (s->flags & S_STOPPING) return TT_ERR_CLOSED;
  if (s->reload_next != 0) return UV_EBUSY;
  s->reload_next = 1;
  reload_step(s);
  return 0;
}

int tt_supervisor_restart(tt_supervisor_t *s, unsigned id) {
  tt_slot_t *slot;
  if (id < 1 || id > s->opts.instances) return UV_EINVAL;
  if (s->flags & S_STOPPING) return TT_ERR_CLOSED;
  slot = &s->slots[id - 1];
  if (slot->cur == NULL || slot->cur->state == TT_WORKER_STOPPING)
    return UV_ESRCH;
  /* a worker still starting is not restarted again: a "restart" handler
   * that asks for a restart would otherwise loop for ever (restarts asked
   * for are not counted toward max_restarts) */
  if (slot->cur->state == TT_WORKER_STARTING || slot->next != NULL)
    return UV_EBUSY;
  stop_worker(slot->cur, TT_EXIT_RELOAD, 1);
  return 0;
}

/* ---- stop --------------------------------------------------------------- */

static void check_stopped(tt_supervisor_t *s) {
  if (s->flags & S_STOPPED) return;
  if (!(s->flags & S_STARTED) && !(s->flags & S_STOPPING)) return;
  if (s->alive > 0) return;
  if (s->start_next < s->opts.instances && !(s->flags & S_STOPPING)) return;
  for (unsigned i = 0; i < s->opts.instances; i++)
    if (s->slots[i].restart_pending) return;
  s->flags |= S_STOPPING | S_STOPPED;
  reload_done(s, TT_ERR_CLOSED);
  for (unsigned i = 0; i < s->opts.instances; i++) slot_down(&s->slots[i]);
  uv_timer_stop(&s->memory_timer);
  uv_timer_stop(&s->start_timer);
  if (s->on_stopped) s->on_stopped(s);
  maybe_closed(s);
}

void tt_supervisor_stop(tt_supervisor_t *s) {
  if (s->flags & S_STOPPING) return;
  s->flags |= S_STOPPING;
  uv_timer_stop(&s->start_timer);
  uv_timer_stop(&s->memory_timer);
  reload_done(s, TT_ERR_CLOSED);
  for (unsigned i = 0; i < s->opts.instances; i++) {
    tt_slot_t *slot = &s->slots[i];
    uv_timer_stop(&slot->timer);
    slot->restart_pending = 0;
    slot_down(slot);
  }
  for (tt_incarnation_t *w = s->all, *next; w != NULL; w = next) {
    next = w->all_next;
    stop_worker(w, TT_EXIT_STOP, 1);
  }
  check_stopped(s);
}

/* The loop is going away: close everything of `w` now (whatever is still
 * open when the binding walks the loop would be closed without our
 * callbacks).  A live worker gets SIGTERM: nobody will reap it, but it must
 * not run on. */
static void abandon_worker(tt_incarnation_t *w) {
  if (w->flags & I_ABANDONED) return;
  w->flags |= I_ABANDONED;
  uv_timer_stop(&w->timer);
  close_timer(w);
  if (!(w->flags & I_EXITED)) {
    tt_process_kill(&w->p, SIGTERM);
    tt_process_kill(&w->p, SIGCONT);
    w->flags |= I_EXITED;
    w->s->alive--;
  }
  if (!(w->flags & I_PCLOSE)) {
    w->flags |= I_PCLOSE;
    tt_process_abandon(&w->p, on_process_closed);
  }
}

static void abandon_all(tt_supervisor_t *s) {
  if (s->flags & S_ABANDONED) return;
  s->flags |= S_ABANDONED;
  /* now, while the loop is still ours: the owner closes what is left */
  close_logs(s);
  for (tt_incarnation_t *w = s->all, *next; w != NULL; w = next) {
    next = w->all_next;
    abandon_worker(w);
  }
  check_stopped(s);
  maybe_closed(s);
}

static void close_supervisor(tt_supervisor_t *s, int abandon,
                             void (*cb)(tt_supervisor_t *s)) {
  if (s->flags & S_CLOSING) { /* a graceful close may turn into abandon */
    if (abandon) abandon_all(s);
    return;
  }
  s->flags |= S_CLOSING;
  s->close_cb = cb;
  s->on_start = NULL;
  s->on_exit = NULL;
  s->on_restart = NULL;
  s->on_give_up = NULL;
  s->on_frame = NULL;
  s->on_disconnect = NULL;
  s->on_error = NULL;
  s->on_reload = NULL;
  s->on_stopped = NULL;
  /* Closing first keeps the memory until these handles are closed, however
   * synchronously the stop below completes. */
  close_handle(s, (uv_handle_t *)&s->memory_timer);
  close_handle(s, (uv_handle_t *)&s->start_timer);
  for (unsigned i = 0; i < s->opts.instances; i++) {
    close_handle(s, (uv_handle_t *)&s->slots[i].timer);
    s->slots[i].outbox.data = s;
    s->pending_closes++;
    tt_outbox_close(&s->slots[i].outbox, on_outbox_closed);
  }
  tt_supervisor_stop(s);
  if (abandon) abandon_all(s);
  maybe_closed(s);
}

void tt_supervisor_close(tt_supervisor_t *s, void (*cb)(tt_supervisor_t *s)) {
  close_supervisor(s, 0, cb);
}

void tt_supervisor_abandon(tt_supervisor_t *s,
                           void (*cb)(tt_supervisor_t *s)) {
  close_supervisor(s, 1, cb);
}

int tt_supervisor_replace(tt_supervisor_t *s, unsigned id, int keep_old) {
  tt_slot_t *slot;
  if (id < 1 || id > s->opts.instances) return UV_EINVAL;
  if (s->flags & S_STOPPING) return TT_ERR_CLOSED;
  slot = &s->slots[id - 1];
  if (slot->next != NULL || s->reload_next == id) return UV_EBUSY;
  if (slot->cur == NULL || slot->cur->state != TT_WORKER_RUNNING)
    return UV_ESRCH;
  slot->keep_old = keep_old;
  spawn_worker(slot, 1);
  return 0;
}

int tt_supervisor_stop_worker(tt_supervisor_t *s, uint64_t serial,
                              tt_exit_reason_t why, int polite) {
  tt_incarnation_t *w = find_serial(s, serial);
  if (w == NULL) return UV_ESRCH;
  stop_worker(w, why, polite);
  return 0;
}

int tt_supervisor_kill_worker(tt_supervisor_t *s, uint64_t serial,
                              int signum) {
  tt_incarnation_t *w = find_serial(s, serial);
  if (w == NULL) return UV_ESRCH;
  if (signum == SIGKILL) w->flags |= I_SENT_KILL;
  return tt_process_kill(&w->p, signum);
}

tt_channel_t *tt_supervisor_worker_channel(tt_supervisor_t *s,
                                           uint64_t serial) {
  tt_incarnation_t *w = find_serial(s, serial);
  return w && !(w->flags & I_EXITED) ? w->p.channel : NULL;
}

void tt_supervisor_mark_worked(tt_supervisor_t *s, uint64_t serial) {
  tt_incarnation_t *w = find_serial(s, serial);
  if (w != NULL) w->flags |= I_WORKED;
}

int tt_supervisor_worker_pid(tt_supervisor_t *s, uint64_t serial) {
  tt_incarnation_t *w = find_serial(s, serial);
  return w ? w->p.pid : 0;
}

uint64_t tt_supervisor_worker_rss(tt_supervisor_t *s, uint64_t serial) {
  tt_incarnation_t *w = find_serial(s, serial);
  return w ? rss_of(w->p.pid) : 0;
}

/* ---- queries ------------------------------------------------------------ */

int tt_supervisor_kill(tt_supervisor_t *s, unsigned id, int signum) {
  tt_slot_t *slot;
  if (id < 1 || id > s->opts.instances) return UV_EINVAL;
  slot = &s->slots[id - 1];
  if (slot->cur == NULL) return UV_ESRCH;
  if (signum == SIGKILL) slot->cur->flags |= I_SENT_KILL; /* not the OOM killer */
  return tt_process_kill(&slot->cur->p, signum);
}

int tt_supervisor_info(tt_supervisor_t *s, unsigned id, tt_worker_info_t *o) {
  tt_slot_t *slot;
  tt_incarnation_t *w;
  if (id < 1 || id > s->opts.instances || s->slots == NULL) return UV_EINVAL;
  slot = &s->slots[id - 1];
  w = slot->cur;
  memset(o, 0, sizeof *o);
  o->restarts = slot->restarts;
  o->queued = tt_outbox_queued(&slot->outbox);
  o->last_reason = slot->last_reason;
  o->last_status = slot->last_status;
  o->last_signal = slot->last_signal;
  o->heap = -1;
  if (w == NULL || (w->flags & I_EXITED)) {
    o->state = (slot->restart_pending || slot->id > s->start_next) &&
                       !(s->flags & S_STOPPING)
                   ? TT_WORKER_STARTING
                   : TT_WORKER_DOWN;
    return 0;
  }
  o->pid = w->p.pid;
  o->state = w->state;
  o->uptime_ms = now(s) - w->started_at;
  o->rss = rss_of(w->p.pid);
  o->heap = w->heap;
  return 0;
}

/* ---- start -------------------------------------------------------------- */

int tt_supervisor_start(uv_loop_t *loop, tt_supervisor_t *s,
                        const tt_supervisor_options_t *opts) {
  size_t n = 0;
  int err, policy_ready = 0;
  void *data = s->data;
  tt_supervisor_t z;

  memset(&z, 0, sizeof z);
  z.data = data;
  z.on_start = s->on_start;
  z.on_exit = s->on_exit;
  z.on_restart = s->on_restart;
  z.on_give_up = s->on_give_up;
  z.on_frame = s->on_frame;
  z.on_disconnect = s->on_disconnect;
  z.on_error = s->on_error;
  z.on_reload = s->on_reload;
  z.on_stopped = s->on_stopped;
  *s = z;
  s->loop = loop;
  s->opts = *opts;
  if (opts->instances < 1 || opts->instances > 100000) return UV_EINVAL;
  if ((err = tt_backoff_check(&opts->backoff)) != 0) return err;
  if (opts->heartbeat_interval_ms > 0 && opts->heartbeat_timeout_ms == 0)
    s->opts.heartbeat_timeout_ms = opts->heartbeat_interval_ms;
  if (s->opts.memory_interval_ms == 0)
    s->opts.memory_interval_ms = TT_SUP_DEFAULT_MEMORY_INTERVAL_MS;
  if (s->opts.queue_limit == 0) s->opts.queue_limit = TT_SUP_DEFAULT_QUEUE_LIMIT;
  s->opts.process.env = NULL;

  for (char **e = opts->process.env; e && *e; e++) n++;
  s->env_len = n;
  s->env = calloc(n + 2, sizeof *s->env);
  s->slots = calloc(opts->instances, sizeof *s->slots);
  if (opts->shutdown_message != NULL) {
    s->shutdown_message = malloc(opts->shutdown_message_len + 1);
    if (s->shutdown_message != NULL)
      memcpy(s->shutdown_message, opts->shutdown_message,
             opts->shutdown_message_len);
  }
  if (s->env == NULL || s->slots == NULL ||
      (opts->shutdown_message != NULL && s->shutdown_message == NULL)) {
    err = UV_ENOMEM;
    goto fail;
  }
  {
    tt_policy_options_t po;
    po.restart = opts->restart;
    po.max_restarts = opts->max_restarts;
    po.within_ms = opts->within_ms;
    po.backoff = opts->backoff;
    po.min_uptime_ms = opts->min_uptime_ms;
    if ((err = tt_policy_init(&s->policy, &po,
                              (uint64_t)uv_hrtime() ^
                                  ((uint64_t)(uintptr_t)s << 16))) != 0)
      goto fail;
    policy_ready = 1;
  }
  /* the strings stay the caller's: they must outlive the supervisor */
  for (size_t i = 0; i < n; i++) s->env[i] = opts->process.env[i];
  for (int i = 1; i < 3; i++) {
    if (opts->log_path[i] == NULL) continue;
    s->logs[i].data = s;
    s->logs[i].on_trouble = on_log_trouble;
    if ((err = tt_logsink_open(loop, &s->logs[i], opts->log_path[i])) != 0) {
      s->log_error = i;
      goto fail;
    }
    s->log_open[i] = 1;
  }
  for (unsigned i = 0; i < opts->instances; i++) {
    tt_slot_t *slot = &s->slots[i];
    slot->s = s;
    slot->id = i + 1;
    slot->prefix_len = (size_t)snprintf(slot->prefix, sizeof slot->prefix,
                                        "[%u] ", slot->id);
    uv_timer_init(loop, &slot->timer);
    slot->timer.data = slot;
    tt_outbox_init(loop, &slot->outbox, s->opts.queue_limit);
  }
  uv_timer_init(loop, &s->memory_timer);
  s->memory_timer.data = s;
  uv_timer_init(loop, &s->start_timer);
  s->start_timer.data = s;
  tt__timer_start(&s->start_timer, on_start_timer, 0, 0);
  if (opts->max_memory > 0) {
    tt__timer_start(&s->memory_timer, on_memory_timer,
                   s->opts.memory_interval_ms, s->opts.memory_interval_ms);
    uv_unref((uv_handle_t *)&s->memory_timer);
  }
  return 0;

fail:
  for (int i = 0; i < 3; i++)
    if (s->log_open[i]) tt_logsink_discard(&s->logs[i]), s->log_open[i] = 0;
  if (policy_ready) tt_policy_free(&s->policy);
  free(s->env);
  free(s->slots);
  free(s->shutdown_message);
  s->env = NULL;
  s->slots = NULL;
  s->shutdown_message = NULL;
  return err;
}
