/*
 * Restart policy: see tt_policy.h.
 *
 * Invariant: times[] holds the last `count` charged restarts (count <=
 * max_restarts), the oldest at times[head] once the ring is full.
 */
#include "tt_policy.h"

#include <stdlib.h>
#include <uv.h>

static const char *const reason_names[] = {
#define XX(_, s) s,
    TT_EXIT_REASON_MAP(XX)
#undef XX
};

const char *tt_exit_reason_name(tt_exit_reason_t r) {
  return (unsigned)r < TT__EXIT_COUNT ? reason_names[r] : "unknown";
}

int tt_policy_init(tt_policy_t *p, const tt_policy_options_t *o,
                   uint64_t seed) {
  int err;
  p->opts = *o;
  p->times = NULL;
  p->head = p->count = 0;
  p->seed = seed;
  if ((err = tt_backoff_check(&o->backoff)) != 0) return err;
  if (o->max_restarts > 0) {
    p->times = calloc(o->max_restarts, sizeof *p->times);
    if (p->times == NULL) return UV_ENOMEM;
  }
  return 0;
}

void tt_policy_free(tt_policy_t *p) {
  free(p->times);
  p->times = NULL;
}

int tt_policy_restarts(const tt_policy_t *p, tt_exit_reason_t why) {
  switch (why) {
  case TT_EXIT_RELOAD:
    return 1;
  case TT_EXIT_STOP:
  case TT_EXIT_SCALE:
    return 0;
  case TT_EXIT_EXIT:
    return p->opts.restart == TT_RESTART_ALWAYS;
  default:
    return p->opts.restart != TT_RESTART_NEVER;
  }
}

int tt_policy_charge(tt_policy_t *p, uint64_t now) {
  unsigned max = p->opts.max_restarts;
  if (max == 0) return 0;
  if (p->count == max && now - p->times[p->head] < p->opts.within_ms)
    return 0;
  p->times[p->head] = now;
  p->head = (p->head + 1) % max;
  if (p->count < max) p->count++;
  return 1;
}

uint64_t tt_policy_delay(tt_policy_t *p, unsigned failures) {
  return tt_backoff_delay(&p->opts.backoff, failures ? failures : 1, &p->seed);
}

int tt_policy_healthy(const tt_policy_t *p, int ready, uint64_t uptime_ms) {
  return ready && uptime_ms >= p->opts.min_uptime_ms;
}

int tt_policy_counts(const tt_policy_t *p, tt_exit_reason_t why, int ready,
                     int worked, int signaled) {
  if (why == TT_EXIT_RELOAD) return 0;
  return !(p->opts.exempt_worked && ready && (worked || signaled));
}
