/*
 * tether shared buffer: bytes in a memfd, mapped by every process that
 * holds it, so a large value is written once by its producer and read in
 * place by the others (doc/zero-copy.md).
 *
 * A buffer is writable by its creator until frozen: then its writable
 * mapping is replaced by a read-only one and the memfd sealed (no write,
 * no shrink, no growth, no more seals), so nobody, its creator included,
 * can change the bytes again.  Only a frozen buffer's descriptor may be
 * handed to another process, and a receiver adopts a descriptor only if
 * it is a memfd sealed so, of the size it was told: what it maps cannot
 * change under it.
 */
#ifndef TT_SHMBUF_H
#define TT_SHMBUF_H

#include <stddef.h>

/* The largest buffer made or adopted (1 GiB). */
#define TT_SHMBUF_MAX ((size_t)1 << 30)

typedef struct {
  int fd;      /* -1 once closed */
  char *data;  /* NULL for an empty buffer */
  size_t size;
  int frozen;
} tt_shmbuf_t;

/* A zeroed, writable buffer of `size` bytes (0 to TT_SHMBUF_MAX): 0, or
 * UV_EINVAL (too big), UV_ENOSYS (no memfd here), UV_EMFILE, UV_ENOMEM. */
int tt_shmbuf_create(tt_shmbuf_t *b, size_t size);

/* Makes it read-only for good (idempotent): 0, or an error: the buffer is
 * then still writable, or, when its memory could not be mapped again
 * (UV_ENOMEM), closed. */
int tt_shmbuf_freeze(tt_shmbuf_t *b);

/* Takes `fd` as a frozen buffer of `size` bytes: 0 (the descriptor is the
 * buffer's now), or, with `fd` still the caller's: UV_EBADF (not a memfd,
 * or no seals can be read), UV_EPERM (not sealed against writes, shrinking
 * and growth: its sender could still change it), UV_EINVAL (not `size`
 * bytes, or more than `max`), UV_ENOMEM (cannot be mapped). */
int tt_shmbuf_adopt(tt_shmbuf_t *b, int fd, size_t size, size_t max);

/* Unmaps and closes.  Idempotent. */
void tt_shmbuf_close(tt_shmbuf_t *b);

#endif /* TT_SHMBUF_H */
