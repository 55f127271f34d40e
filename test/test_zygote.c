/* Tests of the zygote's wire and fork (core/tt_zygote.h), without Lua: a
 * forked test process serves as the zygote; each worker it makes writes
 * what it has on its stdout (a pipe of ours) and exits with a known code,
 * and is reaped here, since CLONE_PARENT makes it our child. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "suites.h"
#include "tt_zygote.h"

/* A zygote process: serves on `sock`; each spare writes its pid on
 * spare_out (if >= 0), then waits; each worker reports argv[1], its cwd,
 * $ZV and whether fd 5 and the zygote's socket are open, then exits 7.
 * *zpid: the zygote. */
static void start_zygote_n(tt_zygote_t *z, int *zpid, const int *keep,
                           size_t nkeep, int spare_out, unsigned spares) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  *zpid = fork();
  ck_assert_int_ge(*zpid, 0);
  if (*zpid == 0) {
    tt_zygote_worker_t w;
    int r;
    close(sv[0]);
    r = tt_zygote_serve(sv[1], spares);
    if (r > 0) {
      int me = getpid();
      if (spare_out >= 0) (void)!write(spare_out, &me, sizeof me);
      r = tt_zygote_claim(sv[1], r, keep, nkeep, &w);
      if (r == 1) {
        char cwd[256], line[512];
        const char *zv = getenv("ZV");
        int n = snprintf(line, sizeof line, "%s|%s|%s|%d|%d\n", w.args[1],
                         getcwd(cwd, sizeof cwd) ? cwd : "?", zv ? zv : "-",
                         fcntl(5, F_GETFD) >= 0, fcntl(sv[1], F_GETFD) >= 0);
        (void)!write(1, line, (size_t)n);
        _exit(7);
      }
    }
    _exit(r == 0 ? 0 : 1);
  }
  close(sv[1]);
  if (spare_out >= 0) close(spare_out);
  tt_zygote_init(z, sv[0]);
}

static void start_zygote(tt_zygote_t *z, int *zpid, const int *keep,
                         size_t nkeep, int spare_out) {
  start_zygote_n(z, zpid, keep, nkeep, spare_out, 1);
}

static int request(tt_zygote_t *z, int out_fd, int *pid, const int *targets,
                   size_t nfds) {
  char *args[] = {"lua5.4", "hello", NULL};
  char *env[] = {"ZV=from-the-asker", NULL};
  int fds[2] = {out_fd, out_fd};
  tt_zygote_request_t req;
  memset(&req, 0, sizeof req);
  req.args = args;
  req.env = env;
  req.cwd = "/tmp";
  req.fds = fds;
  req.targets = targets;
  req.nfds = nfds;
  return tt_zygote_request(z, &req, pid);
}

/* After the zygote was reaped: no child of ours is left (no spare). */
static void assert_no_children(void) {
  int st;
  errno = 0;
  ck_assert_int_eq(waitpid(-1, &st, WNOHANG), -1);
  ck_assert_int_eq(errno, ECHILD);
}

static void expect_worker(int pid, int out) {
  int st;
  char buf[512] = {0};
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st));
  ck_assert_int_eq(WEXITSTATUS(st), 7);
  ck_assert_int_gt(read(out, buf, sizeof buf - 1), 0);
  /* its argv, cwd and environment; nothing but its descriptors open
   * (fd 5 and the zygote's socket are not) */
  ck_assert_str_eq(buf, "hello|/tmp|from-the-asker|0|0\n");
}

START_TEST(test_worker_is_ours) {
  tt_zygote_t z;
  int zpid, pid = 0, pid2 = 0, p[2], st;
  int targets[1] = {1};
  start_zygote(&z, &zpid, NULL, 0, -1);
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(request(&z, p[1], &pid, targets, 1), 0);
  ck_assert_int_gt(pid, 0);
  ck_assert_int_ne(pid, zpid);
  /* our child, not the zygote's */
  expect_worker(pid, p[0]);
  /* the next spare serves the next request */
  ck_assert_int_eq(request(&z, p[1], &pid2, targets, 1), 0);
  ck_assert_int_ne(pid2, pid);
  expect_worker(pid2, p[0]);
  close(p[1]);
  close(p[0]);
  tt_zygote_close(&z); /* the zygote ends at EOF, its spare is reaped */
  tt_zygote_close(&z);
  ck_assert_int_eq(z.sock, -1);
  ck_assert_int_eq(waitpid(zpid, &st, 0), zpid);
  ck_assert_int_eq(WEXITSTATUS(st), 0);
  assert_no_children();
  ck_assert_int_eq(request(&z, 1, &pid, targets, 1), UV_EBADF);
}
END_TEST

