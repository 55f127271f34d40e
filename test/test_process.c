/* Tests of processes and request/response (core/tt_process.h,
 * core/tt_rpc.h) with real children: this binary run again (children.c). */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "loop_util.h"
#include "suites.h"
#include "tt_error.h"
#include "tt_process.h"
#include "tt_rpc.h"
#include "tt_zygote.h"

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

/* The callbacks above, reporting into r, on a spawned process. */
static void watch(tt_process_t *p, run_t *r) {
  p->data = r;
  p->on_exit = on_exit_cb;
  p->on_disconnect = on_disconnect;
  p->on_closed = on_closed;
  if (p->channel) {
    p->channel->data = r;
    p->channel->on_frame = on_frame;
  }
}

static void start(uv_loop_t *loop, tt_process_t *p, run_t *r,
                  const char *child) {
  tt_process_options_t o;
  memset(r, 0, sizeof *r);
  tt_test_child_options(&o, child);
  ck_assert_int_eq(tt_process_spawn(loop, p, &o), 0);
  watch(p, r);
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
  watch(&p, &r);
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

/* ---- how the child is started (posix_spawn + pidfd, or uv_spawn) ------- */

/* Both ways a child can be started: posix_spawn (the default where the
 * kernel has pidfds) and uv_spawn (TETHER_SPAWN=uv, old kernels). */
static const char *const modes[] = {NULL, "uv"};

static void set_mode(const char *m) {
  if (m == NULL)
    unsetenv("TETHER_SPAWN");
  else
    setenv("TETHER_SPAWN", m, 1);
}

/* Our open fds (the first loop's libuv-wide signal pipe included). */
static int count_fds(void) {
  int n = 0;
  uv_loop_t loop;
  DIR *d;
  uv_loop_init(&loop);
  uv_loop_close(&loop);
  d = opendir("/proc/self/fd");
  ck_assert_ptr_nonnull(d);
  while (readdir(d) != NULL) n++;
  closedir(d);
  return n;
}

static int pidfd_works(void) {
  int fd = (int)syscall(SYS_pidfd_open, (pid_t)getpid(), 0u);
  if (fd < 0) return 0;
  close(fd);
  return 1;
}

static void on_released(tt_process_t *p) { ((run_t *)p->data)->closed++; }

START_TEST(test_pidfd_sees_exit_and_signal) {
  uv_loop_t loop;
  tt_process_t p;
  run_t r;
  int fds = count_fds();
  uv_loop_init(&loop);
  start(&loop, &p, &r, "exit3");
  /* watched through its pidfd, where there are pidfds (not under valgrind,
   * which knows no pidfd_open: there the uv_spawn fallback is tested) */
  if (pidfd_works()) ck_assert_int_ge(p.pidfd, 0);
  else ck_assert_int_eq(p.pidfd, -1);
  tt_test_run_until(&loop, &r.closed, 10000);
  ck_assert_int_eq(r.status, 3);
  ck_assert_int_eq(r.sig, 0);
  ck_assert_int_eq(r.order_ok, 1);
  tt_process_close(&p, NULL);
  tt_test_run_dry(&loop, 5000);

  start(&loop, &p, &r, "silent");
  ck_assert_int_eq(tt_process_kill(&p, 0), 0);
  ck_assert_int_eq(tt_process_kill(&p, SIGKILL), 0);
  tt_test_run_until(&loop, &r.closed, 10000);
  ck_assert_int_eq(r.status, 0);
  ck_assert_int_eq(r.sig, SIGKILL);
  ck_assert_int_eq(tt_process_kill(&p, SIGTERM), UV_ESRCH); /* reaped */
  tt_process_close(&p, NULL);
  tt_test_loop_close(&loop);
  ck_assert_int_eq(count_fds(), fds); /* pidfd and channel closed */
}
END_TEST

/* Exec failures come back from the spawn itself, the same in both ways. */
START_TEST(test_exec_failures_are_synchronous) {
  static const struct {
    const char *file, *cwd, *path;
    int err;
  } cases[] = {
      {"/nonexistent/program", NULL, NULL, UV_ENOENT},
      {"no-such-program-tt", NULL, NULL, UV_ENOENT},
      {"true", NULL, "PATH=/nonexistent", UV_ENOENT}, /* the child's PATH */
      {"/etc/passwd", NULL, NULL, UV_EACCES},
      {"/tmp", NULL, NULL, UV_EACCES},
      {"/bin/true", "/nonexistent/dir", NULL, UV_ENOENT},
      {"/bin/true", "/etc/passwd", NULL, UV_ENOTDIR},
      {"./true", "/bin", NULL, 0}, /* relative to the child's cwd */
      {"true", NULL, "PATH=/nonexistent:/bin", 0},
  };
  int fds = count_fds();
  for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
    set_mode(modes[m]);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      uv_loop_t loop;
      tt_process_t p;
      tt_process_options_t o;
      run_t r;
      char *argv[] = {(char *)cases[i].file, NULL};
      char *env[] = {(char *)cases[i].path, NULL};
      int err;
      uv_loop_init(&loop);
      memset(&o, 0, sizeof o);
      memset(&r, 0, sizeof r);
      o.file = argv[0];
      o.args = argv;
      o.cwd = cases[i].cwd;
      o.env = cases[i].path ? env : NULL;
      o.channel = 1;
      o.stdio[0] = o.stdio[1] = o.stdio[2] = TT_STDIO_IGNORE;
      err = tt_process_spawn(&loop, &p, &o);
      ck_assert_msg(err == cases[i].err, "%s %s (cwd %s): %s, want %s",
                    modes[m] ? modes[m] : "posix", cases[i].file,
                    cases[i].cwd ? cases[i].cwd : "-", uv_err_name(err),
                    cases[i].err ? uv_err_name(cases[i].err) : "0");
      p.data = &r;
      if (err == 0) {
        p.on_exit = on_exit_cb;
        tt_test_run_until(&loop, &r.exited, 10000);
        ck_assert_int_eq(r.status, 0);
      }
      tt_process_close(&p, on_released);
      if (err != 0) /* the owner's callback never runs from inside close */
        ck_assert_int_eq(r.closed, 0);
      tt_test_run_until(&loop, &r.closed, 10000);
      tt_test_loop_close(&loop);
      ck_assert_int_eq(count_fds(), fds);
    }
  }
  set_mode(NULL);
}
END_TEST

