/* Tests of the supervisor and the pool (core/tt_supervisor.h,
 * core/tt_pool.h) with real children (children.c): restarts and giving up,
 * shutdown escalation, readiness, task dispatch. */
#include <check.h>
#include <fcntl.h>
#include <unistd.h>
#include <signal.h>
#include <string.h>

#include "loop_util.h"
#include "suites.h"
#include "tt_error.h"
#include "tt_pool.h"
#include "tt_supervisor.h"

typedef struct {
  int starts, exits, restarts, gave_up, stopped, closed;
  int scaled, scale_status, scale_exits;
  tt_exit_reason_t last_reason;
  int last_sig;
  char why[160];
} sup_seen_t;

static void s_start(tt_supervisor_t *s, unsigned id, uint64_t serial) {
  (void)id, (void)serial;
  ((sup_seen_t *)s->data)->starts++;
}
static void s_exit(tt_supervisor_t *s, unsigned id, uint64_t serial,
                   int64_t status, int sig, tt_exit_reason_t r) {
  sup_seen_t *x = s->data;
  (void)id, (void)serial, (void)status;
  x->exits++;
  x->last_reason = r;
  x->last_sig = sig;
  if (r == TT_EXIT_SCALE) x->scale_exits++;
}
static void s_scaled(tt_supervisor_t *s, int status) {
  sup_seen_t *x = s->data;
  x->scaled++;
  x->scale_status = status;
}
static void s_restart(tt_supervisor_t *s, unsigned id, tt_exit_reason_t r,
                      int pid) {
  (void)id, (void)r, (void)pid;
  ((sup_seen_t *)s->data)->restarts++;
}
static void s_give_up(tt_supervisor_t *s, const char *why) {
  sup_seen_t *x = s->data;
  x->gave_up = 1;
  snprintf(x->why, sizeof x->why, "%s", why);
}
static void s_stopped(tt_supervisor_t *s) {
  ((sup_seen_t *)s->data)->stopped = 1;
}
static void s_closed(tt_supervisor_t *s) {
  ((sup_seen_t *)s->data)->closed = 1;
}

static void sup_options(tt_supervisor_options_t *o, const char *child) {
  tt_supervisor_options_init(o);
  tt_test_child_options(&o->process, child);
  o->backoff.initial_ms = 10;
  o->backoff.max_ms = 20;
  o->backoff.jitter_ms = 0;
}

static void sup_start(uv_loop_t *loop, tt_supervisor_t *s, sup_seen_t *x,
                      const tt_supervisor_options_t *o) {
  memset(x, 0, sizeof *x);
  memset(s, 0, sizeof *s);
  s->data = x;
  s->on_start = s_start;
  s->on_exit = s_exit;
  s->on_restart = s_restart;
  s->on_give_up = s_give_up;
  s->on_stopped = s_stopped;
  s->on_scale = s_scaled;
  ck_assert_int_eq(tt_supervisor_start(loop, s, o), 0);
}

static void sup_finish(uv_loop_t *loop, tt_supervisor_t *s, sup_seen_t *x) {
  tt_supervisor_close(s, s_closed);
  tt_test_run_until(loop, &x->closed, 20000);
  tt_test_loop_close(loop);
}

START_TEST(test_restarts_then_gives_up) {
  uv_loop_t loop;
  tt_supervisor_t s;
  sup_seen_t x;
  tt_supervisor_options_t o;
  uv_loop_init(&loop);
  sup_options(&o, "exit3");
  o.max_restarts = 3;
  o.within_ms = 60000;
  sup_start(&loop, &s, &x, &o);
  tt_test_run_until(&loop, &x.stopped, 20000);
  ck_assert_int_eq(x.restarts, 3);
  ck_assert_int_eq(x.exits, 4);
  ck_assert_int_eq(x.gave_up, 1);
  ck_assert_ptr_nonnull(strstr(x.why, "more than 3 restarts"));
  ck_assert_int_eq(x.last_reason, TT_EXIT_CRASH);
  sup_finish(&loop, &s, &x);
}
END_TEST

START_TEST(test_never_restarts_under_never) {
  uv_loop_t loop;
  tt_supervisor_t s;
  sup_seen_t x;
  tt_supervisor_options_t o;
  uv_loop_init(&loop);
  sup_options(&o, "exit3");
  o.restart = TT_RESTART_NEVER;
  sup_start(&loop, &s, &x, &o);
  tt_test_run_until(&loop, &x.stopped, 20000);
  ck_assert_int_eq(x.restarts, 0);
  ck_assert_int_eq(x.exits, 1);
  ck_assert_int_eq(x.gave_up, 0);
  sup_finish(&loop, &s, &x);
}
END_TEST

