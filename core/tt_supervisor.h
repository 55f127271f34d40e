/*
 * tether supervisor: keeps `instances` workers running, each in a numbered
 * slot (ids 1..instances, stable across restarts).
 *
 * A slot's worker goes STARTING -> RUNNING -> STOPPING -> DOWN.  A worker is
 * RUNNING once it spawned, or, with `wait_ready`, once its runner sent the
 * ready frame (PONG id 0, see PROTOCOL.md).  When a worker exits on its own,
 * the restart policy decides; restarts wait an exponential backoff (reset
 * once a worker ran `min_uptime_ms`) and are counted in a sliding window:
 * more than `max_restarts` within `within_ms` and the supervisor gives up
 * (on_give_up), stops every worker and restarts nothing more.
 *
 * Stopping a worker escalates: the shutdown message (if any), `timeout_ms`
 * to exit, SIGTERM + SIGCONT (a stopped process must be able to die),
 * `kill_timeout_ms`, SIGKILL.  A reaped pid is never signalled.
 *
 * Optional watchdogs: RSS from /proc/<pid>/statm every `memory_interval_ms`
 * (over `max_memory` -> graceful restart, reason MEMORY); heartbeat PINGs
 * answered by the worker's binding (no answer within `heartbeat_timeout_ms`
 * -> killed and restarted, reason UNRESPONSIVE); `start_timeout_ms` for a
 * worker that never gets ready.
 *
 * tt_supervisor_send() queues messages per slot (bounded) while its worker
 * is not running and hands them to the next incarnation; a message still in
 * a dying worker's channel queue goes back to the slot's queue.  Every
 * message's callback runs exactly once: 0 once the kernel took it,
 * TT_ERR_TIMEOUT, or TT_ERR_CLOSED when the slot will never run again.
 *
 * Worker output can be logged: each line of stdout/stderr appended to a
 * file with the prefix "[id] ", never blocking the loop (tt_logsink.h: a
 * stalled FIFO reader costs dropped, counted lines, reported through
 * on_error, not a frozen supervisor), rotated by size when `log_max_size`
 * is set.
 *
 * The number of slots can change at run time (tt_supervisor_scale): slots
 * are added after the last one and removed from the end, so ids stay
 * stable; a slot's memory lives until the supervisor is closed, so an
 * incarnation of a removed slot still stopping keeps a valid slot.
 */
#ifndef TT_SUPERVISOR_H
#define TT_SUPERVISOR_H

#include <stdint.h>
#include <sys/queue.h>
#include <uv.h>

#include "tt_backoff.h"
#include "tt_logsink.h"
#include "tt_policy.h"
#include "tt_process.h"

typedef enum {
  TT_WORKER_STARTING = 0,
  TT_WORKER_RUNNING,
  TT_WORKER_STOPPING,
  TT_WORKER_DOWN
} tt_worker_state_t;

const char *tt_worker_state_name(tt_worker_state_t s);

typedef struct {
  /* Template for every worker; TETHER_WORKER_ID=<id> is added to env.
   * stdio entries 1 and 2 are ignored for fds that have a log_path. */
  tt_process_options_t process;
  unsigned instances; /* >= 1 */
  tt_restart_t restart;
  unsigned max_restarts; /* in any window of within_ms */
  uint64_t within_ms;
  tt_backoff_t backoff;
  uint64_t min_uptime_ms;
  uint64_t max_memory;         /* bytes of RSS; 0: no limit */
  uint64_t memory_interval_ms; /* 0: 1000 */
  uint64_t heartbeat_interval_ms; /* 0: no heartbeat */
  uint64_t heartbeat_timeout_ms;
  uint64_t start_timeout_ms; /* 0: wait for ready without limit */
  int wait_ready;            /* RUNNING only after the ready frame */
  const char *shutdown_message; /* MESSAGE payload, copied; NULL: none */
  size_t shutdown_message_len;
  unsigned shutdown_kind;       /* its frame kind; 0: TT_FRAME_MESSAGE */
  uint64_t shutdown_timeout_ms; /* wait after the message */
  uint64_t kill_timeout_ms;     /* wait after SIGTERM */
  const char *log_path[3];      /* [1] stdout, [2] stderr; NULL: no log */
  /* Rotation of both logs (tt_logsink_rotate): past log_max_size bytes
   * (0: never) the file becomes path.1, keeping log_keep old files. */
  uint64_t log_max_size;
  unsigned log_keep;
  size_t queue_limit;           /* queued messages per slot; 0: 1024 */
  /* Exits of ready workers that were killed by a signal, or that the
   * owner marked with tt_supervisor_mark_worked(), do not count toward
   * max_restarts and restart at once (pools: a worker killed, or dying
   * while doing useful work, is not a failing start).  The others, e.g. a
   * script that ends by itself before taking any work, count and back
   * off as usual. */
  int exempt_worked;
} tt_supervisor_options_t;

