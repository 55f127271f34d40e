/*
 * What the descriptor tests and the handles fuzzer share (header only: the
 * fuzzer is built without the Check suites): counting our open
 * descriptors, and writing as a hostile peer does, one sendmsg() with or
 * without a descriptor attached.
 */
#ifndef TT_TEST_PEER_UTIL_H
#define TT_TEST_PEER_UTIL_H

#include <dirent.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

/* Open descriptors, or -1 without /proc.  libuv keeps two of its own from
 * the first loop on: made before the first count. */
static inline int tt_test_open_fds(void) {
  static int warm;
  int n = 0;
  DIR *d;
  struct dirent *e;
  if (!warm) {
    uv_loop_t l;
    warm = 1;
    uv_loop_init(&l);
    uv_loop_close(&l);
  }
  if ((d = opendir("/proc/self/fd")) == NULL) return -1;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1; /* the directory's own */
}

/* One sendmsg() of `n` bytes on socket `s`, with `nfds` descriptors
 * attached (SCM_RIGHTS, at most 32): what sendmsg returns. */
static inline ssize_t tt_test_sendmsg_fds(int s, const void *p, size_t n,
                                          const int *fds, int nfds,
                                          int flags) {
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * 32)];
  } cm;
  struct iovec iov = {(void *)p, n};
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  if (nfds > 0) {
    struct cmsghdr *c;
    memset(&cm, 0, sizeof cm);
    mh.msg_control = cm.buf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
  }
  return sendmsg(s, &mh, flags | MSG_NOSIGNAL);
}

/* The same with one descriptor, or none when fd < 0. */
static inline ssize_t tt_test_sendmsg_fd(int s, const void *p, size_t n,
                                         int fd, int flags) {
  return tt_test_sendmsg_fds(s, p, n, &fd, fd >= 0 ? 1 : 0, flags);
}

#endif /* TT_TEST_PEER_UTIL_H */