/* A program without a #! line runs under /bin/sh, as execvp runs it. */
START_TEST(test_script_without_shebang_runs_in_sh) {
  char path[] = "/tmp/tt-script-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, "exit $1\n", 8), 8);
  close(fd);
  chmod(path, 0700);
  for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
    uv_loop_t loop;
    tt_process_t p;
    tt_process_options_t o;
    run_t r;
    char *argv[] = {path, "7", NULL};
    set_mode(modes[m]);
    uv_loop_init(&loop);
    memset(&o, 0, sizeof o);
    memset(&r, 0, sizeof r);
    o.file = path;
    o.args = argv;
    ck_assert_int_eq(tt_process_spawn(&loop, &p, &o), 0);
    p.data = &r;
    p.on_exit = on_exit_cb;
    tt_test_run_until(&loop, &r.exited, 10000);
    ck_assert_int_eq(r.status, 7);
    tt_process_close(&p, NULL);
    tt_test_loop_close(&loop);
  }
  set_mode(NULL);
  unlink(path);
}
END_TEST

/* What child "inspect" reports when started with `o` (its options set up
 * by the caller from tt_test_child_options). */
static void inspect(tt_process_options_t *o, char *out, size_t len) {
  uv_loop_t loop;
  tt_process_t p;
  run_t r;
  uv_loop_init(&loop);
  memset(&r, 0, sizeof r);
  ck_assert_int_eq(tt_process_spawn(&loop, &p, o), 0);
  p.data = &r;
  p.on_exit = on_exit_cb;
  p.on_closed = on_closed;
  p.channel->data = &r;
  p.channel->on_frame = on_frame;
  tt_test_run_until(&loop, &r.closed, 10000);
  ck_assert_int_eq(r.status, 0);
  tt_process_close(&p, NULL);
  tt_test_loop_close(&loop);
  snprintf(out, len, "%s", r.last);
}

/* The child gets 0-2, its channel and pass_fds, at their numbers, and
 * nothing else of ours (unless keep_fds); our fds' flags are as they were. */
