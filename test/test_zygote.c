/* Tests of the zygote's wire and fork (core/tt_zygote.h), without Lua: a
 * forked test process serves as the zygote; each worker it makes writes
 * what it has on its stdout (a pipe of ours) and exits with a known code,
 * and is reaped here, since CLONE_PARENT makes it our child. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "suites.h"
#include "tt_zygote.h"

/* A zygote process: serves on `sock`; each worker reports argv[1], its
 * cwd, $ZV and whether fd 5 is open, then exits 7.  *zpid: the zygote. */
static int start_zygote(int *zpid, const int *keep, size_t nkeep) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  *zpid = fork();
  ck_assert_int_ge(*zpid, 0);
  if (*zpid == 0) {
    tt_zygote_worker_t w;
    int r;
    close(sv[0]);
    r = tt_zygote_serve(sv[1], keep, nkeep, &w);
    if (r == 1) {
      char cwd[256], line[512];
      const char *zv = getenv("ZV");
      int n = snprintf(line, sizeof line, "%s|%s|%s|%d|%d\n", w.args[1],
                       getcwd(cwd, sizeof cwd) ? cwd : "?", zv ? zv : "-",
                       fcntl(5, F_GETFD) >= 0, fcntl(sv[1], F_GETFD) >= 0);
      (void)!write(1, line, (size_t)n);
      _exit(7);
    }
    _exit(r == 0 ? 0 : 1);
  }
  close(sv[1]);
  return sv[0];
}

static int request(int sock, int out_fd, int *pid, const int *targets,
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
  return tt_zygote_request(sock, &req, pid);
}

START_TEST(test_worker_is_ours) {
  int zpid, pid = 0, p[2], st;
  int targets[1] = {1};
  char buf[512] = {0};
  int sock = start_zygote(&zpid, NULL, 0);
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(request(sock, p[1], &pid, targets, 1), 0);
  close(p[1]);
  ck_assert_int_gt(pid, 0);
  ck_assert_int_ne(pid, zpid);
  /* our child, not the zygote's */
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert(WIFEXITED(st));
  ck_assert_int_eq(WEXITSTATUS(st), 7);
  ck_assert_int_gt(read(p[0], buf, sizeof buf - 1), 0);
  /* its argv, cwd and environment; nothing but its descriptors open
   * (fd 5 and the zygote's socket are not) */
  ck_assert_str_eq(buf, "hello|/tmp|from-the-asker|0|0\n");
  close(p[0]);
  close(sock); /* the zygote ends at EOF */
  ck_assert_int_eq(waitpid(zpid, &st, 0), zpid);
  ck_assert_int_eq(WEXITSTATUS(st), 0);
}
END_TEST

START_TEST(test_refusals) {
  int zpid, pid = 0, p[2], st;
  int keep[1] = {1}, targets[1] = {1};
  int sock = start_zygote(&zpid, keep, 1);
  ck_assert_int_eq(pipe(p), 0);
  /* a target the zygote's runtime keeps: refused, and still in step */
  ck_assert_int_eq(request(sock, p[1], &pid, targets, 1), UV_EBUSY);
  ck_assert_int_eq(request(sock, p[1], &pid, targets, 1), UV_EBUSY);
  /* nothing to give: refused before sending */
  ck_assert_int_eq(request(sock, p[1], &pid, targets, 0), UV_EINVAL);
  close(sock);
  ck_assert_int_eq(waitpid(zpid, &st, 0), zpid);
  /* a zygote that is gone */
  sock = start_zygote(&zpid, NULL, 0);
  kill(zpid, SIGKILL);
  ck_assert_int_eq(waitpid(zpid, &st, 0), zpid);
  {
    int err = request(sock, p[1], &pid, targets, 1);
    ck_assert(err == UV_EPIPE || err == UV_ECONNRESET);
  }
  close(sock);
  close(p[0]);
  close(p[1]);
}
END_TEST

Suite *zygote_suite(void) {
  Suite *s = suite_create("zygote");
  TCase *tc = tcase_create("core");
  signal(SIGPIPE, SIG_IGN);
  tcase_add_test(tc, test_worker_is_ours);
  tcase_add_test(tc, test_refusals);
  suite_add_tcase(s, tc);
  return s;
}