START_TEST(test_stop_escalates_to_sigkill) {
  uv_loop_t loop;
  tt_supervisor_t s;
  sup_seen_t x;
  tt_supervisor_options_t o;
  uint64_t t0;
  uv_loop_init(&loop);
  sup_options(&o, "stubborn"); /* ignores SIGTERM */
  o.wait_ready = 1;             /* ...from its ready frame on */
  o.shutdown_timeout_ms = 50;
  o.kill_timeout_ms = 100;
  sup_start(&loop, &s, &x, &o);
  tt_test_run_until(&loop, &x.starts, 10000);
  t0 = uv_hrtime();
  tt_supervisor_stop(&s);
  tt_test_run_until(&loop, &x.stopped, 10000);
  ck_assert_int_eq(x.last_sig, SIGKILL);
  ck_assert_int_eq(x.last_reason, TT_EXIT_STOP);
  ck_assert_uint_ge((uv_hrtime() - t0) / 1000000, 90); /* waited kill_timeout */
  sup_finish(&loop, &s, &x);
}
END_TEST

START_TEST(test_hurry_kills_at_once) {
  uv_loop_t loop;
  tt_supervisor_t s;
  sup_seen_t x;
  tt_supervisor_options_t o;
  uint64_t t0;
  uv_loop_init(&loop);
  sup_options(&o, "stubborn");
  o.wait_ready = 1;
  o.instances = 2;
  o.shutdown_timeout_ms = 60000;
  o.kill_timeout_ms = 60000;
  sup_start(&loop, &s, &x, &o);
  tt_test_run_until_n(&loop, &x.starts, 2, 10000);
  ck_assert_int_eq(tt_supervisor_hurry(&s), UV_EINVAL); /* not stopping */
  t0 = uv_hrtime();
  tt_supervisor_stop(&s);
  ck_assert_int_eq(tt_supervisor_hurry(&s), 0);
  tt_test_run_until(&loop, &x.stopped, 10000);
  ck_assert_uint_lt((uv_hrtime() - t0) / 1000000, 5000);
  ck_assert_int_eq(x.last_sig, SIGKILL);
  sup_finish(&loop, &s, &x);
}
END_TEST

START_TEST(test_running_only_after_the_ready_frame) {
  uv_loop_t loop;
  tt_supervisor_t s;
  sup_seen_t x;
  tt_supervisor_options_t o;
  tt_worker_info_t info;
  uv_loop_init(&loop);
  sup_options(&o, "silent"); /* never sends the ready frame */
  o.wait_ready = 1;
  o.start_timeout_ms = 200;
  o.max_restarts = 0;
  sup_start(&loop, &s, &x, &o);
  tt_test_run_until(&loop, &x.stopped, 10000);
  ck_assert_int_eq(x.starts, 0);
  ck_assert_int_eq(x.last_reason, TT_EXIT_UNRESPONSIVE);
  sup_finish(&loop, &s, &x);

  uv_loop_init(&loop);
  sup_options(&o, "ready");
  o.wait_ready = 1;
  o.process.channel_options.max_message = 100;
  sup_start(&loop, &s, &x, &o);
  tt_test_run_until(&loop, &x.starts, 10000);
  ck_assert_int_eq(tt_supervisor_info(&s, 1, &info), 0);
  ck_assert_int_eq(info.state, TT_WORKER_RUNNING);
  ck_assert_uint_eq(tt_supervisor_instances(&s), 1);
  ck_assert_uint_eq(tt_supervisor_max_message(&s), 100);
  ck_assert_int_eq(tt_supervisor_send(&s, 1, TT_FRAME_REQUEST, 1, "x", 101, 0,
                                      NULL, NULL),
                   TT_ERR_SERIALIZE);
  ck_assert_int_eq(tt_supervisor_send(&s, 1, TT_FRAME_MESSAGE, 0, "x", 1,
                                      0, NULL, NULL),
                   0);
  tt_supervisor_stop(&s);
  tt_test_run_until(&loop, &x.stopped, 10000);
  sup_finish(&loop, &s, &x);
}
END_TEST

