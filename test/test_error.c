/* Unit tests for core/error.c: names, descriptions and ranges of the codes. */
#include <limits.h>
#include <stddef.h>
#include <string.h>

#include <uv.h>

#include "suites.h"
#include "tt_error.h"

/* Spelled out on purpose rather than generated from TT_ERR_MAP, so a renamed,
 * reordered or dropped entry in the map makes a test fail. */
static const struct {
  int code;
  const char *name;
} own_codes[] = {
    {TT_ERR_IPC_CHANNEL_CLOSED, "ERR_IPC_CHANNEL_CLOSED"},
    {TT_ERR_IPC_DISCONNECTED, "ERR_IPC_DISCONNECTED"},
    {TT_ERR_IPC_PROTOCOL, "ERR_IPC_PROTOCOL"},
    {TT_ERR_SERIALIZE, "ERR_SERIALIZE"},
    {TT_ERR_TIMEOUT, "ERR_TIMEOUT"},
    {TT_ERR_WORKER_INIT, "ERR_WORKER_INIT"},
    {TT_ERR_WORKER_CRASH, "ERR_WORKER_CRASH"},
    {TT_ERR_WORKER_UNCAUGHT, "ERR_WORKER_UNCAUGHT"},
    {TT_ERR_TASK_FAILED, "ERR_TASK_FAILED"},
    {TT_ERR_QUEUE_FULL, "ERR_QUEUE_FULL"},
    {TT_ERR_CLOSED, "ERR_CLOSED"},
    {TT_ERR_NO_CHANNEL, "ERR_NO_CHANNEL"},
    {TT_ERR_NO_COROUTINE, "ERR_NO_COROUTINE"},
    {TT_ERR_NO_HANDLER, "ERR_NO_HANDLER"},
    {TT_ERR_HANDLE_NOT_RECEIVED, "ERR_HANDLE_NOT_RECEIVED"},
    {TT_ERR_NOT_CLUSTER, "ERR_NOT_CLUSTER"},
    {TT_ERR_BROKER_DOWN, "ERR_BROKER_DOWN"},
    {TT_ERR_BROKER, "ERR_BROKER"},
};
#define N_OWN (sizeof own_codes / sizeof own_codes[0])

/* Every libuv error code, from libuv's own list. */
static const struct {
  int code;
  const char *name;
} uv_codes[] = {
#define XX(name, _) {UV_##name, #name},
    UV_ERRNO_MAP(XX)
#undef XX
};
#define N_UV (sizeof uv_codes / sizeof uv_codes[0])

static int is_listed_own(int err) {
  for (size_t i = 0; i < N_OWN; i++)
    if (own_codes[i].code == err) return 1;
  return 0;
}

START_TEST(test_table_is_complete) {
  /* The literal table above covers the whole enum: a new code needs a test. */
  ck_assert_int_eq((int)N_OWN, TT__ERR_COUNT);
  ck_assert_int_eq(TT__ERR_LAST, TT__ERR_BASE - TT__ERR_COUNT);
  size_t n = 0;
#define XX(name, _) n++;
  TT_ERR_MAP(XX)
#undef XX
  ck_assert_uint_eq(n, N_OWN);
}
END_TEST

START_TEST(test_own_names) {
  for (size_t i = 0; i < N_OWN; i++)
    ck_assert_msg(strcmp(tt_err_name(own_codes[i].code), own_codes[i].name) ==
                      0,
                  "tt_err_name(%d) = \"%s\", want \"%s\"", own_codes[i].code,
                  tt_err_name(own_codes[i].code), own_codes[i].name);
}
END_TEST

START_TEST(test_uv_names) {
  ck_assert_str_eq(tt_err_name(UV_ENOENT), "ENOENT");
  ck_assert_str_eq(tt_err_name(UV_EAGAIN), "EAGAIN");
  ck_assert_str_eq(tt_err_name(UV_EOF), "EOF");
  ck_assert_str_eq(tt_err_name(UV_ENOMEM), "ENOMEM");
  for (size_t i = 0; i < N_UV; i++) {
    ck_assert_msg(strcmp(tt_err_name(uv_codes[i].code), uv_codes[i].name) == 0,
                  "tt_err_name(%d) = \"%s\", want \"%s\"", uv_codes[i].code,
                  tt_err_name(uv_codes[i].code), uv_codes[i].name);
    /* Known codes only: uv_err_name() leaks for unknown ones. */
    ck_assert_str_eq(tt_err_name(uv_codes[i].code),
                     uv_err_name(uv_codes[i].code));
  }
}
END_TEST

START_TEST(test_unknown_names) {
  static const int unknown[] = {0,
                                1,
                                -1 - 0x7fff, /* not an errno anywhere */
                                -999999,
                                TT__ERR_BASE, /* just above the range */
                                TT__ERR_LAST - 1, /* just below it */
                                INT_MIN,
                                INT_MAX};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    ck_assert_msg(strcmp(tt_err_name(unknown[i]), "UNKNOWN") == 0,
                  "tt_err_name(%d) = \"%s\", want \"UNKNOWN\"", unknown[i],
                  tt_err_name(unknown[i]));
    ck_assert_str_eq(tt_strerror(unknown[i]), "unknown error");
  }
}
END_TEST

