/* Tests of processes and request/response (core/tt_process.h,
 * core/tt_rpc.h) with real children: this binary run again (children.c). */
#include <check.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "loop_util.h"
#include "suites.h"
#include "tt_error.h"
#include "tt_process.h"
#include "tt_rpc.h"

typedef struct {
  int frames, exited, closed, disconnected, order_ok;
  int64_t status;
  int sig;
  char last[128];
  int in_order; /* send-exit: frames "0".."999" in order */
} run_t;

static void on_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload) {
  run_t *r = ch->data;
  char want[16];
  snprintf(want, sizeof want, "%d", r->frames);
  if (h->len == strlen(want) && memcmp(payload, want, h->len) == 0)
    r->in_order++;
  if (h->len < sizeof r->last) {
    memcpy(r->last, payload, h->len);
    r->last[h->len] = '\0';
  }
  r->frames++;
}

static void on_exit_cb(tt_process_t *p, int64_t status, int sig) {
  run_t *r = p->data;
  r->exited = 1;
  r->status = status;
  r->sig = sig;
  r->order_ok = !r->closed && (p->channel == NULL || r->disconnected);
}

static void on_disconnect(tt_process_t *p) { ((run_t *)p->data)->disconnected = 1; }
static void on_closed(tt_process_t *p) { ((run_t *)p->data)->closed = 1; }

static void start(uv_loop_t *loop, tt_process_t *p, run_t *r,
                  const char *child) {
  tt_process_options_t o;
  memset(r, 0, sizeof *r);
  tt_test_child_options(&o, child);
  ck_assert_int_eq(tt_process_spawn(loop, p, &o), 0);
  p->data = r;
  p->on_exit = on_exit_cb;
  p->on_disconnect = on_disconnect;
  p->on_closed = on_closed;
  if (p->channel) {
    p->channel->data = r;
    p->channel->on_frame = on_frame;
  }
}

START_TEST(test_echo_and_lifecycle_order) {
  uv_loop_t loop;
  tt_process_t p;
  run_t r;
  uv_loop_init(&loop);
  start(&loop, &p, &r, "echo");
  ck_assert_int_gt(p.pid, 0);
  ck_assert_int_eq(tt_channel_send(p.channel, TT_FRAME_MESSAGE, 0, "hi", 2,
                                   NULL, NULL), 1);
  tt_test_run_until(&loop, &r.frames, 10000);
  ck_assert_str_eq(r.last, "hi");
  ck_assert_int_eq(tt_channel_disconnect(p.channel), 0);
  tt_test_run_until(&loop, &r.closed, 10000);
  ck_assert_int_eq(r.status, 0);
  ck_assert_int_eq(r.sig, 0);
  ck_assert_int_eq(r.order_ok, 1); /* disconnect, exit, then closed */
  tt_process_close(&p, NULL);
  tt_test_loop_close(&loop);
}
END_TEST

/* Both sides of the environment contract (tt_handshake.h): the parent's
 * options become the child's handshake, which removes every variable; the
 * caller's own value wins over ours and over the `handshake` option's; the
 * channel fd is handed out once. */
static void handshake_run(char **env, const char *want) {
  uv_loop_t loop;
  tt_process_t p;
  tt_process_options_t o;
  run_t r;
  char *more[] = {"TETHER_POOL_CONCURRENCY=7", NULL};
  uv_loop_init(&loop);
  memset(&r, 0, sizeof r);
  tt_test_child_options(&o, "handshake");
  o.channel_options.max_message = 5000;
  o.env = env;
  o.handshake = more;
  ck_assert_int_eq(tt_process_spawn(&loop, &p, &o), 0);
  p.data = &r;
  p.on_exit = on_exit_cb;
  p.on_disconnect = on_disconnect;
  p.on_closed = on_closed;
  p.channel->data = &r;
  p.channel->on_frame = on_frame;
  tt_test_run_until(&loop, &r.closed, 10000);
  ck_assert_str_eq(r.last, want);
  tt_process_close(&p, NULL);
  tt_test_loop_close(&loop);
}