START_TEST(test_restart_of_a_starting_worker_is_refused) {
  uv_loop_t loop;
  tt_supervisor_t s;
  sup_seen_t x;
  tt_supervisor_options_t o;
  uv_loop_init(&loop);
  sup_options(&o, "silent");
  o.wait_ready = 1;
  sup_start(&loop, &s, &x, &o);
  /* no worker until the start timer has run (NOWAIT: the silent child
   * will never wake a blocking iteration) */
  while (tt_supervisor_restart(&s, 1) == UV_ESRCH) uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(tt_supervisor_restart(&s, 1), UV_EBUSY);
  tt_supervisor_stop(&s);
  tt_test_run_until(&loop, &x.stopped, 10000);
  sup_finish(&loop, &s, &x);
}
END_TEST

/* ---- scale --------------------------------------------------------------- */

static int sent_status[8], sent_count;
static void on_sent(void *arg, int status) {
  (void)arg;
  if (sent_count < 8) sent_status[sent_count] = status;
  sent_count++;
}

/* Growing starts the new slots at once; shrinking stops the highest ones
 * (reason SCALE, never restarted), fails what was queued for them, and
 * they leave the count once down. */
START_TEST(test_scale_grows_and_shrinks) {
  uv_loop_t loop;
  tt_supervisor_t s;
  sup_seen_t x;
  tt_supervisor_options_t o;
  tt_worker_info_t info;
  uv_loop_init(&loop);
  sup_options(&o, "ready");
  o.wait_ready = 1;
  sup_start(&loop, &s, &x, &o);
  tt_test_run_until(&loop, &x.starts, 10000);
  ck_assert_int_eq(tt_supervisor_scale(&s, 0), UV_EINVAL);
  ck_assert_int_eq(tt_supervisor_scale(&s, TT_SUP_MAX_INSTANCES + 1),
                   UV_EINVAL);

  ck_assert_int_eq(tt_supervisor_scale(&s, 3), 0);
  ck_assert_uint_eq(tt_supervisor_instances(&s), 3);
  tt_test_run_until(&loop, &x.scaled, 10000);
  ck_assert_int_eq(x.scale_status, 0);
  ck_assert_int_eq(x.starts, 3);
  ck_assert_int_eq(x.restarts, 0);
  for (unsigned id = 1; id <= 3; id++) {
    ck_assert_int_eq(tt_supervisor_info(&s, id, &info), 0);
    ck_assert_int_eq(info.state, TT_WORKER_RUNNING);
  }

  /* a message queued for a slot added and removed before it ran */
  sent_count = 0;
  ck_assert_int_eq(tt_supervisor_scale(&s, 4), 0);
  ck_assert_int_eq(tt_supervisor_send(&s, 4, TT_FRAME_MESSAGE, 0, "x", 1, 0,
                                      on_sent, NULL),
                   0);
  ck_assert_int_eq(tt_supervisor_scale(&s, 1), 0);
  ck_assert_int_eq(sent_count, 1);
  ck_assert_int_eq(sent_status[0], TT_ERR_CLOSED);
  tt_test_run_until_n(&loop, &x.scaled, 3, 10000);
  ck_assert_int_eq(x.scale_status, 0);
  ck_assert_int_eq(x.scale_exits, 2);
  ck_assert_int_eq(x.starts, 3); /* slot 4 never ran */
  ck_assert_int_eq(x.restarts, 0);
  ck_assert_uint_eq(tt_supervisor_instances(&s), 1);
  ck_assert_int_eq(tt_supervisor_info(&s, 2, &info), UV_EINVAL);
  ck_assert_int_eq(tt_supervisor_send(&s, 2, TT_FRAME_MESSAGE, 0, "x", 1, 0,
                                      NULL, NULL),
                   UV_EINVAL);
  ck_assert_int_eq(tt_supervisor_info(&s, 1, &info), 0);
  ck_assert_int_eq(info.state, TT_WORKER_RUNNING);

  tt_supervisor_stop(&s);
  ck_assert_int_eq(tt_supervisor_scale(&s, 2), TT_ERR_CLOSED);
  tt_test_run_until(&loop, &x.stopped, 10000);
  sup_finish(&loop, &s, &x);
}
END_TEST

/* A slot removed but still stopping (its worker ignores SIGTERM) stays in
 * the count as STOPPING; growing again takes it back with a new worker
 * while the old one goes on stopping. */