START_TEST(test_child_gets_exactly_its_fds) {
  int leak = open("/dev/null", O_RDONLY); /* not close-on-exec */
  int a = fcntl(leak, F_DUPFD_CLOEXEC, 40), b = fcntl(leak, F_DUPFD, 45);
  int pass[] = {a, b};
  char got[128], want[128];
  ck_assert_int_eq(a, 40);
  ck_assert_int_eq(b, 45);
  for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
    tt_process_options_t o;
    set_mode(modes[m]);
    tt_test_child_options(&o, "inspect");
    o.pass_fds = pass;
    o.pass_fds_count = 2;
    inspect(&o, got, sizeof got);
    ck_assert_str_eq(got, "fds=0,1,2,3,40,45 sid=0 ign=0 blocked=0");
    o.keep_fds = 1; /* then ours not close-on-exec go too (Check's, here) */
    inspect(&o, got, sizeof got);
    /* (Check may hold descriptors of its own, e.g. its TAP log) */
    snprintf(want, sizeof want, ",%d,", leak);
    ck_assert_msg(strncmp(got, "fds=0,1,2,3,", 12) == 0, "%s", got);
    ck_assert_msg(strstr(got, want) != NULL, "%s", got);
    ck_assert_msg(strstr(got, ",40,45") != NULL, "%s", got);
    ck_assert_int_eq(fcntl(leak, F_GETFD), 0);
    ck_assert_int_eq(fcntl(a, F_GETFD), FD_CLOEXEC);
    ck_assert_int_eq(fcntl(b, F_GETFD), 0);
  }
  /* stdio and the channel have their own numbers */
  {
    uv_loop_t loop;
    tt_process_t p;
    tt_process_options_t o;
    int three = 3;
    uv_loop_init(&loop);
    tt_test_child_options(&o, "inspect");
    o.pass_fds = &three;
    o.pass_fds_count = 1;
    ck_assert_int_eq(tt_process_spawn(&loop, &p, &o), UV_EINVAL);
    tt_process_close(&p, NULL);
    tt_test_loop_close(&loop);
  }
  set_mode(NULL);
  close(leak), close(a), close(b);
}
END_TEST

/* A new session when asked; every signal at its default action and none
 * blocked, whatever we ignore or block. */
START_TEST(test_child_session_and_signals) {
  sigset_t block, old;
  char got[128];
  signal(SIGPIPE, SIG_IGN);
  signal(SIGUSR1, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  sigemptyset(&block);
  sigaddset(&block, SIGUSR2);
  sigaddset(&block, SIGTERM);
  sigprocmask(SIG_BLOCK, &block, &old);
  for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
    tt_process_options_t o;
    set_mode(modes[m]);
    tt_test_child_options(&o, "inspect");
    inspect(&o, got, sizeof got);
    ck_assert_str_eq(got, "fds=0,1,2,3 sid=0 ign=0 blocked=0");
    o.new_session = 1;
    inspect(&o, got, sizeof got);
    ck_assert_str_eq(got, "fds=0,1,2,3 sid=1 ign=0 blocked=0");
  }
  set_mode(NULL);
  sigprocmask(SIG_SETMASK, &old, NULL);
  signal(SIGPIPE, SIG_DFL);
  signal(SIGUSR1, SIG_DFL);
  signal(SIGHUP, SIG_DFL);
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


/* A zygote that fails after our request went out (here: its spare takes
 * the descriptors, writes a frame on the channel, then answers garbage)
 * must not leave the exec'd child a channel with a dead worker's frames
 * in it: the child gets new descriptors, and the first frame we read is
 * the child's own. */
static int fake_spare(int sock) {
  int32_t rec[3] = {1 /* SPARE */, 0, (int32_t)getpid()};
  char buf[8192], cbuf[CMSG_SPACE(sizeof(int) * 8)];
  unsigned char frame[TT_FRAME_HEADER_SIZE + 5];
  int fds[8], nfds = 0;
  struct msghdr m;
  struct iovec iov = {buf, sizeof buf};
  struct cmsghdr *c;
  if (write(sock, rec, sizeof rec) != (ssize_t)sizeof rec) return 1;
  memset(&m, 0, sizeof m);
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = sizeof cbuf;
  if (recvmsg(sock, &m, 0) <= 0) return 1;
  for (c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c))
    if (c->cmsg_type == SCM_RIGHTS)
      for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int) && nfds < 8; i++)
        memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
  if (nfds == 0) return 1;
  /* the channel is the last descriptor (no pass_fds) */
  tt_frame_header_pack(frame, TT_FRAME_MESSAGE, 0, 0, 5);
  memcpy(frame + TT_FRAME_HEADER_SIZE, "ghost", 5);
  if (write(fds[nfds - 1], frame, sizeof frame) != (ssize_t)sizeof frame) return 1;
  rec[0] = 77; /* no such record */
  if (write(sock, rec, sizeof rec) != (ssize_t)sizeof rec) return 1;
  while (read(sock, buf, sizeof buf) > 0) {
  }
  return 0;
}

