/* Tests of tt_sd_notify (core/tt_notify.h): one datagram to the socket
 * NOTIFY_SOCKET names (a path or an abstract name), 0 when unset, clear
 * errors for names that cannot be used. */
#include <check.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "suites.h"
#include "tt_notify.h"

/* A datagram socket bound at `name` ('@': abstract), as systemd's. */
static int listen_at(const char *name) {
  struct sockaddr_un sa;
  size_t len = strlen(name);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, name, len);
  if (name[0] == '@') sa.sun_path[0] = '\0';
  else unlink(name);
  ck_assert_int_eq(
      bind(fd, (struct sockaddr *)&sa,
           (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
                       (name[0] == '@' ? 0 : 1))),
      0);
  return fd;
}

static void expect_datagram(int fd, const char *want) {
  char buf[256];
  ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
  ck_assert_int_eq(n, (ssize_t)strlen(want));
  buf[n] = '\0';
  ck_assert_str_eq(buf, want);
}

START_TEST(test_notify_unset_is_a_no_op) {
  unsetenv("NOTIFY_SOCKET");
  ck_assert_int_eq(tt_sd_notify("READY=1"), 0);
  setenv("NOTIFY_SOCKET", "", 1);
  ck_assert_int_eq(tt_sd_notify("READY=1"), 0);
}
END_TEST

START_TEST(test_notify_path) {
  char path[64];
  int fd;
  snprintf(path, sizeof path, "/tmp/tt-notify-%d.sock", (int)getpid());
  fd = listen_at(path);
  setenv("NOTIFY_SOCKET", path, 1);
  ck_assert_int_eq(tt_sd_notify("READY=1"), 1);
  ck_assert_int_eq(tt_sd_notify("STATUS=2 workers\nWATCHDOG=1"), 1);
  expect_datagram(fd, "READY=1");
  expect_datagram(fd, "STATUS=2 workers\nWATCHDOG=1");
  close(fd);
  /* nobody listens any more */
  unlink(path);
  ck_assert_int_eq(tt_sd_notify("STOPPING=1"), UV_ENOENT);
}
END_TEST

START_TEST(test_notify_abstract) {
  char name[64];
  int fd;
  snprintf(name, sizeof name, "@tt-notify-test-%d", (int)getpid());
  fd = listen_at(name);
  setenv("NOTIFY_SOCKET", name, 1);
  ck_assert_int_eq(tt_sd_notify("STOPPING=1"), 1);
  expect_datagram(fd, "STOPPING=1");
  close(fd);
  ck_assert_int_eq(tt_sd_notify("STOPPING=1"), UV_ECONNREFUSED);
}
END_TEST

START_TEST(test_notify_bad_names) {
  char name[200];
  memset(name, 'x', sizeof name - 1);
  name[sizeof name - 1] = '\0';
  name[0] = '/';
  setenv("NOTIFY_SOCKET", name, 1);
  ck_assert_int_eq(tt_sd_notify("READY=1"), UV_ENAMETOOLONG);
  name[0] = '@';
  setenv("NOTIFY_SOCKET", name, 1);
  ck_assert_int_eq(tt_sd_notify("READY=1"), UV_ENAMETOOLONG);
  setenv("NOTIFY_SOCKET", "relative.sock", 1);
  ck_assert_int_eq(tt_sd_notify("READY=1"), UV_EINVAL);
  ck_assert_int_eq(tt_sd_notify(NULL), UV_EINVAL);
}
END_TEST

Suite *notify_suite(void) {
  Suite *s = suite_create("notify");
  TCase *tc = tcase_create("notify");
  tcase_add_test(tc, test_notify_unset_is_a_no_op);
  tcase_add_test(tc, test_notify_path);
  tcase_add_test(tc, test_notify_abstract);
  tcase_add_test(tc, test_notify_bad_names);
  suite_add_tcase(s, tc);
  return s;
}