START_TEST(test_scale_up_during_a_shrink) {
  uv_loop_t loop;
  tt_supervisor_t s;
  sup_seen_t x;
  tt_supervisor_options_t o;
  tt_worker_info_t info;
  int old_pid;
  uv_loop_init(&loop);
  sup_options(&o, "stubborn");
  o.wait_ready = 1;
  o.instances = 2;
  o.shutdown_timeout_ms = 10;
  o.kill_timeout_ms = 60000;
  sup_start(&loop, &s, &x, &o);
  tt_test_run_until_n(&loop, &x.starts, 2, 10000);
  ck_assert_int_eq(tt_supervisor_info(&s, 2, &info), 0);
  old_pid = info.pid;

  ck_assert_int_eq(tt_supervisor_scale(&s, 1), 0);
  for (int i = 0; i < 20; i++) uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(x.scaled, 0);
  ck_assert_uint_eq(tt_supervisor_instances(&s), 2);
  ck_assert_int_eq(tt_supervisor_info(&s, 2, &info), 0);
  ck_assert_int_eq(info.state, TT_WORKER_STOPPING);
  ck_assert_int_eq(info.pid, old_pid);
  ck_assert_int_eq(tt_supervisor_send(&s, 2, TT_FRAME_MESSAGE, 0, "x", 1, 0,
                                      NULL, NULL),
                   TT_ERR_CLOSED);

  ck_assert_int_eq(tt_supervisor_scale(&s, 2), 0);
  tt_test_run_until_n(&loop, &x.scaled, 2, 10000); /* both calls answered */
  ck_assert_int_eq(x.scale_status, 0);
  ck_assert_int_eq(x.starts, 3);
  ck_assert_int_eq(x.exits, 0); /* the old one is still stopping */
  ck_assert_int_eq(tt_supervisor_info(&s, 2, &info), 0);
  ck_assert_int_eq(info.state, TT_WORKER_RUNNING);
  ck_assert_int_ne(info.pid, old_pid);
  ck_assert_int_eq(tt_supervisor_kill(&s, 2, 0), 0);

  tt_supervisor_stop(&s);
  ck_assert_int_eq(tt_supervisor_hurry(&s), 0);
  tt_test_run_until(&loop, &x.stopped, 10000);
  ck_assert_int_eq(x.exits, 3);
  ck_assert_int_eq(x.scale_exits, 1);
  sup_finish(&loop, &s, &x);
}
END_TEST

/* ---- pool ---------------------------------------------------------------- */

typedef struct {
  int answered, failed, stopped, closed;
  int last_status;
} pool_seen_t;

static void on_task(void *arg, int status, unsigned kind, const char *payload,
                    size_t len, tt_channel_t *ch) {
  pool_seen_t *x = arg;
  (void)payload, (void)len, (void)ch;
  if (status == 0 && kind == TT_FRAME_REPLY)
    x->answered++;
  else
    x->failed++, x->last_status = status;
}

static void p_stopped(tt_pool_t *p) { ((pool_seen_t *)p->data)->stopped = 1; }
static void p_closed(tt_pool_t *p) { ((pool_seen_t *)p->data)->closed = 1; }

/* on_spawn: what differs per slot (a cluster's sockets): each slot's
 * workers get their own descriptor and handshake variable, and nothing of
 * the other slot's. */
typedef struct {
  int fds[2];
  char hs[2][64];
  char *hsv[2][2];
  char got[2][256];
  int frames;
} per_slot_t;

static per_slot_t *per_slot;

static void s_on_spawn(tt_supervisor_t *s, unsigned id,
                       tt_process_options_t *po) {
  (void)s;
  po->pass_fds = &per_slot->fds[id - 1];
  po->pass_fds_count = 1;
  po->handshake = per_slot->hsv[id - 1];
}

static void s_on_frame(tt_supervisor_t *s, unsigned id, uint64_t serial,
                       tt_channel_t *ch, const tt_frame_header_t *h,
                       const char *payload) {
  (void)s, (void)serial, (void)ch;
  if (id < 1 || id > 2 || h->len >= sizeof per_slot->got[0]) return;
  memcpy(per_slot->got[id - 1], payload, h->len);
  per_slot->got[id - 1][h->len] = '\0';
  per_slot->frames++;
}

