/* File descriptor flag helpers. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

int tt__dup_fds(const int *fds, unsigned n, int **out) {
  int *v;
  *out = NULL;
  if (n == 0) return 0;
  if ((v = malloc(n * sizeof *v)) == NULL) return UV_ENOMEM;
  for (unsigned i = 0; i < n; i++) {
    if ((v[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3)) < 0) {
      int err = -errno;
      tt__free_fds(v, i);
      return err;
    }
  }
  *out = v;
  return 0;
}

void tt__free_fds(int *fds, unsigned n) {
  if (fds == NULL) return;
  for (unsigned i = 0; i < n; i++) close(fds[i]);
  free(fds);
}

int tt__set_flags(int fd, int nonblock, int cloexec) {
  int fl = fcntl(fd, F_GETFL);
  int fdfl = fcntl(fd, F_GETFD);
  if (fl < 0 || fdfl < 0) return -errno;
  fl = nonblock ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  fdfl = cloexec ? (fdfl | FD_CLOEXEC) : (fdfl & ~FD_CLOEXEC);
  if (fcntl(fd, F_SETFL, fl) < 0 || fcntl(fd, F_SETFD, fdfl) < 0)
    return -errno;
  return 0;
}
