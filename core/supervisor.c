/*
 * Supervisor: see tt_supervisor.h; its parts are listed in
 * supervisor_internal.h.
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
 * - A slot's messages are its outbox's (core/tt_outbox.h); its target is
 *   the slot's current worker's channel while that worker runs.
 * - s->slots holds pointers to slots made once each and freed with the
 *   supervisor: scaling up never moves a slot an incarnation points to.
 *   Slots opts.instances+1..nslots were removed by a scale down (or wait
 *   to be taken back by a scale up).
 * - s->pending_closes counts the supervisor's own uv handles (and the
 *   outboxes) not yet closed; the close callback runs when it and s->live
 *   are both 0.
 */
#include "tt_supervisor.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "supervisor_internal.h"
#include "tt_error.h"

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

tt_incarnation_t *tt__sup_find_serial(tt_supervisor_t *s, uint64_t serial) {
  tt_incarnation_t *w;
  TAILQ_FOREACH(w, &s->all, all_link)
    if (w->serial == serial) return w;
  return NULL;
}

/* ---- handles ------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h) {
  tt_supervisor_t *s = h->data;
  s->pending_closes--;
  tt__sup_maybe_closed(s);
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
  tt__sup_maybe_closed(s);
}

static void on_log_closed(tt_logsink_t *ls) {
  tt_supervisor_t *s = ls->data;
  s->pending_closes--;
  tt__sup_maybe_closed(s);
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

void tt__sup_maybe_closed(tt_supervisor_t *s) {
  if (!(s->flags & S_CLOSING) || (s->flags & S_CLOSED_CB)) return;
  if (s->live > 0 || s->pending_closes > 0 || !(s->flags & S_STOPPED))
    return;
  if (!(s->flags & S_LOGS_CLOSING)) { /* last: the workers' output is in */
    close_logs(s);
    if (s->pending_closes > 0) return;
  }
  s->flags |= S_CLOSED_CB;
  for (unsigned i = 0; i < s->nslots; i++) free(s->slots[i]);
  free(s->slots);
  s->slots = NULL;
  s->nslots = 0;
  free(s->env);
  s->env = NULL;
  free(s->shutdown_message);
  s->shutdown_message = NULL;
  tt_policy_free(&s->policy);
  if (s->close_cb) s->close_cb(s);
}

/* ---- messages ---------------------------------------------------------- */

int tt_supervisor_send_fd(tt_supervisor_t *s, unsigned id, unsigned kind,
                          uint32_t frame_id, const void *payload, size_t len,
                          int fd, uint64_t timeout_ms, tt_channel_send_cb cb,
                          void *arg) {
  return tt_supervisor_send_fds(s, id, kind, frame_id, payload, len, &fd,
                                fd >= 0 ? 1 : 0, timeout_ms, cb, arg);
}

int tt_supervisor_check_send(tt_supervisor_t *s, unsigned id, unsigned kind,
                             size_t len, unsigned nfds) {
  tt_slot_t *slot;
  /* a removed slot that still exists answers TT_ERR_CLOSED (it is dead) */
  if (id < 1 || id > tt_supervisor_instances(s)) return UV_EINVAL;
  if (tt_channel_options_check_size(&s->opts.process.channel_options, kind,
                                    len) != 0)
    return TT_ERR_SERIALIZE;
  slot = s->slots[id - 1];
  if ((s->flags & S_STOPPING) || slot->dead) return TT_ERR_CLOSED;
  if (nfds > 0 && s->opts.process.channel_options.lines) return UV_ENOTSUP;
  return tt_outbox_check(&slot->outbox, kind, nfds);
}

int tt_supervisor_send_fds(tt_supervisor_t *s, unsigned id, unsigned kind,
                           uint32_t frame_id, const void *payload, size_t len,
                           const int *fds, unsigned nfds, uint64_t timeout_ms,
                           tt_channel_send_cb cb, void *arg) {
  tt_slot_t *slot;
  int err = tt_supervisor_check_send(s, id, kind, len, nfds);
  if (err != 0) return err;
  slot = s->slots[id - 1];
  return tt_outbox_send_fds(&slot->outbox, kind, frame_id, payload, len, fds,
                            nfds, timeout_ms, cb, arg);
}

