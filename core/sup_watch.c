/*
 * Supervisor watchdogs: see supervisor_internal.h.  An incarnation has one
 * timer, used by whichever watch its state needs: the start timeout
 * (STARTING), the heartbeat (RUNNING: a PING every interval, the PONG due
 * within the timeout), the escalation of a stop (STOPPING).  The memory
 * watch is one timer for the supervisor.
 */
#include <signal.h>

#include "internal.h"
#include "supervisor_internal.h"

static void check_memory(tt_incarnation_t *w) {
  uint64_t rss;
  if (w == NULL || (w->flags & I_EXITED) || w->state == TT_WORKER_STOPPING)
    return;
  rss = tt_process_rss(w->p.pid);
  if (rss <= w->s->opts.max_memory) return;
  if (w->s->on_memory)
    w->s->on_memory(w->s, w->slot->id, w->serial, rss);
  else
    tt__sup_stop_worker(w, TT_EXIT_MEMORY, 1);
}

void tt__sup_on_memory_timer(uv_timer_t *t) {
  tt_supervisor_t *s = t->data;
  tt_incarnation_t *w, *next;
  for (w = TAILQ_FIRST(&s->all); w != NULL; w = next) {
    /* a stop may end it synchronously (spawn failed) */
    next = TAILQ_NEXT(w, all_link);
    check_memory(w);
  }
}

/* ---- watchdogs and escalation ------------------------------------------- */

static void send_ping(tt_incarnation_t *w);

static void on_timer(uv_timer_t *t) {
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
    tt__sup_stop_worker(w, TT_EXIT_UNRESPONSIVE, 0);
    break;
  case TT_WORKER_RUNNING:
    if (w->flags & I_PING_OUT)
      tt__sup_stop_worker(w, TT_EXIT_UNRESPONSIVE, 0);
    else
      send_ping(w);
    break;
  case TT_WORKER_STOPPING:
    if (w->phase < 2) {
      w->phase = 2;
      w->flags &= ~I_GRACE; /* from here the stop is ours */
      /* the worker's process group: what it started goes with it, as
       * under systemd's KillMode=control-group */
      tt_process_kill_group(&w->p, SIGTERM);
      tt_process_kill_group(&w->p, SIGCONT);
      tt__timer_start(&w->timer, on_timer, s->opts.kill_timeout_ms, 0);
    } else if (w->phase == 2) {
      w->phase = 3;
      w->flags |= I_SENT_KILL;
      tt_process_kill_group(&w->p, SIGKILL);
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
  tt__timer_start(&w->timer, on_timer, s->opts.heartbeat_timeout_ms, 0);
}

void tt__sup_stop_worker(tt_incarnation_t *w, tt_exit_reason_t why,
                        int polite) {
  tt_supervisor_t *s = w->s;
  if (w->state == TT_WORKER_STOPPING || (w->flags & I_EXITED)) return;
  w->state = TT_WORKER_STOPPING;
  w->stop_reason = why;
  if (w == w->slot->cur) tt_outbox_target(&w->slot->outbox, NULL);
  w->flags &= ~I_PING_OUT;
  uv_timer_stop(&w->timer);
  if (polite == TT_STOP_GRACE) {
    uint64_t grace = s->opts.shutdown_timeout_ms < TT_STOP_GRACE_MS
                         ? s->opts.shutdown_timeout_ms
                         : TT_STOP_GRACE_MS;
    w->phase = 1;
    w->flags |= I_GRACE;
    tt__timer_start(&w->timer, on_timer, grace, 0);
    return;
  }
  if (polite && s->shutdown_message != NULL && w->p.channel != NULL &&
      tt_channel_is_connected(w->p.channel) &&
      tt_channel_send(w->p.channel,
                      s->opts.shutdown_kind ? s->opts.shutdown_kind
                                            : TT_FRAME_MESSAGE,
                      0, s->shutdown_message,
                      s->opts.shutdown_message_len, NULL, NULL) >= 0) {
    w->phase = 1;
    tt__timer_start(&w->timer, on_timer, s->opts.shutdown_timeout_ms,
                   0);
  } else {
    w->phase = 1;
    on_timer(&w->timer); /* straight to SIGTERM */
  }
}

void tt__sup_watch_start(tt_incarnation_t *w) {
  if (w->s->opts.start_timeout_ms > 0)
    tt__timer_start(&w->timer, on_timer, w->s->opts.start_timeout_ms, 0);
}

void tt__sup_watch_heartbeat(tt_incarnation_t *w) {
  if (w->s->opts.heartbeat_interval_ms > 0)
    tt__timer_start(&w->timer, on_timer, w->s->opts.heartbeat_interval_ms, 0);
}

void tt__sup_pong(tt_incarnation_t *w, uint32_t id) {
  if (id == w->ping_id && (w->flags & I_PING_OUT) &&
      w->state == TT_WORKER_RUNNING) {
    w->flags &= ~I_PING_OUT;
    tt__sup_watch_heartbeat(w);
  }
}
