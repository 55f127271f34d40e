/* Unit tests for the backoff policy (core/tt_backoff.h). */
#include <check.h>
#include <uv.h>

#include "suites.h"
#include "tt_backoff.h"

START_TEST(test_grows_exponentially_then_caps) {
  tt_backoff_t b = {.initial_ms = 10, .max_ms = 100, .factor = 2,
                    .jitter_ms = 0};
  uint64_t seed = 1;
  ck_assert_uint_eq(tt_backoff_delay(&b, 1, &seed), 10);
  ck_assert_uint_eq(tt_backoff_delay(&b, 2, &seed), 20);
  ck_assert_uint_eq(tt_backoff_delay(&b, 3, &seed), 40);
  ck_assert_uint_eq(tt_backoff_delay(&b, 4, &seed), 80);
  ck_assert_uint_eq(tt_backoff_delay(&b, 5, &seed), 100);
  ck_assert_uint_eq(tt_backoff_delay(&b, 1000000, &seed), 100);
}
END_TEST

START_TEST(test_jitter_stays_in_bounds_and_varies) {
  tt_backoff_t b = {.initial_ms = 100, .max_ms = 1000, .factor = 3,
                    .jitter_ms = 30};
  uint64_t seed = 42, lo = UINT64_MAX, hi = 0;
  for (int i = 0; i < 10000; i++) {
    uint64_t d = tt_backoff_delay(&b, 2, &seed); /* 300 +- 30 */
    ck_assert_uint_ge(d, 270);
    ck_assert_uint_le(d, 330);
    if (d < lo) lo = d;
    if (d > hi) hi = d;
  }
  ck_assert_uint_le(lo, 275); /* it really spreads */
  ck_assert_uint_ge(hi, 325);
}
END_TEST

START_TEST(test_jitter_never_goes_negative) {
  tt_backoff_t b = {.initial_ms = 1, .max_ms = 1, .factor = 1,
                    .jitter_ms = 50};
  uint64_t seed = 7;
  for (int i = 0; i < 1000; i++) ck_assert_uint_le(tt_backoff_delay(&b, 1, &seed), 51);
}
END_TEST

START_TEST(test_defaults_and_checks) {
  tt_backoff_t b;
  tt_backoff_init(&b);
  ck_assert_int_eq(tt_backoff_check(&b), 0);
  ck_assert(b.initial_ms > 0 && b.max_ms >= b.initial_ms && b.factor >= 1);
  b.factor = 0.5;
  ck_assert_int_eq(tt_backoff_check(&b), UV_EINVAL);
  tt_backoff_init(&b);
  b.max_ms = b.initial_ms - 1;
  ck_assert_int_eq(tt_backoff_check(&b), UV_EINVAL);
  tt_backoff_init(&b);
  b.jitter_ms = -1;
  ck_assert_int_eq(tt_backoff_check(&b), UV_EINVAL);
}
END_TEST

Suite *backoff_suite(void) {
  Suite *s = suite_create("backoff");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_grows_exponentially_then_caps);
  tcase_add_test(tc, test_jitter_stays_in_bounds_and_varies);
  tcase_add_test(tc, test_jitter_never_goes_negative);
  tcase_add_test(tc, test_defaults_and_checks);
  suite_add_tcase(s, tc);
  return s;
}
