#include "tt_lockfile.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#include <uv.h>

int tt_lockfile_acquire(const char *path, int *fd) {
  int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600), err;
  if (f < 0) return -errno;
  /* flock, not fcntl locks: those belong to the process and are dropped
   * by any close of the file, e.g. a library reading it */
  if (flock(f, LOCK_EX | LOCK_NB) != 0) {
    err = errno == EWOULDBLOCK ? UV_EAGAIN : -errno;
    close(f);
    return err;
  }
  *fd = f;
  return 0;
}
