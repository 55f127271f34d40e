/*
 * Single Check runner for tether's C unit tests.
 *
 * Build (from the repository root):
 *   gcc -std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Werror -Icore test/check_main.c test/test_frame.c test/test_error.c core/frame.c core/error.c $(pkg-config --cflags --libs check libuv) -o test/run_c_tests
 * Sanitizers: add -fsanitize=address,undefined -fno-omit-frame-pointer.
 * Valgrind:   CK_TIMEOUT_MULTIPLIER=20 valgrind --leak-check=full \
 *               --errors-for-leak-kinds=definite --error-exitcode=99 \
 *               test/run_c_tests
 *
 * Each test runs in its own forked process with a timeout (CK_FORK, Check's
 * default).  The usual Check environment variables apply: CK_VERBOSITY,
 * CK_RUN_SUITE, CK_RUN_CASE, CK_EXCLUDE_CASE, CK_TAP_LOG_FILE_NAME,
 * CK_XML_LOG_FILE_NAME (per-test durations), CK_FORK=no.
 * Exit status: 0 when every test passed, 1 otherwise.
 */
#include <stdlib.h>
#include <string.h>

#include "loop_util.h"
#include "suites.h"

int main(int argc, char **argv) {
  SRunner *sr;
  int failed;
  /* run again as a test's child (test/children.c) */
  if (argc == 3 && strcmp(argv[1], "--child") == 0)
    return tt_test_child_main(argv[2]);
  sr = srunner_create(frame_suite());

  srunner_add_suite(sr, error_suite());
  srunner_add_suite(sr, backoff_suite());
  srunner_add_suite(sr, policy_suite());
  srunner_add_suite(sr, channel_suite());
  srunner_add_suite(sr, process_suite());
  srunner_add_suite(sr, rpc_suite());
  srunner_add_suite(sr, outbox_suite());
  srunner_add_suite(sr, handles_suite());
  srunner_add_suite(sr, redis_suite());
  srunner_add_suite(sr, supervisor_suite());
  srunner_add_suite(sr, notify_suite());
  srunner_add_suite(sr, logsink_suite());
  srunner_add_suite(sr, zygote_suite());
  srunner_run_all(sr, CK_ENV); /* CK_VERBOSITY, defaulting to CK_NORMAL */
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
