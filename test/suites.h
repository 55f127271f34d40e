/* Check suites aggregated by test/check_main.c (test/run_c_tests). */
#ifndef TT_TEST_SUITES_H
#define TT_TEST_SUITES_H

#include <check.h>

Suite *frame_suite(void);
Suite *error_suite(void);
Suite *backoff_suite(void);
Suite *policy_suite(void);
Suite *channel_suite(void);
Suite *process_suite(void);
Suite *supervisor_suite(void);
Suite *rpc_suite(void);
Suite *outbox_suite(void);
Suite *handles_suite(void);
Suite *redis_suite(void);
Suite *notify_suite(void);
Suite *logsink_suite(void);
Suite *zygote_suite(void);

#endif /* TT_TEST_SUITES_H */
