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
#include <sys/resource.h>
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
  tt_zygote_init(z, sv[0]); /* (before anything is written to it) */
  *zpid = fork();
  ck_assert_int_ge(*zpid, 0);
  tt_zygote_set_pid(z, *zpid);
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

/* A hostile or broken zygote, played by one process that says it is its
 * own spare (a record it may write), reads our request, then answers
 * with `kind`, `err`, `pid` (or nothing, when kind is 0).  The request
 * fails with `expect`, the zygote is closed at once (never asked again),
 * and the "spare" is killed and reaped by the close. */
static void garbled(int32_t kind, int32_t err, int32_t pid, int expect) {
  tt_zygote_t z;
  int sv[2], fpid, got = 0, p[2];
  int targets[1] = {1};
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  tt_zygote_init(&z, sv[0]);
  fpid = fork();
  ck_assert_int_ge(fpid, 0);
  if (fpid == 0) {
    int32_t rec[3] = {1 /* SPARE */, 0, (int32_t)getpid()};
    char buf[4096];
    close(sv[0]);
    (void)!write(sv[1], rec, sizeof rec);
    (void)!read(sv[1], buf, sizeof buf); /* (the request) */
    rec[0] = kind, rec[1] = err, rec[2] = pid;
    if (kind != 0) (void)!write(sv[1], rec, sizeof rec);
    while (read(sv[1], buf, sizeof buf) > 0) {
    }
    _exit(0);
  }
  close(sv[1]);
  z.timeout_ms = 300;
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(request(&z, p[1], &got, targets, 1), expect);
  ck_assert_int_eq(z.sock, -1);
  ck_assert_int_eq(request(&z, p[1], &got, targets, 1), UV_EBADF);
  errno = 0;
  ck_assert_int_eq(kill(fpid, 0), -1);
  ck_assert_int_eq(errno, ESRCH);
  assert_no_children();
  close(p[0]);
  close(p[1]);
}

START_TEST(test_garbled_zygote) {
  garbled(77, 0, 0, UV_EPROTO);               /* no such record */
  garbled(2 /* REPLY */, 0, 1, UV_EPROTO);    /* a worker it never made */
  garbled(2, 0, -5, UV_EPROTO);
  garbled(2, -ENOEXEC, 0, UV_EPROTO);         /* a refusal no spare gives */
  garbled(2, INT32_MIN, 0, UV_EPROTO);
  garbled(2, UV_EBUSY, 12345, UV_EPROTO);     /* a worker and a refusal */
  garbled(0, 0, 0, UV_ETIMEDOUT);             /* no answer at all */
}
END_TEST

/* A stand-in zygote (a fork of ours) names a spare it did not make, as
 * the real one names each spare once clone() returns.  `spare` is our
 * child (`ours`: the asker's end); the stand-in writes SPARE(spare), then waits for our end to
 * close. */
static int fake_zygote(int sock, int ours, int spare) {
  int pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    int32_t rec[3] = {1 /* SPARE */, 0, (int32_t)spare};
    char buf[4096];
    close(ours);
    (void)!write(sock, rec, sizeof rec);
    while (read(sock, buf, sizeof buf) > 0) {
    }
    _exit(0);
  }
  return pid;
}

/* A record naming a process other than its writer is refused unless the
 * zygote wrote it: the asker never takes another child of its own for a
 * spare (to kill at the close). */
START_TEST(test_spare_record_from_another) {
  tt_zygote_t z;
  int sv[2], fpid, victim, got = 0, p[2], st;
  int targets[1] = {1};
  victim = fork();
  ck_assert_int_ge(victim, 0);
  if (victim == 0) {
    pause();
    _exit(0);
  }
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  tt_zygote_init(&z, sv[0]);
  tt_zygote_set_pid(&z, getpid()); /* a zygote is known: not the writer */
  fpid = fake_zygote(sv[1], sv[0], victim);
  close(sv[1]);
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(request(&z, p[1], &got, targets, 1), UV_EPROTO);
  ck_assert_int_eq(z.sock, -1);
  ck_assert_int_eq(kill(victim, 0), 0); /* untouched */
  ck_assert_int_eq(waitpid(fpid, &st, 0), fpid);
  kill(victim, SIGKILL);
  ck_assert_int_eq(waitpid(victim, &st, 0), victim);
  assert_no_children();
  close(p[0]);
  close(p[1]);
}
END_TEST

/* A spare killed before its own record (between the zygote's clone and
 * its first write) is known from the zygote's record alone, and reaped
 * when the zygote is closed: no zombie we never heard of. */
START_TEST(test_spare_named_by_zygote) {
  tt_zygote_t z;
  int sv[2], fpid, spare, got = 0, p[2], st;
  int targets[1] = {1};
  spare = fork();
  ck_assert_int_ge(spare, 0);
  if (spare == 0) _exit(9); /* dies before it could say a word */
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  tt_zygote_init(&z, sv[0]);
  fpid = fake_zygote(sv[1], sv[0], spare);
  tt_zygote_set_pid(&z, fpid);
  close(sv[1]);
  ck_assert_int_eq(pipe(p), 0);
  /* the stand-in answers nothing: the request times out, the zygote is
   * closed, and the spare it named is reaped */
  z.timeout_ms = 300;
  ck_assert_int_eq(request(&z, p[1], &got, targets, 1), UV_ETIMEDOUT);
  ck_assert_int_eq(z.sock, -1);
  ck_assert_int_eq(waitpid(fpid, &st, 0), fpid);
  assert_no_children(); /* the spare too */
  close(p[0]);
  close(p[1]);
}
END_TEST

