/* File descriptor flag helpers. */
#include <errno.h>
#include <fcntl.h>

#include "internal.h"

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
