/*
 * Helpers for C tests that drive a real libuv loop: a loop per test, run
 * until a condition holds (or fail after a bound), and children that are
 * this test binary run again with "--child NAME" (test/children.c), as
 * libuv's own IPC tests do.
 */
#ifndef TT_TEST_LOOP_UTIL_H
#define TT_TEST_LOOP_UTIL_H

#include <uv.h>

#include "tt_process.h"

/* Runs `loop` until *flag is non-zero, failing the test after `ms`. */
void tt_test_run_until(uv_loop_t *loop, const int *flag, unsigned ms);
/* Runs `loop` until *counter >= n, failing the test after `ms`. */
void tt_test_run_until_n(uv_loop_t *loop, const int *counter, int n,
                         unsigned ms);
/* Runs `loop` until it has nothing left to do, failing after `ms`. */
void tt_test_run_dry(uv_loop_t *loop, unsigned ms);
/* Closes every handle left and the loop; fails if a handle was still open
 * (a leak in the code under test). */
void tt_test_loop_close(uv_loop_t *loop);

/* argv for this binary as child NAME (static storage, NULL-terminated). */
char **tt_test_child_argv(const char *name);
/* Options to spawn child NAME with a channel. */
void tt_test_child_options(tt_process_options_t *o, const char *name);

/* The children: returns the exit status (test/children.c). */
int tt_test_child_main(const char *name);

#endif
