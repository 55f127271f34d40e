/* Unit tests for the restart policy (core/tt_policy.h): no loop, no
 * process; times are given. */
#include <check.h>
#include <uv.h>

#include "suites.h"
#include "tt_policy.h"

static tt_policy_options_t options(tt_restart_t restart, unsigned max,
                                   uint64_t within) {
  tt_policy_options_t o;
  o.restart = restart;
  o.max_restarts = max;
  o.within_ms = within;
  tt_backoff_init(&o.backoff);
  o.backoff.jitter_ms = 0;
  o.min_uptime_ms = 1000;
  o.exempt_worked = 0;
  return o;
}

START_TEST(test_restart_decisions) {
  /* reason x policy: 1 restart, 0 not (columns: always, on-failure, never) */
  static const struct {
    tt_exit_reason_t why;
    int always, on_failure, never;
  } table[] = {
      {TT_EXIT_EXIT, 1, 0, 0},         {TT_EXIT_CRASH, 1, 1, 0},
      {TT_EXIT_SIGNAL, 1, 1, 0},       {TT_EXIT_KILLED, 1, 1, 0},
      {TT_EXIT_SPAWN, 1, 1, 0},        {TT_EXIT_MEMORY, 1, 1, 0},
      {TT_EXIT_UNRESPONSIVE, 1, 1, 0}, {TT_EXIT_TIMEOUT, 1, 1, 0},
      {TT_EXIT_RELOAD, 1, 1, 1},       {TT_EXIT_STOP, 0, 0, 0},
      {TT_EXIT_SCALE, 0, 0, 0},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    const int want[3] = {table[i].always, table[i].on_failure, table[i].never};
    for (int r = 0; r < 3; r++) {
      tt_policy_t p;
      tt_policy_options_t o = options((tt_restart_t)r, 5, 1000);
      ck_assert_int_eq(tt_policy_init(&p, &o, 1), 0);
      ck_assert_msg(tt_policy_restarts(&p, table[i].why) == want[r],
                    "%s under policy %d", tt_exit_reason_name(table[i].why), r);
      tt_policy_free(&p);
    }
  }
}
END_TEST

START_TEST(test_intensity_is_a_sliding_window) {
  tt_policy_t p;
  tt_policy_options_t o = options(TT_RESTART_ALWAYS, 3, 1000);
  ck_assert_int_eq(tt_policy_init(&p, &o, 1), 0);
  /* three restarts within a second are allowed, a fourth is not */
  ck_assert_int_eq(tt_policy_charge(&p, 100), 1);
  ck_assert_int_eq(tt_policy_charge(&p, 200), 1);
  ck_assert_int_eq(tt_policy_charge(&p, 300), 1);
  ck_assert_int_eq(tt_policy_charge(&p, 1099), 0);
  /* a refused one is not counted: once the first leaves the window, one
   * more fits */
  ck_assert_int_eq(tt_policy_charge(&p, 1100), 1);
  ck_assert_int_eq(tt_policy_charge(&p, 1150), 0);
  ck_assert_int_eq(tt_policy_charge(&p, 1200), 1);
  ck_assert_int_eq(tt_policy_charge(&p, 1300), 1);
  /* spread out, any number is fine */
  for (uint64_t t = 10000; t < 100000; t += 400)
    ck_assert_int_eq(tt_policy_charge(&p, t), 1);
  tt_policy_free(&p);
}
END_TEST

START_TEST(test_zero_max_restarts_gives_up_at_once) {
  tt_policy_t p;
  tt_policy_options_t o = options(TT_RESTART_ALWAYS, 0, 60000);
  ck_assert_int_eq(tt_policy_init(&p, &o, 1), 0);
  ck_assert_int_eq(tt_policy_charge(&p, 0), 0);
  ck_assert_int_eq(tt_policy_charge(&p, 1000000), 0);
  tt_policy_free(&p);
}
END_TEST