/* Each spare is named twice, by the zygote and by itself, in either
 * order: it is noted once, and once it serves nothing of it is left. */
START_TEST(test_spare_named_twice) {
  tt_zygote_t z;
  int sv[2], fpid, spare, got = 0, p[2], go[2], st;
  int targets[1] = {1};
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ck_assert_int_eq(pipe(go), 0);
  tt_zygote_init(&z, sv[0]);
  spare = fork();
  ck_assert_int_ge(spare, 0);
  if (spare == 0) {
    int32_t rec[3] = {1 /* SPARE */, 0, (int32_t)getpid()};
    int32_t reply[3] = {2 /* REPLY */, 0, (int32_t)getpid()};
    char b;
    close(sv[0]);
    (void)!write(sv[1], rec, sizeof rec);
    (void)!read(go[0], &b, 1); /* after the zygote's record */
    (void)!write(sv[1], reply, sizeof reply);
    _exit(7);
  }
  close(go[0]);
  {
    /* the zygote's record comes after the spare's own here; then it lets
     * the spare answer, as arming it would */
    int32_t again[3] = {1 /* SPARE */, 0, (int32_t)spare};
    fpid = fork();
    ck_assert_int_ge(fpid, 0);
    if (fpid == 0) {
      char buf[4096];
      close(sv[0]);
      usleep(20000);
      (void)!write(sv[1], again, sizeof again);
      (void)!write(go[1], "g", 1);
      while (read(sv[1], buf, sizeof buf) > 0) {
      }
      _exit(0);
    }
  }
  tt_zygote_set_pid(&z, fpid);
  close(sv[1]);
  close(go[1]);
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(request(&z, p[1], &got, targets, 1), 0);
  ck_assert_int_eq(got, spare);
  ck_assert_uint_eq(z.nspares, 0); /* noted once, forgotten once */
  ck_assert_int_eq(waitpid(spare, &st, 0), spare);
  ck_assert_int_eq(WEXITSTATUS(st), 7);
  tt_zygote_close(&z);
  ck_assert_int_eq(waitpid(fpid, &st, 0), fpid);
  assert_no_children();
  close(p[0]);
  close(p[1]);
}
END_TEST

/* A spare that cannot allocate a request refuses it (UV_ENOMEM) and
 * stays in step: the next request is served. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#else
#define UNDER_ASAN 0
#endif
static long vm_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char l[256];
  long v = 0;
  while (f != NULL && fgets(l, sizeof l, f) != NULL)
    if (sscanf(l, "VmSize: %ld", &v) == 1) break;
  if (f != NULL) fclose(f);
  return v;
}

START_TEST(test_spare_out_of_memory) {
  tt_zygote_t z;
  int sv[2], zpid, pid = 0, p[2], st;
  int targets[1] = {1};
  size_t big = 3u << 20;
  char *e, *args[] = {"lua5.4", "hello", NULL};
  char *env_big[2], *env_small[] = {"ZV=from-the-asker", NULL};
  int fds[1];
  tt_zygote_request_t req;
  if (UNDER_ASAN) return; /* (ASan's reservations defeat RLIMIT_AS) */
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  tt_zygote_init(&z, sv[0]);
  zpid = fork();
  ck_assert_int_ge(zpid, 0);
  tt_zygote_set_pid(&z, zpid);
  if (zpid == 0) {
    struct rlimit rl;
    tt_zygote_worker_t w;
    int r;
    close(sv[0]);
    rl.rlim_cur = (rlim_t)(vm_kb() + 1024) * 1024; /* 1 MB of room */
    rl.rlim_max = RLIM_INFINITY;
    setrlimit(RLIMIT_AS, &rl);
    r = tt_zygote_serve(sv[1], 1);
    if (r > 0) {
      r = tt_zygote_claim(sv[1], r, NULL, 0, &w);
      if (r == 1) {
        (void)!write(1, "ok\n", 3);
        _exit(7);
      }
    }
    _exit(r == 0 ? 0 : 1);
  }
  close(sv[1]);
  ck_assert_int_eq(pipe(p), 0);
  e = malloc(big + 3);
  ck_assert_ptr_nonnull(e);
  memcpy(e, "X=", 2);
  memset(e + 2, 'a', big);
  e[big + 2] = '\0';
  env_big[0] = e;
  env_big[1] = NULL;
  fds[0] = p[1];
  memset(&req, 0, sizeof req);
  req.args = args;
  req.env = env_big;
  req.fds = fds;
  req.targets = targets;
  req.nfds = 1;
  ck_assert_int_eq(tt_zygote_request(&z, &req, &pid), UV_ENOMEM);
  ck_assert_int_ge(z.sock, 0); /* still in step */
  req.env = env_small;
  ck_assert_int_eq(tt_zygote_request(&z, &req, &pid), 0);
  ck_assert_int_eq(waitpid(pid, &st, 0), pid);
  ck_assert_int_eq(WEXITSTATUS(st), 7);
  free(e);
  tt_zygote_close(&z);
  ck_assert_int_eq(waitpid(zpid, &st, 0), zpid);
  assert_no_children();
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
  tcase_add_test(tc, test_zygote_gone);
  tcase_add_test(tc, test_spare_dies_unused);
  tcase_add_test(tc, test_several_spares);
  tcase_add_test(tc, test_one_of_several_dies);
  tcase_add_test(tc, test_garbled_zygote);
  tcase_add_test(tc, test_spare_record_from_another);
  tcase_add_test(tc, test_spare_named_by_zygote);
  tcase_add_test(tc, test_spare_named_twice);
  tcase_add_test(tc, test_spare_out_of_memory);
  suite_add_tcase(s, tc);
  return s;
}
