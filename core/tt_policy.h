/*
 * tether restart policy: what a supervisor decides when a worker ends,
 * with no loop, no clock and no process of its own (the caller passes the
 * times), so every rule can be tested with a table.  As Erlang/OTP's
 * supervisor and s6's permafailon keep it apart from the machinery:
 *
 * - whether to restart: `restart` (ALWAYS, ON_FAILURE, NEVER) against why
 *   the worker ended;
 * - intensity: more than `max_restarts` restarts within `within_ms` and the
 *   supervisor gives up (a sliding window over the restarts that happened,
 *   charged when they happen; max_restarts 0 gives up at the first);
 * - backoff: the delay before a worker's n-th consecutive failed restart
 *   (tt_backoff.h); a run that got ready and lasted `min_uptime_ms` resets
 *   n.
 */
#ifndef TT_POLICY_H
#define TT_POLICY_H

#include <stdint.h>

#include "tt_backoff.h"

typedef enum {
  TT_RESTART_ALWAYS = 0, /* any exit we did not ask for */
  TT_RESTART_ON_FAILURE, /* non-zero exit, signal, watchdog */
  TT_RESTART_NEVER
} tt_restart_t;

/* Why a worker ended.  The first group is found from the exit status, the
 * second is what the supervisor stopped it for. */
#define TT_EXIT_REASON_MAP(XX)                                                \
  XX(NONE, "none")                                                            \
  XX(EXIT, "exit")       /* exit code 0 */                                    \
  XX(CRASH, "crash")     /* non-zero exit code */                             \
  XX(SIGNAL, "signal")   /* killed by a signal */                             \
  XX(KILLED, "killed")   /* SIGKILL tether did not send: the OOM killer? */   \
  XX(SPAWN, "spawn")     /* could not be started */                           \
  XX(MEMORY, "memory")   /* RSS over max_memory */                            \
  XX(UNRESPONSIVE, "unresponsive") /* heartbeat or start timeout */           \
  XX(RELOAD, "reload")   /* replaced by a rolling reload */                   \
  XX(STOP, "stop")       /* the supervisor stopped it */                      \
  XX(RETIRED, "retired") /* replaced after its work (pools: recycling) */     \
  XX(TIMEOUT, "timeout") /* stopped by its owner: a task took too long */ \
  XX(SCALE, "scale")     /* its slot was removed (tt_supervisor_scale) */

typedef enum {
#define XX(name, _) TT_EXIT_##name,
  TT_EXIT_REASON_MAP(XX)
#undef XX
  TT__EXIT_COUNT
} tt_exit_reason_t;

const char *tt_exit_reason_name(tt_exit_reason_t r);

typedef struct {
  tt_restart_t restart;
  unsigned max_restarts; /* in any window of within_ms */
  uint64_t within_ms;
  tt_backoff_t backoff;
  uint64_t min_uptime_ms;
  /* Runs that got ready and did useful work (or were killed by a signal
   * while they could have been doing it) are not failures: their restarts
   * are neither counted nor delayed (a pool's worker dying mid-task is the
   * task's failure, not a failing start). */
  int exempt_worked;
} tt_policy_options_t;

typedef struct {
  tt_policy_options_t opts;
  /* private: the times of the last max_restarts restarts, a ring */
  uint64_t *times;
  unsigned head, count;
  uint64_t seed;
} tt_policy_t;

/* 0, UV_EINVAL (a bad backoff) or UV_ENOMEM; `seed` feeds the jitter.
 * On failure nothing needs freeing. */
int tt_policy_init(tt_policy_t *p, const tt_policy_options_t *o,
                   uint64_t seed);
void tt_policy_free(tt_policy_t *p);

/* Whether a worker that ended for `why` is restarted.  A worker restarted
 * on request (RELOAD) always is; one stopped by its supervisor (STOP)
 * never. */
int tt_policy_restarts(const tt_policy_t *p, tt_exit_reason_t why);

/* Charges one restart at `now_ms` against the intensity window: 1 when it
 * may happen (it is counted), 0 when it would be one too many (it is not
 * counted: give up). */
int tt_policy_charge(tt_policy_t *p, uint64_t now_ms);

/* The delay before a worker's restart, `failures` (>= 1) being its count
 * of consecutive failed runs including this one. */
uint64_t tt_policy_delay(tt_policy_t *p, unsigned failures);

/* Whether the restart after a run that ended for `why` counts: charged
 * against the intensity window and delayed by the backoff.  A restart on
 * request (RELOAD) never does; see exempt_worked for the others. */
int tt_policy_counts(const tt_policy_t *p, tt_exit_reason_t why, int ready,
                     int worked, int signaled);
/* Whether a run resets the worker's failure count: it got ready and ran
 * at least min_uptime_ms. */
int tt_policy_healthy(const tt_policy_t *p, int ready, uint64_t uptime_ms);

#endif /* TT_POLICY_H */
