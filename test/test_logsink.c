/* Tests of the log sink's rotation (core/tt_logsink.h): whole lines per
 * file, no file past max_size (unless one line alone is), `keep` old
 * files, keep 0 truncating, and a rotation that fails reported and
 * survived. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loop_util.h"
#include "suites.h"
#include "tt_logsink.h"

typedef struct {
  int closed, troubles, last_err;
  char op[16];
} seen_t;

static char dir[64];

static void make_dir(void) {
  snprintf(dir, sizeof dir, "/tmp/tt-logsink-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void remove_dir(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static void on_trouble(tt_logsink_t *ls, int err, uint64_t dropped) {
  seen_t *x = ls->data;
  (void)dropped;
  x->troubles++;
  x->last_err = err;
  snprintf(x->op, sizeof x->op, "%s", ls->failed_op);
}

static void on_closed(tt_logsink_t *ls) { ((seen_t *)ls->data)->closed = 1; }

static void sink_open(uv_loop_t *loop, tt_logsink_t *ls, seen_t *x,
                      const char *path, uint64_t max, unsigned keep) {
  memset(ls, 0, sizeof *ls);
  memset(x, 0, sizeof *x);
  ls->data = x;
  ls->on_trouble = on_trouble;
  ck_assert_int_eq(tt_logsink_open(loop, ls, path), 0);
  ck_assert_int_eq(tt_logsink_rotate(ls, max, keep), 0);
}

static void sink_close(uv_loop_t *loop, tt_logsink_t *ls, seen_t *x) {
  tt_logsink_close(ls, on_closed);
  tt_test_run_until(loop, &x->closed, 5000);
}

/* Lines first..last ("line NNN\n", 9 bytes each) in writes of 1 to 7
 * lines, as a worker's output comes. */
static void write_lines(tt_logsink_t *ls, int first, int last) {
  char buf[128];
  int i = first, k = 1;
  while (i <= last) {
    size_t len = 0;
    for (int j = 0; j < k && i <= last; j++, i++)
      len += (size_t)snprintf(buf + len, sizeof buf - len, "line %03d\n", i);
    tt_logsink_write(ls, buf, len);
    k = k % 7 + 1;
  }
}

