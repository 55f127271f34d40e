/* Exponential backoff with a cap and jitter (see tt_backoff.h). */
#include "tt_backoff.h"
#include "tt_limits.h"

#include <math.h>
#include <uv.h>

void tt_backoff_init(tt_backoff_t *b) {
  b->initial_ms = TT_BACKOFF_DEFAULT_INITIAL_MS;
  b->max_ms = TT_BACKOFF_DEFAULT_MAX_MS;
  b->factor = TT_BACKOFF_DEFAULT_FACTOR;
  b->jitter_ms = TT_BACKOFF_DEFAULT_JITTER_MS;
}

int tt_backoff_check(const tt_backoff_t *b) {
  /* Finite and below ~285 million years, so the delay fits in a uint64. */
  const double limit = 9e15;
  if (!(b->initial_ms >= 0) || !(b->max_ms >= b->initial_ms) ||
      !(b->factor >= 1) || !(b->jitter_ms >= 0) || !(b->max_ms < limit) ||
      !(b->jitter_ms < limit) || !isfinite(b->factor))
    return UV_EINVAL;
  return 0;
}

/* xorshift64*: plenty for spreading retries, and no global state. */
static uint64_t next_random(uint64_t *s) {
  uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

uint64_t tt_backoff_delay(const tt_backoff_t *b, unsigned attempt,
                          uint64_t *seed) {
  double d = b->initial_ms;
  for (unsigned i = 1; i < attempt && d < b->max_ms; i++) d *= b->factor;
  if (d > b->max_ms) d = b->max_ms;
  if (b->jitter_ms > 0) {
    /* uniform in [-jitter, +jitter] */
    double u = (double)(next_random(seed) >> 11) / 9007199254740992.0;
    d += (2 * u - 1) * b->jitter_ms;
  }
  return d <= 0 ? 0 : (uint64_t)(d + 0.5);
}