START_TEST(test_failed_zygote_gives_fresh_descriptors) {
  uv_loop_t loop;
  tt_process_t p;
  tt_process_options_t o;
  tt_zygote_t z;
  run_t r;
  int zs[2], fake;
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, zs), 0);
  tt_zygote_init(&z, zs[0]); /* (before anything is written to it) */
  fake = fork();
  ck_assert_int_ge(fake, 0);
  if (fake == 0) {
    close(zs[0]);
    _exit(fake_spare(zs[1]));
  }
  close(zs[1]);
  uv_loop_init(&loop);
  memset(&r, 0, sizeof r);
  tt_test_child_options(&o, "echo");
  o.zygote = &z;
  ck_assert_int_eq(tt_process_spawn(&loop, &p, &o), 0);
  /* (where posix_spawn is not used, neither is the zygote) */
  if (z.sock < 0) {
    errno = 0; /* the fake was taken for a spare: killed and reaped */
    ck_assert_int_eq(waitpid(fake, NULL, WNOHANG), -1);
    ck_assert_int_eq(errno, ECHILD);
  }
  watch(&p, &r);
  ck_assert_int_eq(tt_channel_send(p.channel, TT_FRAME_MESSAGE, 0, "hi", 2,
                                   NULL, NULL), 1);
  tt_test_run_until(&loop, &r.frames, 10000);
  ck_assert_str_eq(r.last, "hi");
  ck_assert_int_eq(r.frames, 1);
  ck_assert_int_eq(tt_channel_disconnect(p.channel), 0);
  tt_test_run_until(&loop, &r.closed, 10000);
  tt_process_close(&p, NULL);
  tt_test_loop_close(&loop);
  tt_zygote_close(&z);
  if (z.sock >= 0) waitpid(fake, NULL, 0);
}
END_TEST

Suite *process_suite(void) {
  Suite *s = suite_create("process");
  TCase *tc = tcase_create("process");
  TCase *rp = tcase_create("rpc");
  TCase *sp = tcase_create("spawn");
  tcase_set_timeout(tc, 30);
  tcase_set_timeout(rp, 30);
  tcase_set_timeout(sp, 60);
  tcase_add_test(tc, test_echo_and_lifecycle_order);
  tcase_add_test(tc, test_handshake_from_options);
  tcase_add_test(tc, test_exit_code_and_no_kill_after_reap);
  tcase_add_test(tc, test_everything_sent_before_exit_is_delivered);
  tcase_add_test(tc, test_failed_spawn_leaves_nothing);
  tcase_add_test(sp, test_pidfd_sees_exit_and_signal);
  tcase_add_test(sp, test_exec_failures_are_synchronous);
  tcase_add_test(sp, test_script_without_shebang_runs_in_sh);
  tcase_add_test(sp, test_child_gets_exactly_its_fds);
  tcase_add_test(sp, test_child_session_and_signals);
  tcase_add_test(sp, test_failed_zygote_gives_fresh_descriptors);
  tcase_add_test(rp, test_call_gets_its_reply);
  tcase_add_test(rp, test_call_times_out_and_retries);
  tcase_add_test(rp, test_calls_fail_when_the_channel_ends);
  suite_add_tcase(s, tc);
  suite_add_tcase(s, rp);
  suite_add_tcase(s, sp);
  return s;
}
