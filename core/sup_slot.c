/*
 * A supervised incarnation's life in its slot: see supervisor_internal.h.
 * Spawned (STARTING, or RUNNING at once without wait_ready), ready (the
 * slot's current worker, or a replacement that takes over), its frames
 * (heartbeat answers are the watch's, the rest the owner's), its exit,
 * classified and handed to the restart policy, and its memory freed once
 * its process and its timer are closed.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "supervisor_internal.h"
#include "tt_error.h"
#include "tt_peer.h"

void tt__sup_became_running(tt_incarnation_t *w) {
  tt_supervisor_t *s = w->s;
  tt_slot_t *slot = w->slot;
  w->state = TT_WORKER_RUNNING;
  w->flags |= I_READY;
  uv_timer_stop(&w->timer);
  tt__sup_watch_heartbeat(w);
  if (w == slot->next) { /* a replacement: the old one goes */
    tt_incarnation_t *old = slot->cur;
    slot->cur = w;
    slot->next = NULL;
    if (old != NULL && slot->keep_old) {
      old = NULL; /* runs on, no longer the slot's, until its owner stops it */
    } else if (old != NULL) {
      old->flags |= I_RELOAD_OLD;
      tt__sup_stop_worker(old, TT_EXIT_RELOAD, 1);
      if (old->flags & I_EXITED) old = NULL;
    }
    if (old == NULL && s->reload_next == slot->id) {
      s->reload_next++;
      tt__sup_reload_step(s);
    }
  } else if ((w->flags & I_PROMOTED) && s->reload_next == slot->id) {
    /* the reload's new worker, up after the old one died meanwhile */
    s->reload_next++;
    tt__sup_reload_step(s);
  }
  if (w == slot->cur) {
    tt_outbox_target(&slot->outbox, w->p.channel);
    slot->scale_wait = 0;
  }
  if (s->on_start) s->on_start(s, slot->id, w->serial);
  tt__sup_check_scale(s);
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
      if (w->state == TT_WORKER_STARTING) tt__sup_became_running(w);
    } else {
      tt__sup_pong(w, h->id);
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
  TAILQ_REMOVE(&s->all, w, all_link);
  for (int i = 0; i < 3; i++) tt_loglines_free(&w->lines[i]);
  free(w);
  s->live--;
  tt__sup_maybe_closed(s);
}

static void on_timer_closed(uv_handle_t *h) { part_closed(h->data); }

void tt__sup_close_timer(tt_incarnation_t *w) {
  if (uv_is_closing((uv_handle_t *)&w->timer)) return;
  w->timer.data = w;
  uv_close((uv_handle_t *)&w->timer, on_timer_closed);
}

void tt__sup_on_process_closed(tt_process_t *p) {
  tt_incarnation_t *w = p->data;
  tt__sup_close_timer(w);
  part_closed(w);
}

void tt__sup_close_process(tt_incarnation_t *w) {
  if (w->flags & I_PCLOSE) return;
  w->flags |= I_PCLOSE;
  tt_process_close(&w->p, tt__sup_on_process_closed);
}

/* The intensity window is charged here, when a restart happens, not when
 * it is scheduled: a give-up must not cancel restarts it already counted
 * (several workers crashing at once would give up with none done). */
static void on_restart_timer(uv_timer_t *t) {
  tt_slot_t *slot = t->data;
  tt_supervisor_t *s = slot->s;
  slot->restart_pending = 0;
  if (s->flags & S_STOPPING) return;
  if (slot->restart_counted && !tt_policy_charge(&s->policy, tt__sup_now(s))) {
    char why[128];
    snprintf(why, sizeof why,
             "more than %u restarts within %llu ms (worker %u: %s)",
             s->opts.max_restarts, (unsigned long long)s->opts.within_ms,
             slot->id, tt_exit_reason_name(slot->restart_reason));
    slot->restart_reason = TT_EXIT_NONE;
    tt__sup_slot_down(slot);
    tt__sup_give_up(s, why);
    return;
  }
  tt__sup_spawn(slot, 0);
}

void tt__sup_slot_down(tt_slot_t *slot) {
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
  if (slot->scale_wait) { /* a scale's new worker that never got ready */
    slot->scale_wait = 0;
    s->scale_status = TT_ERR_WORKER_INIT;
  }
  if (tt_policy_healthy(&s->policy, (w->flags & I_READY) != 0,
                        tt__sup_now(s) - w->started_at))
    slot->failures = 0;
  if (s->flags & S_STOPPING) {
    tt__sup_check_stopped(s);
    return;
  }
  if (!tt_policy_restarts(&s->policy, r)) {
    tt__sup_slot_down(slot);
    tt__sup_check_stopped(s);
    return;
  }
  slot->restart_counted = tt_policy_counts(
      &s->policy, r, (w->flags & I_READY) != 0, (w->flags & I_WORKED) != 0,
      w->p.term_signal != 0);
  if (slot->restart_counted) /* (tt_supervisor_restart(): at once) */
    delay = tt_policy_delay(&s->policy, ++slot->failures);
  slot->restart_reason = r;
  slot->restart_pending = 1;
  tt__timer_start(&slot->timer, on_restart_timer, delay, 0);
}