START_TEST(test_refusals) {
  tt_zygote_t z;
  int zpid, pid = 0, p[2], st;
  int keep[1] = {1}, targets[1] = {1};
  start_zygote(&z, &zpid, keep, 1, -1);
  ck_assert_int_eq(pipe(p), 0);
  /* a target the zygote's runtime keeps: refused, and still in step */
  ck_assert_int_eq(request(&z, p[1], &pid, targets, 1), UV_EBUSY);
  ck_assert_int_eq(request(&z, p[1], &pid, targets, 1), UV_EBUSY);
  /* nothing to give: refused before sending */
  ck_assert_int_eq(request(&z, p[1], &pid, targets, 0), UV_EINVAL);
  tt_zygote_close(&z);
  ck_assert_int_eq(waitpid(zpid, &st, 0), zpid);
  ck_assert_int_eq(WEXITSTATUS(st), 0);
  assert_no_children();
  close(p[0]);
  close(p[1]);
}
END_TEST

START_TEST(test_zygote_gone) {
  tt_zygote_t z;
  int zpid, pid = 0, p[2], st, err;
  int targets[1] = {1};
  start_zygote(&z, &zpid, NULL, 0, -1);
  ck_assert_int_eq(pipe(p), 0);
  kill(zpid, SIGKILL);
  ck_assert_int_eq(waitpid(zpid, &st, 0), zpid);
  /* the spare it had made (if it had) serves one; then nobody does */
  err = request(&z, p[1], &pid, targets, 1);
  if (err == 0) {
    expect_worker(pid, p[0]);
    err = request(&z, p[1], &pid, targets, 1);
  }
  ck_assert_msg(err == UV_EPIPE || err == UV_ECONNRESET, "%d", err);
  tt_zygote_close(&z);
  assert_no_children();
  close(p[0]);
  close(p[1]);
}
END_TEST

START_TEST(test_spare_dies_unused) {
  tt_zygote_t z;
  int zpid, pid = 0, spare = 0, p[2], sp[2], st, err;
  int targets[1] = {1};
  ck_assert_int_eq(pipe(sp), 0);
  start_zygote(&z, &zpid, NULL, 0, sp[1]);
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(read(sp[0], &spare, sizeof spare), (ssize_t)sizeof spare);
  kill(spare, SIGKILL);
  /* the zygote stops serving, and says so by its exit */
  ck_assert_int_eq(waitpid(zpid, &st, 0), zpid);
  ck_assert_int_eq(WEXITSTATUS(st), 1);
  err = request(&z, p[1], &pid, targets, 1);
  ck_assert_msg(err == UV_EPIPE || err == UV_ECONNRESET, "%d", err);
  /* the dead spare was our child: reaped by the close */
  tt_zygote_close(&z);
  assert_no_children();
  close(sp[0]);
  close(p[0]);
  close(p[1]);
}
END_TEST


/* Three spares: back-to-back requests are each served by a different
 * one, the zygote tells us of every spare it made, and at the close the
 * unused ones are reaped. */
START_TEST(test_several_spares) {
  tt_zygote_t z;
  int zpid, pids[6], p[2], st;
  int targets[1] = {1};
  start_zygote_n(&z, &zpid, NULL, 0, -1, 3);
  ck_assert_int_eq(pipe(p), 0);
  for (int i = 0; i < 6; i++) {
    ck_assert_int_eq(request(&z, p[1], &pids[i], targets, 1), 0);
    for (int k = 0; k < i; k++) ck_assert_int_ne(pids[i], pids[k]);
    expect_worker(pids[i], p[0]);
    ck_assert_uint_le(z.nspares, 3);
  }
  tt_zygote_close(&z);
  ck_assert_int_eq(waitpid(zpid, &st, 0), zpid);
  ck_assert_int_eq(WEXITSTATUS(st), 0);
  assert_no_children();
  close(p[0]);
  close(p[1]);
}
END_TEST