START_TEST(test_strerror_non_empty) {
  for (size_t i = 0; i < N_OWN; i++) {
    const char *s = tt_strerror(own_codes[i].code);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(s[0] != '\0', "empty description for %s", own_codes[i].name);
    ck_assert_str_ne(s, "unknown error");
    /* Descriptions are distinct: each one says something specific. */
    for (size_t j = 0; j < i; j++)
      ck_assert_str_ne(s, tt_strerror(own_codes[j].code));
  }
  ck_assert_str_eq(tt_strerror(TT_ERR_TIMEOUT), "operation timed out");
  for (size_t i = 0; i < N_UV; i++) {
    const char *s = tt_strerror(uv_codes[i].code);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(s[0] != '\0', "empty description for %s", uv_codes[i].name);
    ck_assert_str_eq(s, uv_strerror(uv_codes[i].code));
  }
}
END_TEST

START_TEST(test_is_own_exact_range) {
  for (size_t i = 0; i < N_OWN; i++)
    ck_assert_msg(tt_err_is_own(own_codes[i].code), "%s not own",
                  own_codes[i].name);
  for (size_t i = 0; i < N_UV; i++)
    ck_assert_msg(!tt_err_is_own(uv_codes[i].code), "UV_%s is own",
                  uv_codes[i].name);
  /* Exactly the listed codes, over a window well around the tether range. */
  for (int err = TT__ERR_BASE - 1000; err <= 1000; err++)
    if (tt_err_is_own(err) != is_listed_own(err))
      ck_abort_msg("tt_err_is_own(%d) = %d", err, tt_err_is_own(err));
  ck_assert(!tt_err_is_own(INT_MIN));
  ck_assert(!tt_err_is_own(INT_MAX));
  ck_assert(!tt_err_is_own(TT__ERR_BASE));
  ck_assert(!tt_err_is_own(TT__ERR_LAST - 1));
  ck_assert(tt_err_is_own(TT__ERR_LAST)); /* the lowest code itself */
}
END_TEST

START_TEST(test_own_distinct_from_uv) {
  for (size_t i = 0; i < N_OWN; i++) {
    ck_assert_int_lt(own_codes[i].code, 0);
    for (size_t j = 0; j < i; j++)
      ck_assert_int_ne(own_codes[i].code, own_codes[j].code);
    for (size_t j = 0; j < N_UV; j++)
      ck_assert_msg(own_codes[i].code != uv_codes[j].code, "%s == UV_%s (%d)",
                    own_codes[i].name, uv_codes[j].name, own_codes[i].code);
  }
  /* No libuv code falls anywhere near tether's reserved window either, on
   * whichever side of TT__ERR_BASE the codes end up. */
  for (size_t j = 0; j < N_UV; j++)
    ck_assert_msg(uv_codes[j].code < TT__ERR_BASE - 1000 ||
                      uv_codes[j].code > TT__ERR_BASE + 1000,
                  "UV_%s (%d) inside tether's reserved window",
                  uv_codes[j].name, uv_codes[j].code);
}
END_TEST

/* tt_error.h: "tether's own failures live in a reserved range below
 * TT__ERR_BASE" (-30000), from TT__ERR_BASE - 1 downwards in map order
 * ("appending keeps old values").  (An earlier tt_error.h counted up from
 * the base, giving -29999 .. -29986; this test caught it.) */
START_TEST(test_own_below_base) {
  for (size_t i = 0; i < N_OWN; i++) {
    ck_assert_msg(own_codes[i].code < TT__ERR_BASE && own_codes[i].code < -30000,
                  "%s = %d is not below TT__ERR_BASE (%d)", own_codes[i].name,
                  own_codes[i].code, TT__ERR_BASE);
    ck_assert_int_eq(own_codes[i].code, TT__ERR_BASE - 1 - (int)i);
  }
  ck_assert_int_eq(TT_ERR_IPC_CHANNEL_CLOSED, -30001);
  ck_assert_int_eq(TT_ERR_NO_HANDLER, -30014);
}
END_TEST

Suite *error_suite(void) {
  Suite *s = suite_create("error");
  TCase *tc = tcase_create("codes");
  tcase_add_test(tc, test_table_is_complete);
  tcase_add_test(tc, test_own_names);
  tcase_add_test(tc, test_uv_names);
  tcase_add_test(tc, test_unknown_names);
  tcase_add_test(tc, test_strerror_non_empty);
  tcase_add_test(tc, test_is_own_exact_range);
  tcase_add_test(tc, test_own_distinct_from_uv);
  tcase_add_test(tc, test_own_below_base);
  suite_add_tcase(s, tc);
  return s;
}