START_TEST(test_handshake_from_options) {
  char *env[] = {"TETHER_POOL_CONCURRENCY=3", "TETHER_DETACHED=1", NULL};
  char *env2[] = {"TETHER_DETACHED=1", NULL};
  handshake_run(env, "named=1 lines=0 max=5000 conc=3 det=1 parent=1 "
                     "left=0 again=-2");
  handshake_run(env2, "named=1 lines=0 max=5000 conc=7 det=1 parent=1 "
                      "left=0 again=-2");
}
END_TEST

START_TEST(test_exit_code_and_no_kill_after_reap) {
  uv_loop_t loop;
  tt_process_t p;
  run_t r;
  uv_loop_init(&loop);
  start(&loop, &p, &r, "exit3");
  tt_test_run_until(&loop, &r.closed, 10000);
  ck_assert_int_eq(r.status, 3);
  ck_assert_int_eq(tt_process_kill(&p, SIGTERM), UV_ESRCH);
  tt_process_close(&p, NULL);
  tt_test_loop_close(&loop);
}
END_TEST

START_TEST(test_everything_sent_before_exit_is_delivered) {
  uv_loop_t loop;
  tt_process_t p;
  run_t r;
  uv_loop_init(&loop);
  start(&loop, &p, &r, "send-exit");
  tt_test_run_until(&loop, &r.closed, 10000);
  ck_assert_int_eq(r.frames, 1000);
  ck_assert_int_eq(r.in_order, 1000);
  tt_process_close(&p, NULL);
  tt_test_loop_close(&loop);
}
END_TEST

START_TEST(test_failed_spawn_leaves_nothing) {
  uv_loop_t loop;
  tt_process_t p;
  tt_process_options_t o;
  char *argv[] = {"/nonexistent/program", NULL};
  uv_loop_init(&loop);
  memset(&o, 0, sizeof o);
  o.file = argv[0];
  o.args = argv;
  o.channel = 1;
  ck_assert_int_eq(tt_process_spawn(&loop, &p, &o), UV_ENOENT);
  tt_process_close(&p, NULL);
  tt_test_loop_close(&loop);
}
END_TEST

/* ---- rpc ---------------------------------------------------------------- */

typedef struct {
  int done, status;
  unsigned kind;
  char reply[32];
} call_t;

static void on_call(void *arg, int status, unsigned kind, const char *payload,
                    size_t len) {
  call_t *c = arg;
  c->done = 1;
  c->status = status;
  c->kind = kind;
  if (payload && len < sizeof c->reply) {
    memcpy(c->reply, payload, len);
    c->reply[len] = '\0';
  }
}

static void rpc_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                      const char *payload) {
  tt_rpc_dispatch(ch->data, h, payload);
}

static void setup_rpc(uv_loop_t *loop, tt_process_t *p, run_t *r,
                      tt_rpc_t *rpc, const char *child) {
  start(loop, p, r, child);
  tt_rpc_init(loop, rpc, p->channel);
  p->channel->data = rpc;
  p->channel->on_frame = rpc_frame;
}

START_TEST(test_call_gets_its_reply) {
  uv_loop_t loop;
  tt_process_t p;
  run_t r;
  tt_rpc_t rpc;
  call_t c = {0, 0, 0, ""};
  tt_call_options_t o;
  tt_rpc_stats_t st;
  uv_loop_init(&loop);
  setup_rpc(&loop, &p, &r, &rpc, "echo");
  memset(&o, 0, sizeof o);
  o.timeout_ms = 5000;
  ck_assert_int_eq(tt_rpc_call(&rpc, "ping?", 5, &o, on_call, &c), 0);
  ck_assert_int_eq(c.done, 0); /* never from inside call() */
  tt_test_run_until(&loop, &c.done, 10000);
  ck_assert_int_eq(c.status, 0);
  ck_assert_uint_eq(c.kind, TT_FRAME_REPLY);
  ck_assert_str_eq(c.reply, "ping?");
  tt_rpc_stats(&rpc, &st);
  ck_assert_uint_eq(st.replies, 1);
  tt_channel_disconnect(p.channel);
  tt_test_run_until(&loop, &r.closed, 10000);
  tt_rpc_close(&rpc, NULL);
  tt_process_close(&p, NULL);
  tt_test_loop_close(&loop);
}
END_TEST