START_TEST(test_per_slot_descriptors_and_handshake) {
  uv_loop_t loop;
  tt_supervisor_t s;
  tt_supervisor_options_t o;
  sup_seen_t x;
  per_slot_t ps;
  int p[2][2];
  char want[256];
  memset(&ps, 0, sizeof ps);
  per_slot = &ps;
  uv_loop_init(&loop);
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(pipe2(p[i], O_CLOEXEC), 0);
    ps.fds[i] = p[i][0];
    snprintf(ps.hs[i], sizeof ps.hs[i], "TETHER_CLUSTER=reuseport:%d",
             p[i][0]);
    ps.hsv[i][0] = ps.hs[i];
  }
  sup_options(&o, "handshake");
  o.instances = 2;
  o.restart = TT_RESTART_NEVER;
  memset(&s, 0, sizeof s);
  memset(&x, 0, sizeof x);
  s.data = &x;
  s.on_stopped = s_stopped;
  s.on_spawn = s_on_spawn;
  s.on_frame = s_on_frame;
  ck_assert_int_eq(tt_supervisor_start(&loop, &s, &o), 0);
  tt_test_run_until_n(&loop, &ps.frames, 2, 10000);
  for (int i = 0; i < 2; i++) {
    /* its own descriptor is open in it (the other slot's number names
     * nothing there: every fd not passed is closed in a child) */
    snprintf(want, sizeof want, "cluster=reuseport:%d open=1", p[i][0]);
    ck_assert_msg(strstr(ps.got[i], want) != NULL, "slot %d: %s", i + 1,
                  ps.got[i]);
    ck_assert_msg(strstr(ps.got[i], "left=0") != NULL, "%s", ps.got[i]);
  }
  sup_finish(&loop, &s, &x);
  for (int i = 0; i < 2; i++) {
    /* ours stay ours, close-on-exec as before */
    ck_assert_int_eq(fcntl(p[i][0], F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    close(p[i][0]);
    close(p[i][1]);
  }
}
END_TEST

START_TEST(test_pool_runs_every_task_once) {
  uv_loop_t loop;
  tt_pool_t p;
  tt_pool_options_t o;
  pool_seen_t x = {0, 0, 0, 0, 0};
  tt_pool_stats_t st;
  char big[65] = {0};
  uv_loop_init(&loop);
  memset(&o, 0, sizeof o);
  sup_options(&o.workers, "echo");
  o.workers.instances = 2;
  o.workers.process.channel_options.max_message = 64;
  memset(&p, 0, sizeof p);
  p.data = &x;
  p.on_stopped = p_stopped;
  ck_assert_int_eq(tt_pool_start(&loop, &p, &o), 0);
  ck_assert_uint_eq(tt_pool_size(&p), 2);
  ck_assert_uint_eq(tt_pool_max_message(&p), 64);
  /* over the workers' limit: refused here, not sent to fail there */
  ck_assert_int_eq(tt_pool_submit(&p, big, 65, on_task, &x), TT_ERR_SERIALIZE);
  ck_assert_int_eq(tt_pool_submit(&p, big, 64, on_task, &x), 0);
  for (int i = 0; i < 99; i++)
    ck_assert_int_eq(tt_pool_submit(&p, "t", 1, on_task, &x), 0);
  tt_pool_drain(&p);
  ck_assert_int_eq(tt_pool_submit(&p, "t", 1, on_task, &x), TT_ERR_CLOSED);
  tt_test_run_until(&loop, &x.stopped, 20000);
  ck_assert_int_eq(x.answered, 100);
  ck_assert_int_eq(x.failed, 0);
  tt_pool_stats(&p, &st);
  ck_assert_uint_eq(st.done, 100);
  tt_pool_close(&p, p_closed);
  tt_test_run_until(&loop, &x.closed, 20000);
  tt_test_loop_close(&loop);
}
END_TEST

START_TEST(test_pool_times_a_silent_worker_out) {
  uv_loop_t loop;
  tt_pool_t p;
  tt_pool_options_t o;
  pool_seen_t x = {0, 0, 0, 0, 0};
  uv_loop_init(&loop);
  memset(&o, 0, sizeof o);
  sup_options(&o.workers, "silent"); /* takes the task, never answers */
  o.timeout_ms = 100;
  memset(&p, 0, sizeof p);
  p.data = &x;
  p.on_stopped = p_stopped;
  ck_assert_int_eq(tt_pool_start(&loop, &p, &o), 0);
  ck_assert_int_eq(tt_pool_submit(&p, "t", 1, on_task, &x), 0);
  tt_test_run_until(&loop, &x.failed, 10000);
  ck_assert_int_eq(x.last_status, TT_ERR_TIMEOUT);
  tt_pool_terminate(&p);
  tt_test_run_until(&loop, &x.stopped, 20000);
  tt_pool_close(&p, p_closed);
  tt_test_run_until(&loop, &x.closed, 20000);
  tt_test_loop_close(&loop);
}
END_TEST

/* A task whose worker dies runs again (once: retries 1), then fails with
 * TT_ERR_WORKER_CRASH; the tasks around it are answered, each once. */
START_TEST(test_pool_reruns_after_a_crash_then_fails) {
  uv_loop_t loop;
  tt_pool_t p;
  tt_pool_options_t o;
  pool_seen_t x = {0, 0, 0, 0, 0};
  tt_pool_stats_t st;
  uv_loop_init(&loop);
  memset(&o, 0, sizeof o);
  sup_options(&o.workers, "echo");
  o.workers.instances = 2;
  o.retries = 1;
  memset(&p, 0, sizeof p);
  p.data = &x;
  p.on_stopped = p_stopped;
  ck_assert_int_eq(tt_pool_start(&loop, &p, &o), 0);
  for (int i = 0; i < 20; i++)
    ck_assert_int_eq(tt_pool_submit(&p, i == 7 ? "die" : "t", i == 7 ? 3 : 1,
                                    on_task, &x),
                     0);
  tt_test_run_until_n(&loop, &x.answered, 19, 20000);
  tt_test_run_until(&loop, &x.failed, 20000);
  ck_assert_int_eq(x.last_status, TT_ERR_WORKER_CRASH);
  tt_pool_stats(&p, &st);
  ck_assert_uint_eq(st.retried, 1);
  ck_assert_uint_eq(st.crashes, 2);
  ck_assert_uint_eq(st.done, 19);
  ck_assert_uint_eq(st.failed, 1);
  ck_assert_uint_eq(st.running + st.queued, 0);
  tt_pool_drain(&p);
  tt_test_run_until(&loop, &x.stopped, 20000);
  ck_assert_int_eq(x.answered, 19);
  ck_assert_int_eq(x.failed, 1);
  tt_pool_close(&p, p_closed);
  tt_test_run_until(&loop, &x.closed, 20000);
  tt_test_loop_close(&loop);
}
END_TEST

/* max_tasks_per_worker: a worker is replaced after its 3rd task, without
 * a task lost or run twice. */
START_TEST(test_pool_recycles_after_max_tasks) {
  uv_loop_t loop;
  tt_pool_t p;
  tt_pool_options_t o;
  pool_seen_t x = {0, 0, 0, 0, 0};
  tt_pool_stats_t st;
  uv_loop_init(&loop);
  memset(&o, 0, sizeof o);
  sup_options(&o.workers, "echo");
  o.max_tasks_per_worker = 3;
  memset(&p, 0, sizeof p);
  p.data = &x;
  p.on_stopped = p_stopped;
  ck_assert_int_eq(tt_pool_start(&loop, &p, &o), 0);
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(tt_pool_submit(&p, "t", 1, on_task, &x), 0);
  tt_pool_drain(&p);
  tt_test_run_until(&loop, &x.stopped, 20000);
  ck_assert_int_eq(x.answered, 10);
  ck_assert_int_eq(x.failed, 0);
  tt_pool_stats(&p, &st);
  ck_assert_uint_ge(st.recycled, 3);
  ck_assert_uint_eq(st.late, 0);
  tt_pool_close(&p, p_closed);
  tt_test_run_until(&loop, &x.closed, 20000);
  tt_test_loop_close(&loop);
}
END_TEST

Suite *supervisor_suite(void) {
  Suite *s = suite_create("supervisor");
  TCase *tc = tcase_create("supervisor");
  TCase *pc = tcase_create("pool");
  tcase_set_timeout(tc, 60);
  tcase_set_timeout(pc, 60);
  tcase_add_test(tc, test_restarts_then_gives_up);
  tcase_add_test(tc, test_never_restarts_under_never);
  tcase_add_test(tc, test_stop_escalates_to_sigkill);
  tcase_add_test(tc, test_hurry_kills_at_once);
  tcase_add_test(tc, test_running_only_after_the_ready_frame);
  tcase_add_test(tc, test_restart_of_a_starting_worker_is_refused);
  tcase_add_test(tc, test_per_slot_descriptors_and_handshake);
  tcase_add_test(tc, test_scale_grows_and_shrinks);
  tcase_add_test(tc, test_scale_up_during_a_shrink);
  tcase_add_test(pc, test_pool_runs_every_task_once);
  tcase_add_test(pc, test_pool_times_a_silent_worker_out);
  tcase_add_test(pc, test_pool_reruns_after_a_crash_then_fails);
  tcase_add_test(pc, test_pool_recycles_after_max_tasks);
  suite_add_tcase(s, tc);
  suite_add_tcase(s, pc);
  return s;
}