/* With several spares, one killed unused ends the zygote and the others
 * (they see their links end: nobody is left to read a request and never
 * answer), and every one is reaped, even one that was being made. */
START_TEST(test_one_of_several_dies) {
  tt_zygote_t z;
  int zpid, pid = 0, spare = 0, p[2], sp[2], st, err;
  int targets[1] = {1};
  ck_assert_int_eq(pipe(sp), 0);
  start_zygote_n(&z, &zpid, NULL, 0, sp[1], 3);
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(read(sp[0], &spare, sizeof spare), (ssize_t)sizeof spare);
  kill(spare, SIGKILL);
  ck_assert_int_eq(waitpid(zpid, &st, 0), zpid);
  ck_assert_int_eq(WEXITSTATUS(st), 1);
  err = request(&z, p[1], &pid, targets, 1);
  ck_assert_msg(err == UV_EPIPE || err == UV_ECONNRESET, "%d", err);
  ck_assert_int_eq(z.sock, -1); /* closed by the failed request */
  tt_zygote_close(&z);
  assert_no_children();
  close(sp[0]);
  close(p[0]);
  close(p[1]);
}
END_TEST

/* A hostile or broken zygote: after our request it writes a record of no
 * known kind, or a REPLY naming a process it never reported.  The request
 * fails with UV_EPROTO, the zygote is closed at once (never asked again),
 * and a spare it had reported is reaped. */
static void fake_zygote(tt_zygote_t *z, int *fpid, int *spare_pid,
                        int32_t kind, int32_t reply_pid) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  *spare_pid = fork(); /* a child of ours it reports as its spare */
  ck_assert_int_ge(*spare_pid, 0);
  if (*spare_pid == 0) {
    pause();
    _exit(0);
  }
  *fpid = fork();
  ck_assert_int_ge(*fpid, 0);
  if (*fpid == 0) {
    int32_t rec[3] = {1 /* SPARE */, 0, *spare_pid};
    char buf[4096];
    close(sv[0]);
    (void)!write(sv[1], rec, sizeof rec);
    (void)!read(sv[1], buf, sizeof buf); /* (the request) */
    rec[0] = kind, rec[1] = 0, rec[2] = reply_pid;
    (void)!write(sv[1], rec, sizeof rec);
    while (read(sv[1], buf, sizeof buf) > 0) {
    }
    _exit(0);
  }
  close(sv[1]);
  tt_zygote_init(z, sv[0]);
}

START_TEST(test_garbled_zygote) {
  struct {
    int32_t kind, reply;
  } cases[] = {{77, 0}, {2 /* REPLY */, 1}, {2, -5}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    tt_zygote_t z;
    int fpid, spare, pid = 0, p[2], st;
    int targets[1] = {1};
    fake_zygote(&z, &fpid, &spare, cases[i].kind, cases[i].reply);
    ck_assert_int_eq(pipe(p), 0);
    ck_assert_int_eq(request(&z, p[1], &pid, targets, 1), UV_EPROTO);
    ck_assert_int_eq(z.sock, -1);
    ck_assert_int_eq(request(&z, p[1], &pid, targets, 1), UV_EBADF);
    ck_assert_int_eq(waitpid(fpid, &st, 0), fpid);
    /* the reported spare was killed and reaped by the close */
    errno = 0;
    ck_assert_int_eq(kill(spare, 0), -1);
    ck_assert_int_eq(errno, ESRCH);
    assert_no_children();
    close(p[0]);
    close(p[1]);
  }
}
END_TEST

Suite *zygote_suite(void) {
  Suite *s = suite_create("zygote");
  TCase *tc = tcase_create("core");
  signal(SIGPIPE, SIG_IGN);
  tcase_add_test(tc, test_worker_is_ours);
  tcase_add_test(tc, test_refusals);
  tcase_add_test(tc, test_zygote_gone);
  tcase_add_test(tc, test_spare_dies_unused);
  tcase_add_test(tc, test_several_spares);
  tcase_add_test(tc, test_one_of_several_dies);
  tcase_add_test(tc, test_garbled_zygote);
  suite_add_tcase(s, tc);
  return s;
}