/* Fills `o` with the defaults: 1 instance, ALWAYS, 10 restarts in 60 s,
 * default backoff, min_uptime 1000 ms, memory checks every 1000 ms,
 * shutdown 5000 ms + 3000 ms. */
void tt_supervisor_options_init(tt_supervisor_options_t *o);

typedef struct tt_supervisor_s tt_supervisor_t;
typedef struct tt_incarnation_s tt_incarnation_t;
typedef struct tt_slot_s tt_slot_t;

typedef struct {
  int pid;                 /* 0 when down */
  tt_worker_state_t state;
  unsigned restarts;       /* total, this slot */
  uint64_t uptime_ms;      /* of the current worker, while it runs */
  uint64_t rss;            /* bytes, last measured; 0: unknown */
  int64_t heap; /* bytes of the worker's runtime heap (its binding's
                   say, from the last heartbeat); -1: unknown */
  size_t queued;           /* messages waiting for the worker */
  tt_exit_reason_t last_reason; /* NONE before the first exit */
  int64_t last_status;
  int last_signal;
} tt_worker_info_t;

struct tt_supervisor_s {
  void *data; /* owner's */
  /* Owner callbacks; any may be NULL.  `id` is the slot (1-based). */
  /* `serial` names one incarnation (one process) of slot `id`; serials
   * are never reused. */
  void (*on_start)(tt_supervisor_t *s, unsigned id, uint64_t serial);
  void (*on_exit)(tt_supervisor_t *s, unsigned id, uint64_t serial,
                  int64_t status, int sig, tt_exit_reason_t reason);
  /* A replacement worker `pid` was spawned for slot `id`. */
  void (*on_restart)(tt_supervisor_t *s, unsigned id, tt_exit_reason_t why,
                     int pid);
  void (*on_give_up)(tt_supervisor_t *s, const char *why);
  /* Every frame from a worker except heartbeat frames. */
  void (*on_frame)(tt_supervisor_t *s, unsigned id, uint64_t serial,
                   tt_channel_t *ch, const tt_frame_header_t *h,
                   const char *payload);
  /* A worker's channel ended while its process runs on (it disconnected,
   * or sent a frame that was refused).  The owner decides (a pool stops
   * it: a worker it cannot talk to is of no use). */
  void (*on_disconnect)(tt_supervisor_t *s, unsigned id, uint64_t serial);
  /* Spawn failures, channel errors, log write errors. */
  void (*on_error)(tt_supervisor_t *s, unsigned id, int err, const char *why);
  void (*on_reload)(tt_supervisor_t *s, int status);
  /* A worker's RSS is over max_memory.  Without this hook it is stopped
   * gracefully (reason MEMORY); with it, the owner decides (a pool retires
   * it once its tasks are done).  Asked again at every check. */
  void (*on_memory)(tt_supervisor_t *s, unsigned id, uint64_t serial,
                    uint64_t rss);
  /* Every worker is down and none will start again. */
  void (*on_stopped)(tt_supervisor_t *s);
  /* Right before each spawn for slot `id`, with the options it will use
   * (the template, env with TETHER_WORKER_ID): the owner may set what
   * differs per slot, e.g. `pass_fds` and `handshake` (a cluster's
   * listening sockets); what they point to must live until the call's
   * tt_process_spawn returns, i.e. past this call. */
  void (*on_spawn)(tt_supervisor_t *s, unsigned id, tt_process_options_t *po);
  /* The size asked for by the last tt_supervisor_scale() is reached: every
   * added slot's first worker is running (or failed to start: status
   * TT_ERR_WORKER_INIT) and every removed slot's workers are down; or
   * TT_ERR_CLOSED when the supervisor stopped first.  Once per scale call
   * that was still waiting (later calls fold into one report). */
  void (*on_scale)(tt_supervisor_t *s, int status);