int tt_supervisor_send(tt_supervisor_t *s, unsigned id, unsigned kind,
                       uint32_t frame_id, const void *payload, size_t len,
                       uint64_t timeout_ms, tt_channel_send_cb cb, void *arg) {
  return tt_supervisor_send_fds(s, id, kind, frame_id, payload, len, NULL, 0,
                                timeout_ms, cb, arg);
}

unsigned tt_supervisor_instances(const tt_supervisor_t *s) {
  for (unsigned i = s->nslots; i > s->opts.instances; i--)
    if (s->slots[i - 1]->alive > 0) return i;
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
    snprintf(why, sizeof why, "%s the log %s",
             strcmp(ls->failed_op, "rotate") == 0 ? "rotating" : "writing",
             ls->path);
    s->on_error(s, 0, err, why);
  } else {
    snprintf(why, sizeof why,
             "the log %s is not being read: dropping lines (%llu so far)",
             ls->path, (unsigned long long)dropped);
    s->on_error(s, 0, UV_EAGAIN, why);
  }
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

void tt__sup_give_up(tt_supervisor_t *s, const char *why) {
  if (s->flags & (S_GAVE_UP | S_STOPPING)) return;
  s->flags |= S_GAVE_UP;
  if (s->on_give_up) s->on_give_up(s, why);
  tt_supervisor_stop(s);
}

int tt_supervisor_hurry(tt_supervisor_t *s) {
  if (!(s->flags & S_STOPPING)) return UV_EINVAL;
  tt_incarnation_t *w;
  TAILQ_FOREACH(w, &s->all, all_link) {
    if (w->flags & I_EXITED) continue;
    w->flags |= I_SENT_KILL;
    w->phase = 3;
    tt_process_kill(&w->p, SIGKILL);
  }
  return 0;
}

int tt_supervisor_give_up(tt_supervisor_t *s, const char *why) {
  if (s->flags & (S_GAVE_UP | S_STOPPING)) return TT_ERR_CLOSED;
  tt__sup_give_up(s, why);
  return 0;
}

static void on_start_timer(uv_timer_t *t) {
  tt_supervisor_t *s = t->data;
  unsigned n = 0;
  s->flags |= S_STARTED;
  while (s->start_next < s->opts.instances && n++ < TT_SPAWNS_PER_TICK &&
         !(s->flags & S_STOPPING))
    tt__sup_spawn(s->slots[s->start_next++], 0);
  if (s->start_next < s->opts.instances && !(s->flags & S_STOPPING))
    tt__timer_start(&s->start_timer, on_start_timer, 0, 0);
  else
    s->start_next = s->opts.instances;
  tt__sup_check_stopped(s);
  tt__sup_check_scale(s);
}

/* ---- reload ------------------------------------------------------------- */

void tt__sup_reload_done(tt_supervisor_t *s, int status) {
  if (s->reload_next == 0) return;
  s->reload_next = 0;
  if (s->on_reload) s->on_reload(s, status);
}

void tt__sup_reload_step(tt_supervisor_t *s) {
  while (s->reload_next != 0 && s->reload_next <= s->opts.instances) {
    tt_slot_t *slot = s->slots[s->reload_next - 1];
    if (slot->cur != NULL && slot->cur->state == TT_WORKER_RUNNING &&
        slot->next == NULL) {
      slot->keep_old = 0;
      tt__sup_spawn(slot, 1); /* continues from became_running/worker_gone */
      return;
    }
    /* down, restarting or starting: it comes up with the new code anyway */
    s->reload_next++;
  }
  tt__sup_reload_done(s, 0);
}

