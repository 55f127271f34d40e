/*
 * The supervisor's private parts, shared by its files (not installed, not
 * for bindings):
 *   supervisor.c  the API: start, stop, close, reload, messages, queries;
 *   sup_slot.c    an incarnation's life in its slot: spawn, ready, frames,
 *                 exit, restart;
 *   sup_watch.c   the watchdogs: start timeout, heartbeat, memory, and the
 *                 escalation of a stop (message, SIGTERM, SIGKILL).
 * Restart decisions are core/policy.c's, the message queue core/outbox.c's,
 * the cutting of output into log lines core/loglines.c's.
 */
#ifndef TT_SUPERVISOR_INTERNAL_H
#define TT_SUPERVISOR_INTERNAL_H

#include <sys/queue.h>

#include "tt_loglines.h"
#include "tt_outbox.h"
#include "tt_supervisor.h"

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
  I_WORKED = 1u << 8,     /* tt_supervisor_mark_worked() */
  I_GRACE = 1u << 9       /* stopped with TT_STOP_GRACE: not signalled yet */
};

struct tt_incarnation_s {
  tt_process_t p;
  tt_supervisor_t *s;
  TAILQ_ENTRY(tt_incarnation_s) all_link; /* on s->all */
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
  tt_loglines_t lines[3]; /* [1] stdout, [2] stderr: partial lines */
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
  int removed;    /* scaled away: id > opts.instances */
  int scale_wait; /* added by a scale: its first worker is not up yet */
  unsigned alive; /* its incarnations not yet exited */
  tt_exit_reason_t restart_reason;
  uv_timer_t timer;
  tt_outbox_t outbox; /* the owner's frames, for whichever worker runs */
  tt_exit_reason_t last_reason;
  int64_t last_status;
  int last_signal;
  char prefix[24];
  size_t prefix_len;
};

/* Fresh, not the iteration's start: deadlines and uptimes count from the
 * moment they are taken. */
static inline uint64_t tt__sup_now(tt_supervisor_t *s) {
  uv_update_time(s->loop);
  return uv_now(s->loop);
}

/* sup_slot.c */
void tt__sup_spawn(tt_slot_t *slot, int as_next);
void tt__sup_became_running(tt_incarnation_t *w);
void tt__sup_slot_down(tt_slot_t *slot);
void tt__sup_close_process(tt_incarnation_t *w);
void tt__sup_close_timer(tt_incarnation_t *w);
void tt__sup_on_process_closed(tt_process_t *p);

/* sup_watch.c */
/* polite: begin with the shutdown message, if there is one. */
void tt__sup_stop_worker(tt_incarnation_t *w, tt_exit_reason_t why,
                         int polite);
void tt__sup_watch_start(tt_incarnation_t *w);     /* STARTING: timeout */
void tt__sup_watch_heartbeat(tt_incarnation_t *w); /* RUNNING: next ping */
void tt__sup_pong(tt_incarnation_t *w, uint32_t id);
void tt__sup_on_memory_timer(uv_timer_t *t);

/* supervisor.c */
tt_incarnation_t *tt__sup_find_serial(tt_supervisor_t *s, uint64_t serial);
void tt__sup_check_stopped(tt_supervisor_t *s);
void tt__sup_maybe_closed(tt_supervisor_t *s);
void tt__sup_give_up(tt_supervisor_t *s, const char *why);
void tt__sup_reload_step(tt_supervisor_t *s);
void tt__sup_reload_done(tt_supervisor_t *s, int status);
void tt__sup_check_scale(tt_supervisor_t *s);

#endif /* TT_SUPERVISOR_INTERNAL_H */