START_TEST(test_call_times_out_and_retries) {
  uv_loop_t loop;
  tt_process_t p;
  run_t r;
  tt_rpc_t rpc;
  call_t c = {0, 0, 0, ""};
  tt_call_options_t o;
  tt_rpc_stats_t st;
  uv_loop_init(&loop);
  setup_rpc(&loop, &p, &r, &rpc, "silent"); /* never answers */
  memset(&o, 0, sizeof o);
  o.timeout_ms = 30;
  o.retries = 2;
  tt_backoff_init(&o.backoff);
  o.backoff.initial_ms = o.backoff.jitter_ms = 0;
  o.backoff.max_ms = 10;
  ck_assert_int_eq(tt_rpc_call(&rpc, "x", 1, &o, on_call, &c), 0);
  tt_test_run_until(&loop, &c.done, 10000);
  ck_assert_int_eq(c.status, TT_ERR_TIMEOUT);
  tt_rpc_stats(&rpc, &st);
  ck_assert_uint_eq(st.retries, 2);
  ck_assert_uint_eq(st.timeouts, 1);
  /* retries without a timeout are refused */
  o.timeout_ms = 0;
  ck_assert_int_eq(tt_rpc_call(&rpc, "x", 1, &o, on_call, &c), UV_EINVAL);
  tt_process_kill(&p, SIGKILL);
  tt_test_run_until(&loop, &r.closed, 10000);
  tt_rpc_close(&rpc, NULL);
  tt_process_close(&p, NULL);
  tt_test_loop_close(&loop);
}
END_TEST

START_TEST(test_calls_fail_when_the_channel_ends) {
  uv_loop_t loop;
  tt_process_t p;
  run_t r;
  tt_rpc_t rpc;
  call_t c = {0, 0, 0, ""};
  tt_call_options_t o;
  uv_loop_init(&loop);
  setup_rpc(&loop, &p, &r, &rpc, "silent");
  memset(&o, 0, sizeof o);
  ck_assert_int_eq(tt_rpc_call(&rpc, "x", 1, &o, on_call, &c), 0);
  tt_process_kill(&p, SIGKILL);
  tt_test_run_until(&loop, &r.disconnected, 10000);
  tt_rpc_fail_all(&rpc, TT_ERR_IPC_CHANNEL_CLOSED);
  ck_assert_int_eq(c.done, 1);
  ck_assert_int_eq(c.status, TT_ERR_IPC_CHANNEL_CLOSED);
  ck_assert_int_eq(tt_rpc_call(&rpc, "x", 1, &o, on_call, &c),
                   TT_ERR_IPC_CHANNEL_CLOSED);
  tt_test_run_until(&loop, &r.closed, 10000);
  tt_rpc_close(&rpc, NULL);
  tt_process_close(&p, NULL);
  tt_test_loop_close(&loop);
}
END_TEST

Suite *process_suite(void) {
  Suite *s = suite_create("process");
  TCase *tc = tcase_create("process");
  TCase *rp = tcase_create("rpc");
  tcase_set_timeout(tc, 30);
  tcase_set_timeout(rp, 30);
  tcase_add_test(tc, test_echo_and_lifecycle_order);
  tcase_add_test(tc, test_handshake_from_options);
  tcase_add_test(tc, test_exit_code_and_no_kill_after_reap);
  tcase_add_test(tc, test_everything_sent_before_exit_is_delivered);
  tcase_add_test(tc, test_failed_spawn_leaves_nothing);
  tcase_add_test(rp, test_call_gets_its_reply);
  tcase_add_test(rp, test_call_times_out_and_retries);
  tcase_add_test(rp, test_calls_fail_when_the_channel_ends);
  suite_add_tcase(s, tc);
  suite_add_tcase(s, rp);
  return s;
}