START_TEST(test_delay_grows_and_healthy_runs_reset) {
  tt_policy_t p;
  tt_policy_options_t o = options(TT_RESTART_ALWAYS, 10, 60000);
  o.backoff.initial_ms = 100;
  o.backoff.max_ms = 1000;
  ck_assert_int_eq(tt_policy_init(&p, &o, 1), 0);
  ck_assert_uint_eq(tt_policy_delay(&p, 1), 100);
  ck_assert_uint_eq(tt_policy_delay(&p, 2), 200);
  ck_assert_uint_eq(tt_policy_delay(&p, 4), 800);
  ck_assert_uint_eq(tt_policy_delay(&p, 5), 1000);
  ck_assert_uint_eq(tt_policy_delay(&p, 0), 100); /* treated as the first */
  ck_assert_int_eq(tt_policy_healthy(&p, 1, 1000), 1);
  ck_assert_int_eq(tt_policy_healthy(&p, 1, 999), 0);
  ck_assert_int_eq(tt_policy_healthy(&p, 0, 100000), 0); /* never ready */
  tt_policy_free(&p);
}
END_TEST

START_TEST(test_bad_backoff_is_refused) {
  tt_policy_t p;
  tt_policy_options_t o = options(TT_RESTART_ALWAYS, 10, 60000);
  o.backoff.factor = 0.5;
  ck_assert_int_eq(tt_policy_init(&p, &o, 1), UV_EINVAL);
  o = options(TT_RESTART_ALWAYS, 10, 60000);
  o.backoff.initial_ms = 5000;
  o.backoff.max_ms = 10;
  ck_assert_int_eq(tt_policy_init(&p, &o, 1), UV_EINVAL);
}
END_TEST

START_TEST(test_reason_names) {
  ck_assert_str_eq(tt_exit_reason_name(TT_EXIT_KILLED), "killed");
  ck_assert_str_eq(tt_exit_reason_name(TT_EXIT_UNRESPONSIVE), "unresponsive");
  ck_assert_str_eq(tt_exit_reason_name((tt_exit_reason_t)999), "unknown");
}
END_TEST

/* Which restarts count: ready x worked x signaled, with and without
 * exempt_worked; a reload's never. */
START_TEST(test_which_restarts_count) {
  tt_policy_t p, q;
  tt_policy_options_t o = options(TT_RESTART_ALWAYS, 5, 1000);
  ck_assert_int_eq(tt_policy_init(&p, &o, 1), 0);
  o.exempt_worked = 1;
  ck_assert_int_eq(tt_policy_init(&q, &o, 1), 0);
  for (int ready = 0; ready < 2; ready++)
    for (int worked = 0; worked < 2; worked++)
      for (int sig = 0; sig < 2; sig++) {
        tt_exit_reason_t why = sig ? TT_EXIT_SIGNAL : TT_EXIT_CRASH;
        ck_assert_int_eq(tt_policy_counts(&p, why, ready, worked, sig), 1);
        ck_assert_int_eq(tt_policy_counts(&q, why, ready, worked, sig),
                         !(ready && (worked || sig)));
        ck_assert_int_eq(
            tt_policy_counts(&q, TT_EXIT_RELOAD, ready, worked, sig), 0);
      }
  tt_policy_free(&p);
  tt_policy_free(&q);
}
END_TEST

Suite *policy_suite(void) {
  Suite *s = suite_create("policy");
  TCase *tc = tcase_create("policy");
  tcase_add_test(tc, test_restart_decisions);
  tcase_add_test(tc, test_which_restarts_count);
  tcase_add_test(tc, test_intensity_is_a_sliding_window);
  tcase_add_test(tc, test_zero_max_restarts_gives_up_at_once);
  tcase_add_test(tc, test_delay_grows_and_healthy_runs_reset);
  tcase_add_test(tc, test_bad_backoff_is_refused);
  tcase_add_test(tc, test_reason_names);
  suite_add_tcase(s, tc);
  return s;
}