  /* private */
  uv_loop_t *loop;
  tt_supervisor_options_t opts;
  char *shutdown_message;
  char **env; /* template env + room for TETHER_WORKER_ID */
  size_t env_len;
  tt_slot_t **slots; /* nslots, each allocated once: incarnations point
                        to theirs, so growing must not move them */
  unsigned nslots;   /* ever made: opts.instances, then removed ones */
  unsigned scale_pending; /* scale calls waiting for on_scale */
  int scale_status;
  /* every incarnation not yet freed */
  TAILQ_HEAD(tt_incarnation_list, tt_incarnation_s) all;
  uint64_t serial;       /* last one given */
  unsigned flags;
  tt_logsink_t logs[3];
  int log_open[3];
  uv_timer_t memory_timer;
  uv_timer_t start_timer; /* first spawns, on the next loop iteration */
  tt_policy_t policy;       /* restart decisions, intensity, backoff */
  unsigned reload_next; /* slot being reloaded (1-based), 0 when idle */
  unsigned start_next;  /* first spawns done so far */
  int live;  /* incarnations not yet freed */
  int alive; /* incarnations not yet exited */
  int pending_closes;
  int log_error; /* after a failed start: the log (1, 2) that did not open */
  void (*close_cb)(tt_supervisor_t *s);
};

/* Copies what it needs from `opts` and starts the workers on the next loop
 * iteration.  On failure nothing needs closing. */
int tt_supervisor_start(uv_loop_t *loop, tt_supervisor_t *s,
                        const tt_supervisor_options_t *opts);

/* Graceful stop of every worker; nothing restarts; on_stopped follows.
 * Idempotent. */
void tt_supervisor_stop(tt_supervisor_t *s);
/* Rolling restart: for each slot in turn, a new worker is started and
 * once it is RUNNING the old one is stopped.  on_reload(0) when every slot
 * is done, or the error (a new worker failed to start: the old one keeps
 * running; TT_ERR_CLOSED when stopped meanwhile).  UV_EBUSY while one runs,
 * TT_ERR_CLOSED after stop. */
int tt_supervisor_reload(tt_supervisor_t *s);
/* Restarts one worker gracefully (reason STOP is not used: RELOAD).
 * UV_EBUSY while that worker is still starting (or being replaced),
 * UV_ESRCH when it is down or already stopping. */
int tt_supervisor_restart(tt_supervisor_t *s, unsigned id);

/* Queues a frame for slot `id`.  0, or TT_ERR_SERIALIZE (larger than the
 * workers' max_message, as tt_channel_check_size), TT_ERR_QUEUE_FULL,
 * TT_ERR_CLOSED, UV_EINVAL (bad id), UV_ENOMEM; then `cb` is not called.
 * timeout_ms 0: no limit. */
/* As tt_supervisor_send, with descriptor `fd` (the caller's stays open;
 * a duplicate waits with the frame). */
int tt_supervisor_send_fd(tt_supervisor_t *s, unsigned id, unsigned kind,
                          uint32_t frame_id, const void *payload, size_t len,
                          int fd, uint64_t timeout_ms, tt_channel_send_cb cb,
                          void *arg);
/* What tt_supervisor_send_fds would refuse at once, before anything is
 * made: 0, or its error (a caller freezes buffers only for a frame that
 * will be taken). */
int tt_supervisor_check_send(tt_supervisor_t *s, unsigned id, unsigned kind,
                             size_t len, unsigned nfds);
/* The same with `nfds` descriptors (fds NULL when 0). */
int tt_supervisor_send_fds(tt_supervisor_t *s, unsigned id, unsigned kind,
                           uint32_t frame_id, const void *payload, size_t len,
                           const int *fds, unsigned nfds, uint64_t timeout_ms,
                           tt_channel_send_cb cb, void *arg);
int tt_supervisor_send(tt_supervisor_t *s, unsigned id, unsigned kind,
                       uint32_t frame_id, const void *payload, size_t len,
                       uint64_t timeout_ms, tt_channel_send_cb cb, void *arg);

/* Starts a replacement for slot `id`'s running worker; once it is ready it
 * becomes the slot's worker and the old one is stopped (reason RELOAD), or
 * with keep_old left running, no longer the slot's, until the owner stops
 * it (tt_supervisor_stop_worker).  UV_EBUSY while one is pending, UV_ESRCH
 * when the slot has no running worker. */