int tt_supervisor_reload(tt_supervisor_t *s) {
  if (s->flags & S_STOPPING) return TT_ERR_CLOSED;
  if (s->reload_next != 0) return UV_EBUSY;
  s->reload_next = 1;
  tt__sup_reload_step(s);
  return 0;
}

int tt_supervisor_restart(tt_supervisor_t *s, unsigned id) {
  tt_slot_t *slot;
  if (id < 1 || id > s->opts.instances) return UV_EINVAL;
  if (s->flags & S_STOPPING) return TT_ERR_CLOSED;
  slot = s->slots[id - 1];
  if (slot->cur == NULL || slot->cur->state == TT_WORKER_STOPPING)
    return UV_ESRCH;
  /* a worker still starting is not restarted again: a "restart" handler
   * that asks for a restart would otherwise loop for ever (restarts asked
   * for are not counted toward max_restarts) */
  if (slot->cur->state == TT_WORKER_STARTING || slot->next != NULL)
    return UV_EBUSY;
  tt__sup_stop_worker(slot->cur, TT_EXIT_RELOAD, 1);
  return 0;
}

/* ---- scale -------------------------------------------------------------- */

static void scale_done(tt_supervisor_t *s, int status) {
  unsigned n = s->scale_pending;
  if (n == 0) return;
  s->scale_pending = 0;
  s->scale_status = 0;
  for (unsigned i = 0; i < s->nslots; i++) s->slots[i]->scale_wait = 0;
  /* one report per call still waiting: the owner may count its callers */
  while (n-- > 0 && s->on_scale) s->on_scale(s, status);
}

void tt__sup_check_scale(tt_supervisor_t *s) {
  if (s->scale_pending == 0) return;
  for (unsigned i = 0; i < s->nslots; i++) {
    tt_slot_t *slot = s->slots[i];
    if (slot->removed ? slot->alive > 0 : slot->scale_wait) return;
  }
  scale_done(s, s->scale_status);
}

/* Fills a zeroed slot (cannot fail). */
static void init_slot(tt_supervisor_t *s, tt_slot_t *slot, unsigned id) {
  slot->s = s;
  slot->id = id;
  slot->prefix_len = (size_t)snprintf(slot->prefix, sizeof slot->prefix,
                                      "[%u] ", slot->id);
  uv_timer_init(s->loop, &slot->timer);
  slot->timer.data = slot;
  tt_outbox_init(s->loop, &slot->outbox, s->opts.queue_limit);
}

/* Makes slots nslots+1..n, all or none.  Each is its own allocation, freed
 * with the supervisor: a removed slot may still have a stopping
 * incarnation pointing to it, and growing never moves one. */
static int make_slots(tt_supervisor_t *s, unsigned n) {
  tt_slot_t **a;
  if (n <= s->nslots) return 0;
  a = realloc(s->slots, n * sizeof *a);
  if (a == NULL) return UV_ENOMEM;
  s->slots = a;
  for (unsigned i = s->nslots; i < n; i++) {
    if ((a[i] = calloc(1, sizeof *a[i])) == NULL) {
      while (i-- > s->nslots) free(a[i]);
      return UV_ENOMEM;
    }
  }
  for (unsigned i = s->nslots; i < n; i++) init_slot(s, a[i], i + 1);
  s->nslots = n;
  return 0;
}

/* Every incarnation of a removed slot stops and leaves the slot: exits of
 * detached incarnations neither restart nor touch the slot's state. */
static void remove_slot(tt_supervisor_t *s, tt_slot_t *slot) {
  tt_incarnation_t *w, *next;
  slot->removed = 1;
  slot->scale_wait = 0;
  uv_timer_stop(&slot->timer);
  slot->restart_pending = 0;
  slot->restart_reason = TT_EXIT_NONE;
  tt__sup_slot_down(slot);
  for (w = TAILQ_FIRST(&s->all); w != NULL; w = next) {
    next = TAILQ_NEXT(w, all_link);
    if (w->slot == slot) tt__sup_stop_worker(w, TT_EXIT_SCALE, 1);
  }
  slot->cur = slot->next = NULL;
  slot->keep_old = 0;
}