static char *slurp(const char *path) {
  static char buf[8192];
  FILE *f = fopen(path, "r");
  size_t n;
  if (f == NULL) return NULL;
  n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

/* The file holds exactly lines first..last. */
static void expect_lines(const char *path, int first, int last) {
  char want[8192];
  size_t len = 0;
  char *got = slurp(path);
  ck_assert_msg(got != NULL, "%s is missing", path);
  for (int i = first; i <= last; i++)
    len += (size_t)snprintf(want + len, sizeof want - len, "line %03d\n", i);
  ck_assert_str_eq(got, want);
}

static int exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

START_TEST(test_rotation_keeps_whole_lines_and_keep_files) {
  uv_loop_t loop;
  tt_logsink_t ls;
  seen_t x;
  char path[128], old[160];
  make_dir();
  uv_loop_init(&loop);
  snprintf(path, sizeof path, "%s/out.log", dir);
  sink_open(&loop, &ls, &x, path, 100, 2);
  write_lines(&ls, 0, 49); /* 450 bytes, 11 lines (99 bytes) per file */
  ck_assert_uint_eq(tt_logsink_rotations(&ls), 4);
  sink_close(&loop, &ls, &x);
  ck_assert_int_eq(x.troubles, 0);
  expect_lines(path, 44, 49);
  snprintf(old, sizeof old, "%s.1", path);
  expect_lines(old, 33, 43);
  snprintf(old, sizeof old, "%s.2", path);
  expect_lines(old, 22, 32);
  snprintf(old, sizeof old, "%s.3", path);
  ck_assert(!exists(old)); /* keep = 2: the older ones were dropped */

  /* reopened later: the size it has counts */
  sink_open(&loop, &ls, &x, path, 100, 2);
  write_lines(&ls, 50, 55); /* 54 + 54 > 100: 5 fit, then a fresh file */
  ck_assert_uint_eq(tt_logsink_rotations(&ls), 1);
  sink_close(&loop, &ls, &x);
  expect_lines(path, 55, 55);
  snprintf(old, sizeof old, "%s.1", path);
  {
    char *got = slurp(old);
    ck_assert_ptr_nonnull(got);
    ck_assert_uint_eq(strlen(got), 99);
  }
  tt_test_loop_close(&loop);
  remove_dir();
}
END_TEST

START_TEST(test_rotation_keep_zero_truncates) {
  uv_loop_t loop;
  tt_logsink_t ls;
  seen_t x;
  char path[128], old[160];
  make_dir();
  uv_loop_init(&loop);
  snprintf(path, sizeof path, "%s/out.log", dir);
  sink_open(&loop, &ls, &x, path, 100, 0);
  write_lines(&ls, 0, 49);
  ck_assert_uint_eq(tt_logsink_rotations(&ls), 4);
  sink_close(&loop, &ls, &x);
  ck_assert_int_eq(x.troubles, 0);
  expect_lines(path, 44, 49);
  snprintf(old, sizeof old, "%s.1", path);
  ck_assert(!exists(old));
  tt_test_loop_close(&loop);
  remove_dir();
}
END_TEST

/* A line longer than max_size is not cut: it gets a file of its own. */
START_TEST(test_rotation_long_line_alone) {
  uv_loop_t loop;
  tt_logsink_t ls;
  seen_t x;
  char path[128], old[160], buf[128], line[52];
  make_dir();
  uv_loop_init(&loop);
  snprintf(path, sizeof path, "%s/out.log", dir);
  memset(line, 'L', 50);
  line[50] = '\n';
  line[51] = '\0';
  snprintf(buf, sizeof buf, "short\n%safter\n", line);
  sink_open(&loop, &ls, &x, path, 20, 3);
  tt_logsink_write(&ls, buf, strlen(buf));
  ck_assert_uint_eq(tt_logsink_rotations(&ls), 2);
  sink_close(&loop, &ls, &x);
  ck_assert_str_eq(slurp(path), "after\n");
  snprintf(old, sizeof old, "%s.1", path);
  ck_assert_str_eq(slurp(old), line);
  snprintf(old, sizeof old, "%s.2", path);
  ck_assert_str_eq(slurp(old), "short\n");
  ck_assert_int_eq(tt_logsink_rotate(&ls, 10, TT_LOGSINK_MAX_KEEP + 1),
                   UV_EINVAL);
  tt_test_loop_close(&loop);
  remove_dir();
}
END_TEST

/* path.1 cannot be replaced (a directory is there): the failure is
 * reported as a rotation's, once per max_size, and no line is lost. */
START_TEST(test_rotation_failure_is_reported_and_survived) {
  uv_loop_t loop;
  tt_logsink_t ls;
  seen_t x;
  char path[128], old[160];
  make_dir();
  uv_loop_init(&loop);
  snprintf(path, sizeof path, "%s/out.log", dir);
  snprintf(old, sizeof old, "%s.1", path);
  ck_assert_int_eq(mkdir(old, 0755), 0);
  snprintf(old, sizeof old, "%s.1/x", path);
  ck_assert_int_eq(mkdir(old, 0755), 0); /* rename() cannot replace it */
  sink_open(&loop, &ls, &x, path, 100, 1);
  write_lines(&ls, 0, 49);
  ck_assert_uint_eq(tt_logsink_rotations(&ls), 0);
  ck_assert_int_ge(x.troubles, 1);
  ck_assert_int_le(x.troubles, 4);
  ck_assert_int_lt(x.last_err, 0);
  ck_assert_str_eq(x.op, "rotate");
  sink_close(&loop, &ls, &x);
  expect_lines(path, 0, 49);
  tt_test_loop_close(&loop);
  remove_dir();
}
END_TEST

Suite *logsink_suite(void) {
  Suite *s = suite_create("logsink");
  TCase *tc = tcase_create("rotation");
  tcase_add_test(tc, test_rotation_keeps_whole_lines_and_keep_files);
  tcase_add_test(tc, test_rotation_keep_zero_truncates);
  tcase_add_test(tc, test_rotation_long_line_alone);
  tcase_add_test(tc, test_rotation_failure_is_reported_and_survived);
  suite_add_tcase(s, tc);
  return s;
}