static tt_exit_reason_t classify(tt_incarnation_t *w) {
  /* (one that exited by itself during a grace period is told as it was) */
  if (w->stop_reason != TT_EXIT_NONE && !(w->flags & I_GRACE))
    return w->stop_reason;
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
    tt__sup_reload_done(s, TT_ERR_WORKER_INIT);
    tt__sup_check_stopped(s);
  } else if (w->flags & I_RELOAD_OLD) {
    if (s->reload_next == slot->id) {
      s->reload_next++;
      tt__sup_reload_step(s);
    }
    tt__sup_check_stopped(s);
  } else if (w == slot->cur) {
    after_exit(slot, w, r);
  } else {
    tt__sup_check_stopped(s);
  }
}

static void on_drain_timer(uv_timer_t *t) { tt__sup_close_process(t->data); }

static void on_worker_exit(tt_process_t *p, int64_t status, int sig) {
  tt_incarnation_t *w = p->data;
  tt_slot_t *slot = w->slot;
  tt_supervisor_t *s = w->s;
  tt_exit_reason_t r = classify(w);
  w->flags |= I_EXITED;
  s->alive--;
  slot->alive--;
  uv_timer_stop(&w->timer);
  tt__timer_start(&w->timer, on_drain_timer, TT_DRAIN_MS, 0);
  slot->last_reason = r;
  slot->last_status = status;
  slot->last_signal = sig;
  if (s->on_exit) s->on_exit(s, slot->id, w->serial, status, sig, r);
  worker_gone(w, r);
  tt__sup_check_scale(s);
}

/* Output still in the pipes after the exit is logged before the pipes
 * close (or TT_DRAIN_MS passed): only then is the worker done with. */
static void on_worker_closed(tt_process_t *p) {
  tt__sup_close_process(p->data);
}

static void on_worker_disconnect(tt_process_t *p) {
  tt_incarnation_t *w = p->data;
  tt_supervisor_t *s = w->s;
  if ((w->flags & I_EXITED) || w->state == TT_WORKER_STOPPING) return;
  if (s->on_disconnect) s->on_disconnect(s, w->slot->id, w->serial);
}

static void on_worker_data(tt_process_t *p, int fd, const char *buf,
                           ssize_t n) {
  tt_incarnation_t *w = p->data;
  tt_supervisor_t *s = w->s;
  int err;
  if (fd != 1 && fd != 2) return;
  err = tt_loglines_feed(&w->lines[fd], w->slot->prefix, w->slot->prefix_len,
                         buf, n, s->log_open[fd] ? &s->logs[fd] : NULL);
  if (err != 0 && s->on_error)
    s->on_error(s, w->slot->id, err, fd == 1 ? "writing the stdout log"
                                             : "writing the stderr log");
}

void tt__sup_spawn(tt_slot_t *slot, int as_next) {
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
  w->started_at = tt__sup_now(s);
  snprintf(idvar, sizeof idvar, "TETHER_WORKER_ID=%u", slot->id);
  s->env[s->env_len] = idvar;
  s->env[s->env_len + 1] = NULL;
  po.env = s->env;
  for (int i = 1; i < 3; i++)
    if (s->log_open[i]) po.stdio[i] = TT_STDIO_PIPE;
  if (s->on_spawn) s->on_spawn(s, slot->id, &po);
  err = tt_process_spawn(s->loop, &w->p, &po);
  s->env[s->env_len] = NULL;
  uv_timer_init(s->loop, &w->timer);
  w->timer.data = w;
  w->p.data = w;
  w->parts = 2;
  w->serial = ++s->serial;
  s->live++;
  TAILQ_INSERT_HEAD(&s->all, w, all_link);
  if (err != 0) {
    w->flags |= I_EXITED;
    tt__sup_close_process(w);
    goto failed;
  }
  s->alive++;
  slot->alive++;
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
    tt__sup_watch_start(w);
  } else {
    tt__sup_became_running(w);
  }
  return;

failed:
  if (s->on_error) {
    char why[1024];
    s->on_error(s, slot->id, err,
                tt_process_spawn_error(&po, err, why, sizeof why));
  }
  if (as_next) {
    if (s->reload_next == slot->id) tt__sup_reload_done(s, err);
    return;
  }
  slot->last_reason = TT_EXIT_SPAWN;
  slot->last_status = err;
  slot->last_signal = 0;
  if (w != NULL) {
    /* counted as a worker that ran and ended at once */
    w->state = TT_WORKER_DOWN;
    after_exit(slot, w, TT_EXIT_SPAWN);
    tt__sup_check_scale(s);
  } else {
    tt_incarnation_t none;
    memset(&none, 0, sizeof none);
    none.s = s;
    none.slot = slot;
    after_exit(slot, &none, TT_EXIT_SPAWN);
    tt__sup_check_scale(s);
  }
}