static void take_back_slot(tt_slot_t *slot) {
  slot->removed = 0;
  slot->dead = 0;
  slot->failures = 0;
  tt_outbox_reopen(&slot->outbox);
}

int tt_supervisor_scale(tt_supervisor_t *s, unsigned n) {
  unsigned old;
  int err;
  if (n < 1 || n > TT_SUP_MAX_INSTANCES) return UV_EINVAL;
  if (s->flags & S_STOPPING) return TT_ERR_CLOSED;
  /* memory first, so that a failure changes nothing */
  if ((err = make_slots(s, n)) != 0) return err;
  old = s->opts.instances;
  s->scale_status = 0;
  if (n > old) {
    for (unsigned i = old; i < n; i++) {
      tt_slot_t *slot = s->slots[i];
      if (slot->removed) take_back_slot(slot);
      slot->scale_wait = 1;
    }
    if (s->start_next > old) s->start_next = old;
  } else if (n < old) {
    if (s->reload_next > n) tt__sup_reload_done(s, 0); /* the rest is gone */
    if (s->start_next > n) s->start_next = n;
    for (unsigned i = old; i-- > n;) remove_slot(s, s->slots[i]);
  }
  s->opts.instances = n;
  s->scale_pending++;
  /* the new slots spawn there, and the report comes from the loop even
   * when there is nothing to wait for */
  tt__timer_start(&s->start_timer, on_start_timer, 0, 0);
  return 0;
}

/* ---- stop --------------------------------------------------------------- */

void tt__sup_check_stopped(tt_supervisor_t *s) {
  if (s->flags & S_STOPPED) return;
  if (!(s->flags & S_STARTED) && !(s->flags & S_STOPPING)) return;
  if (s->alive > 0) return;
  if (s->start_next < s->opts.instances && !(s->flags & S_STOPPING)) return;
  for (unsigned i = 0; i < s->nslots; i++)
    if (s->slots[i]->restart_pending) return;
  s->flags |= S_STOPPING | S_STOPPED;
  tt__sup_reload_done(s, TT_ERR_CLOSED);
  scale_done(s, TT_ERR_CLOSED);
  for (unsigned i = 0; i < s->nslots; i++) tt__sup_slot_down(s->slots[i]);
  uv_timer_stop(&s->memory_timer);
  uv_timer_stop(&s->start_timer);
  if (s->on_stopped) s->on_stopped(s);
  tt__sup_maybe_closed(s);
}

void tt_supervisor_stop(tt_supervisor_t *s) {
  if (s->flags & S_STOPPING) return;
  s->flags |= S_STOPPING;
  uv_timer_stop(&s->start_timer);
  uv_timer_stop(&s->memory_timer);
  tt__sup_reload_done(s, TT_ERR_CLOSED);
  scale_done(s, TT_ERR_CLOSED);
  for (unsigned i = 0; i < s->nslots; i++) {
    tt_slot_t *slot = s->slots[i];
    uv_timer_stop(&slot->timer);
    slot->restart_pending = 0;
    tt__sup_slot_down(slot);
  }
  for (tt_incarnation_t *w = TAILQ_FIRST(&s->all), *next; w != NULL;
       w = next) {
    next = TAILQ_NEXT(w, all_link);
    tt__sup_stop_worker(w, TT_EXIT_STOP, 1);
  }
  tt__sup_check_stopped(s);
}

/* The loop is going away: close everything of `w` tt__sup_now (whatever is still
 * open when the binding walks the loop would be closed without our
 * callbacks).  A live worker gets SIGTERM: nobody will reap it, but it must
 * not run on. */