int tt_supervisor_replace(tt_supervisor_t *s, unsigned id, int keep_old);
/* Per incarnation: stop (escalating as configured), signal, its channel
 * until it exited, its pid, its RSS in bytes (0: unknown).  UV_ESRCH once
 * it is gone.  `polite`: 0 SIGTERM now; 1 the shutdown message first
 * (SIGTERM after shutdown.timeout); TT_STOP_GRACE for a worker whose
 * channel ended, which is most often exiting already: it has up to
 * TT_STOP_GRACE_MS (or shutdown.timeout if shorter) to exit by itself, and
 * an exit meanwhile is told as it happened (a crash, an exit code), not as
 * `why`. */
#define TT_STOP_GRACE 2
#define TT_STOP_GRACE_MS 1000
int tt_supervisor_stop_worker(tt_supervisor_t *s, uint64_t serial,
                              tt_exit_reason_t why, int polite);
int tt_supervisor_kill_worker(tt_supervisor_t *s, uint64_t serial,
                              int signum);
tt_channel_t *tt_supervisor_worker_channel(tt_supervisor_t *s,
                                           uint64_t serial);
int tt_supervisor_worker_pid(tt_supervisor_t *s, uint64_t serial);
/* Changes the number of slots to `n` (1..100000).  Growing adds slots
 * (ids after the last) whose workers start on the next loop iteration;
 * a slot still stopping from an earlier shrink is taken back (its old
 * worker goes on stopping, detached, and a new one starts at once).
 * Shrinking removes the highest ids: their workers (a pending replacement
 * included) are stopped as by tt_supervisor_stop_worker(polite, reason
 * TT_EXIT_SCALE) and never restarted; their queued messages fail with
 * TT_ERR_CLOSED, and so do new sends to them.  on_scale tells when the
 * size is reached.  A reload in progress ends at the new last slot.
 * 0, UV_EINVAL (bad n), UV_ENOMEM (nothing changed), TT_ERR_CLOSED once
 * stopping. */
int tt_supervisor_scale(tt_supervisor_t *s, unsigned n);
/* What an owner may read once started: the number of slots and the
 * workers' max_message (the default resolved).  After a shrink the count
 * still includes a removed slot while a worker of it (or of a higher
 * removed slot) is still stopping, so that info() shows it STOPPING; once
 * they are down it is the size asked for. */
unsigned tt_supervisor_instances(const tt_supervisor_t *s);
size_t tt_supervisor_max_message(const tt_supervisor_t *s);
/* The worker did useful work (see exempt_worked). */
void tt_supervisor_mark_worked(tt_supervisor_t *s, uint64_t serial);

/* Once stopping: kill every worker still alive now (SIGKILL), without
 * waiting out the shutdown timeouts (a second Ctrl-C).  UV_EINVAL when not
 * stopping. */
int tt_supervisor_hurry(tt_supervisor_t *s);

/* Gives up now, as when the intensity limit is hit: on_give_up(why),
 * every worker stopped, nothing restarted (e.g. the owner learnt that the
 * workers' script cannot even load).  TT_ERR_CLOSED once stopping. */
int tt_supervisor_give_up(tt_supervisor_t *s, const char *why);

/* Sends a signal to slot `id`'s current worker. */
int tt_supervisor_kill(tt_supervisor_t *s, unsigned id, int signum);
int tt_supervisor_info(tt_supervisor_t *s, unsigned id, tt_worker_info_t *out);
/* Slot `id`'s current worker's state, cheaply (no /proc reads); DOWN for
 * one that exited, is waiting to restart, or a bad id. */
tt_worker_state_t tt_supervisor_state(tt_supervisor_t *s, unsigned id);
/* Re-opens the log files (after logrotate moved them). */
int tt_supervisor_reopen_logs(tt_supervisor_t *s);

/* Stops (if not stopped yet: no callbacks any more) and frees everything
 * once every worker ended: `cb` runs from the loop, never from inside this
 * call, when the memory may be freed.  Idempotent.  tt_supervisor_abandon
 * does the same without waiting for workers (they are SIGTERMed: the loop
 * is being torn down); it may follow a close that is still waiting. */
void tt_supervisor_close(tt_supervisor_t *s, void (*cb)(tt_supervisor_t *s));
void tt_supervisor_abandon(tt_supervisor_t *s,
                           void (*cb)(tt_supervisor_t *s));

#endif /* TT_SUPERVISOR_H */
