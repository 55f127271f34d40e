/*
 * tether backoff policy: exponential delays with a cap and jitter, shared by
 * request retries, supervisor restarts and pool re-runs.
 *
 * delay(attempt) = min(max, initial * factor^(attempt-1)), then a random
 * amount in [-jitter, +jitter] ms is added (never below 0).  attempt counts
 * from 1 (the delay before the first retry).
 */
#ifndef TT_BACKOFF_H
#define TT_BACKOFF_H

#include <stdint.h>

typedef struct {
  double initial_ms; /* first delay; default 100 */
  double max_ms;     /* cap; default 10000 */
  double factor;     /* growth per attempt; default 2 */
  double jitter_ms;  /* +- random spread; default initial/4 */
} tt_backoff_t;

/* Fills `b` with the defaults above. */
void tt_backoff_init(tt_backoff_t *b);
/* 0, or UV_EINVAL when a field is negative, the factor is below 1 or the
 * cap is below the initial delay. */
int tt_backoff_check(const tt_backoff_t *b);
/* The delay before retry number `attempt` (>= 1), in ms.  `seed` is the
 * caller's random state (any value to start; updated). */
uint64_t tt_backoff_delay(const tt_backoff_t *b, unsigned attempt,
                          uint64_t *seed);

#endif /* TT_BACKOFF_H */