static void abandon_worker(tt_incarnation_t *w) {
  if (w->flags & I_ABANDONED) return;
  w->flags |= I_ABANDONED;
  uv_timer_stop(&w->timer);
  tt__sup_close_timer(w);
  if (!(w->flags & I_EXITED)) {
    tt_process_kill(&w->p, SIGTERM);
    tt_process_kill(&w->p, SIGCONT);
    w->flags |= I_EXITED;
    w->s->alive--;
    w->slot->alive--;
  }
  if (!(w->flags & I_PCLOSE)) {
    w->flags |= I_PCLOSE;
    tt_process_abandon(&w->p, tt__sup_on_process_closed);
  }
}

static void abandon_all(tt_supervisor_t *s) {
  if (s->flags & S_ABANDONED) return;
  s->flags |= S_ABANDONED;
  /* tt__sup_now, while the loop is still ours: the owner closes what is left */
  close_logs(s);
  for (tt_incarnation_t *w = TAILQ_FIRST(&s->all), *next; w != NULL;
       w = next) {
    next = TAILQ_NEXT(w, all_link);
    abandon_worker(w);
  }
  tt__sup_check_stopped(s);
  tt__sup_maybe_closed(s);
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
  s->on_memory = NULL;
  s->on_stopped = NULL;
  s->on_scale = NULL;
  /* Closing first keeps the memory until these handles are closed, however
   * synchronously the stop below completes. */
  close_handle(s, (uv_handle_t *)&s->memory_timer);
  close_handle(s, (uv_handle_t *)&s->start_timer);
  for (unsigned i = 0; i < s->nslots; i++) {
    close_handle(s, (uv_handle_t *)&s->slots[i]->timer);
    s->slots[i]->outbox.data = s;
    s->pending_closes++;
    tt_outbox_close(&s->slots[i]->outbox, on_outbox_closed);
  }
  tt_supervisor_stop(s);
  if (abandon) abandon_all(s);
  tt__sup_maybe_closed(s);
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
  slot = s->slots[id - 1];
  if (slot->next != NULL || s->reload_next == id) return UV_EBUSY;
  if (slot->cur == NULL || slot->cur->state != TT_WORKER_RUNNING)
    return UV_ESRCH;
  slot->keep_old = keep_old;
  tt__sup_spawn(slot, 1);
  return 0;
}

int tt_supervisor_stop_worker(tt_supervisor_t *s, uint64_t serial,
                              tt_exit_reason_t why, int polite) {
  tt_incarnation_t *w = tt__sup_find_serial(s, serial);
  if (w == NULL) return UV_ESRCH;
  tt__sup_stop_worker(w, why, polite);
  return 0;
}

int tt_supervisor_kill_worker(tt_supervisor_t *s, uint64_t serial,
                              int signum) {
  tt_incarnation_t *w = tt__sup_find_serial(s, serial);
  if (w == NULL) return UV_ESRCH;
  if (signum == SIGKILL) w->flags |= I_SENT_KILL;
  return tt_process_kill(&w->p, signum);
}

tt_channel_t *tt_supervisor_worker_channel(tt_supervisor_t *s,
                                           uint64_t serial) {
  tt_incarnation_t *w = tt__sup_find_serial(s, serial);
  return w && !(w->flags & I_EXITED) ? w->p.channel : NULL;
}

void tt_supervisor_mark_worked(tt_supervisor_t *s, uint64_t serial) {
  tt_incarnation_t *w = tt__sup_find_serial(s, serial);
  if (w != NULL) w->flags |= I_WORKED;
}

int tt_supervisor_worker_pid(tt_supervisor_t *s, uint64_t serial) {
  tt_incarnation_t *w = tt__sup_find_serial(s, serial);
  return w ? w->p.pid : 0;
}

/* ---- queries ------------------------------------------------------------ */

int tt_supervisor_kill(tt_supervisor_t *s, unsigned id, int signum) {
  tt_slot_t *slot;
  if (id < 1 || id > s->opts.instances) return UV_EINVAL;
  slot = s->slots[id - 1];
  if (slot->cur == NULL) return UV_ESRCH;
  if (signum == SIGKILL) slot->cur->flags |= I_SENT_KILL; /* not the OOM killer */
  return tt_process_kill(&slot->cur->p, signum);
}

