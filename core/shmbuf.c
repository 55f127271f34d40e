/* Shared buffers in sealed memfds (tt_shmbuf.h). */
#include "tt_shmbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#define SEALS_FROZEN (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW)

void tt_shmbuf_close(tt_shmbuf_t *b);

static void init(tt_shmbuf_t *b) {
  memset(b, 0, sizeof *b);
  b->fd = -1;
}

int tt_shmbuf_create(tt_shmbuf_t *b, size_t size) {
  int err;
  init(b);
  if (size > TT_SHMBUF_MAX) return UV_EINVAL;
  if ((b->fd = memfd_create("tether.buffer", MFD_CLOEXEC | MFD_ALLOW_SEALING)) < 0)
    return errno == ENOSYS ? UV_ENOSYS : -errno;
  if (size > 0) {
    if (ftruncate(b->fd, (off_t)size) != 0) {
      err = -errno;
      goto fail;
    }
    /* its maker writes it: every page made now, in one call, rather than
     * by a fault per page (dear on a virtual machine) */
    b->data = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, b->fd, 0);
    if (b->data == MAP_FAILED) {
      b->data = NULL;
      err = UV_ENOMEM;
      goto fail;
    }
  }
  b->size = size;
  return 0;
fail:
  close(b->fd);
  init(b);
  return err;
}

int tt_shmbuf_freeze(tt_shmbuf_t *b) {
  char *ro;
  if (b->fd < 0) return UV_EBADF;
  if (b->frozen) return 0;
  /* F_SEAL_WRITE is refused while any shared mapping that could be made
   * writable exists (a read-only one of a writable descriptor included):
   * unmapped first, sealed, then mapped read-only (which sealing makes
   * read-only for good) */
  if (b->size > 0) munmap(b->data, b->size);
  b->data = NULL;
  if (fcntl(b->fd, F_ADD_SEALS, SEALS_FROZEN | F_SEAL_SEAL) != 0) {
    int err = -errno;
    if (b->size > 0) {
      b->data = mmap(NULL, b->size, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd, 0);
      if (b->data == MAP_FAILED) {
        tt_shmbuf_close(b); /* (cannot be had back: gone) */
        return UV_ENOMEM;
      }
    }
    return err;
  }
  if (b->size > 0) {
    ro = mmap(NULL, b->size, PROT_READ, MAP_SHARED, b->fd, 0);
    if (ro == MAP_FAILED) {
      tt_shmbuf_close(b);
      return UV_ENOMEM;
    }
    b->data = ro;
  }
  b->frozen = 1;
  return 0;
}

int tt_shmbuf_adopt(tt_shmbuf_t *b, int fd, size_t size, size_t max) {
  struct stat sb;
  int seals;
  init(b);
  if ((seals = fcntl(fd, F_GET_SEALS)) < 0) return UV_EBADF;
  if ((seals & SEALS_FROZEN) != SEALS_FROZEN) return UV_EPERM;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) return UV_EBADF;
  if (size > max || size > TT_SHMBUF_MAX || (uint64_t)sb.st_size != size)
    return UV_EINVAL;
  if (size > 0) {
    /* mapped lazily: a receiver that reads a few bytes of a large buffer
     * maps a few pages (a read fault maps 16 around it), not all of them */
    b->data = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (b->data == MAP_FAILED) {
      b->data = NULL;
      return UV_ENOMEM;
    }
  }
  b->fd = fd;
  b->size = size;
  b->frozen = 1;
  return 0;
}

void tt_shmbuf_close(tt_shmbuf_t *b) {
  if (b->data != NULL) munmap(b->data, b->size);
  if (b->fd >= 0) close(b->fd);
  init(b);
}
