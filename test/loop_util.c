/* Loop helpers for the C tests: see loop_util.h. */
#include "loop_util.h"

#include <check.h>
#include <string.h>
#include <unistd.h>

/* A callback that sets the flag may run at the start of an iteration (a
 * timer), after which uv_run(UV_RUN_ONCE) would block in poll until the next
 * event: the ticker bounds every wait, so the flag is seen within a tick. */
static void on_tick(uv_timer_t *t) { (void)t; }

static void run(uv_loop_t *loop, const int *flag, int n, unsigned ms) {
  uv_timer_t ticker;
  uint64_t deadline = uv_hrtime() + (uint64_t)ms * 1000000u;
  int expired = 0;
  uv_timer_init(loop, &ticker);
  uv_timer_start(&ticker, on_tick, 5, 5);
  uv_unref((uv_handle_t *)&ticker);
  for (;;) {
    int more;
    if (flag != NULL && *flag >= n) break;
    if (uv_hrtime() > deadline) {
      expired = 1;
      break;
    }
    more = uv_run(loop, UV_RUN_ONCE);
    if (flag == NULL && !more) break;
  }
  uv_close((uv_handle_t *)&ticker, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  ck_assert_msg(!expired, "the loop did not settle within %u ms", ms);
}

void tt_test_run_until(uv_loop_t *loop, const int *flag, unsigned ms) {
  run(loop, flag, 1, ms);
}

void tt_test_run_until_n(uv_loop_t *loop, const int *counter, int n,
                         unsigned ms) {
  run(loop, counter, n, ms);
}

void tt_test_run_dry(uv_loop_t *loop, unsigned ms) { run(loop, NULL, 0, ms); }

static void count_open(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h)) {
    (*(int *)arg)++;
    uv_close(h, NULL);
  }
}

void tt_test_loop_close(uv_loop_t *loop) {
  int open = 0;
  uv_walk(loop, count_open, &open);
  uv_run(loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(loop), 0);
  ck_assert_msg(open == 0, "%d handle(s) left open", open);
}

char **tt_test_child_argv(const char *name) {
  static char exe[4096], flag[] = "--child", nm[64];
  static char *argv[4];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  ck_assert_int_gt(n, 0);
  exe[n] = '\0';
  snprintf(nm, sizeof nm, "%s", name);
  argv[0] = exe;
  argv[1] = flag;
  argv[2] = nm;
  argv[3] = NULL;
  return argv;
}

void tt_test_child_options(tt_process_options_t *o, const char *name) {
  memset(o, 0, sizeof *o);
  o->args = tt_test_child_argv(name);
  o->file = o->args[0];
  o->channel = 1;
  o->stdio[0] = TT_STDIO_IGNORE;
}