tt_worker_state_t tt_supervisor_state(tt_supervisor_t *s, unsigned id) {
  tt_incarnation_t *w;
  if (id < 1 || id > s->opts.instances || s->slots == NULL)
    return TT_WORKER_DOWN;
  w = s->slots[id - 1]->cur;
  if (w == NULL || (w->flags & I_EXITED)) return TT_WORKER_DOWN;
  return w->state;
}

int tt_supervisor_info(tt_supervisor_t *s, unsigned id, tt_worker_info_t *o) {
  tt_slot_t *slot;
  tt_incarnation_t *w;
  if (id < 1 || s->slots == NULL || id > tt_supervisor_instances(s))
    return UV_EINVAL;
  slot = s->slots[id - 1];
  w = slot->cur;
  if (w == NULL && slot->removed && slot->alive > 0) /* detached, stopping */
    TAILQ_FOREACH(w, &s->all, all_link)
      if (w->slot == slot && !(w->flags & I_EXITED)) break;
  memset(o, 0, sizeof *o);
  o->restarts = slot->restarts;
  o->queued = tt_outbox_queued(&slot->outbox);
  o->last_reason = slot->last_reason;
  o->last_status = slot->last_status;
  o->last_signal = slot->last_signal;
  o->heap = -1;
  if (w == NULL || (w->flags & I_EXITED)) {
    o->state = (slot->restart_pending || slot->id > s->start_next) &&
                       !slot->removed && !(s->flags & S_STOPPING)
                   ? TT_WORKER_STARTING
                   : TT_WORKER_DOWN;
    return 0;
  }
  o->pid = w->p.pid;
  o->state = w->state;
  o->uptime_ms = tt__sup_now(s) - w->started_at;
  o->rss = tt_process_rss(w->p.pid);
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
  z.on_memory = s->on_memory;
  z.on_spawn = s->on_spawn;
  z.on_stopped = s->on_stopped;
  z.on_scale = s->on_scale;
  *s = z;
  TAILQ_INIT(&s->all);
  s->loop = loop;
  s->opts = *opts;
  if (opts->instances < 1 || opts->instances > TT_SUP_MAX_INSTANCES)
    return UV_EINVAL;
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
  for (unsigned i = 0; s->slots != NULL && i < opts->instances; i++)
    if ((s->slots[i] = calloc(1, sizeof *s->slots[i])) == NULL) {
      while (i-- > 0) free(s->slots[i]);
      free(s->slots);
      s->slots = NULL;
    }
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
    po.exempt_worked = opts->exempt_worked;
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
    if ((err = tt_logsink_rotate(&s->logs[i], opts->log_max_size,
                                 opts->log_keep)) != 0)
      goto fail;
  }
  for (unsigned i = 0; i < opts->instances; i++)
    init_slot(s, s->slots[i], i + 1);
  s->nslots = opts->instances;
  uv_timer_init(loop, &s->memory_timer);
  s->memory_timer.data = s;
  uv_timer_init(loop, &s->start_timer);
  s->start_timer.data = s;
  tt__timer_start(&s->start_timer, on_start_timer, 0, 0);
  if (opts->max_memory > 0) {
    tt__timer_start(&s->memory_timer, tt__sup_on_memory_timer,
                   s->opts.memory_interval_ms, s->opts.memory_interval_ms);
    uv_unref((uv_handle_t *)&s->memory_timer);
  }
  return 0;

fail:
  for (int i = 0; i < 3; i++)
    if (s->log_open[i]) tt_logsink_discard(&s->logs[i]), s->log_open[i] = 0;
  if (policy_ready) tt_policy_free(&s->policy);
  free(s->env);
  for (unsigned i = 0; s->slots != NULL && i < opts->instances; i++)
    free(s->slots[i]);
  free(s->slots);
  free(s->shutdown_message);
  s->env = NULL;
  s->slots = NULL;
  s->shutdown_message = NULL;
  return err;
}
