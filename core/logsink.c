/*
 * Log sink: see tt_logsink.h.
 *
 * Invariants:
 * - buf[0, len) waits to be written, in order, and is never more than
 *   TT_LOGSINK_BUFFER; while it is not empty the poll (a FIFO or pipe: the
 *   only files that say EAGAIN) watches for WRITABLE.
 * - Every write is whole or partial; a partial one leaves its rest at the
 *   front of the buffer, so lines are never torn apart by later lines.
 * - The memory is the owner's; handles are closed before close_cb runs.
 * - With rotation, every write to a regular file is cut at line ends so
 *   that no file grows past max_size, unless one line alone does; `size`
 *   is the file's as we know it (fstat at open, then what we wrote; other
 *   writers to the same path are noticed when a rotation is due).
 */
#include "tt_logsink.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static int open_path(const char *path) {
  int flags = O_APPEND | O_CREAT | O_NONBLOCK | O_CLOEXEC;
  int fd = open(path, O_WRONLY | flags, 0644);
  /* a FIFO without a reader: be a reader too, so nothing blocks or fails */
  if (fd < 0 && errno == ENXIO) fd = open(path, O_RDWR | flags, 0644);
  return fd < 0 ? -errno : fd;
}

/* What rotation needs to know of a newly opened fd. */
static void measure(tt_logsink_t *ls) {
  struct stat st;
  ls->regular = fstat(ls->fd, &st) == 0 && S_ISREG(st.st_mode);
  ls->size = ls->regular ? (uint64_t)st.st_size : 0;
}

int tt_logsink_open(uv_loop_t *loop, tt_logsink_t *ls, const char *path) {
  void *data = ls->data;
  void (*trouble)(tt_logsink_t *, int, uint64_t) = ls->on_trouble;
  int fd = open_path(path);
  if (fd < 0) return fd;
  memset(ls, 0, sizeof *ls);
  ls->data = data;
  ls->on_trouble = trouble;
  ls->loop = loop;
  ls->path = path;
  ls->fd = fd;
  ls->failed_op = "write";
  measure(ls);
  return 0;
}

int tt_logsink_rotate(tt_logsink_t *ls, uint64_t max_size, unsigned keep) {
  if (keep > TT_LOGSINK_MAX_KEEP) return UV_EINVAL;
  ls->max_size = max_size;
  ls->keep = keep;
  return 0;
}

uint64_t tt_logsink_rotations(const tt_logsink_t *ls) { return ls->rotations; }

static void on_writable(uv_poll_t *h, int status, int events);

static void free_handle(uv_handle_t *h) { free(h); }

static void watch(tt_logsink_t *ls, int on) {
  if (ls->closing || on == ls->polling) return;
  if (on && ls->poll == NULL) {
    uv_poll_t *p = malloc(sizeof *p);
    if (p == NULL) return;
    if (uv_poll_init(ls->loop, p, ls->fd) != 0) { /* a regular file */
      free(p);
      return;
    }
    p->data = ls;
    ls->poll = p;
  }
  if (ls->poll == NULL) return;
  ls->polling = on;
  if (on) {
    uv_poll_start(ls->poll, UV_WRITABLE, on_writable);
    uv_unref((uv_handle_t *)ls->poll); /* logs never keep the loop alive */
  } else {
    uv_poll_stop(ls->poll);
  }
}

/* Writes as much of `p` as the file takes now: bytes written, or -errno
 * (EAGAIN is 0 bytes). */
static ssize_t write_now(tt_logsink_t *ls, const char *p, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t k = write(ls->fd, p + done, n - done);
    if (k < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return -errno;
    }
    done += (size_t)k;
  }
  return (ssize_t)done;
}

static void trouble(tt_logsink_t *ls, int err) {
  if (ls->on_trouble) ls->on_trouble(ls, err, ls->dropped);
}

static void rotate_trouble(tt_logsink_t *ls, int err) {
  ls->failed_op = "rotate";
  trouble(ls, err);
  ls->failed_op = "write";
}

/* Whether `path` still names the file we write to. */
static int path_is_ours(tt_logsink_t *ls) {
  struct stat a, b;
  if (fstat(ls->fd, &a) != 0 || stat(ls->path, &b) != 0) return 0;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* Moves to a freshly opened path: 0, or the error (the old fd is kept). */
static int switch_to_path(tt_logsink_t *ls) {
  int fd = open_path(ls->path);
  if (fd < 0) return fd;
  close(ls->fd);
  ls->fd = fd;
  measure(ls);
  return 0;
}

/* path.(keep-1) -> path.keep ... path -> path.1, then a fresh path (keep
 * 0: the file is truncated).  On failure what was renamed stays renamed
 * (the files are all still there, one number further) and we write on to
 * the file we have, trying again after another max_size bytes. */
static void rotate(tt_logsink_t *ls) {
  size_t plen = strlen(ls->path), cap = plen + 16;
  char *from = NULL, *to = NULL;
  int err = 0;
  if (!path_is_ours(ls)) { /* someone rotated it already: follow them */
    if ((err = switch_to_path(ls)) != 0) {
      ls->size = 0;
      rotate_trouble(ls, err);
    }
    return;
  }
  if (ls->keep == 0) {
    if (ftruncate(ls->fd, 0) != 0) err = -errno;
    goto done;
  }
  from = malloc(cap);
  to = malloc(cap);
  if (from == NULL || to == NULL) {
    err = UV_ENOMEM;
    goto done;
  }
  for (unsigned i = ls->keep - 1; i >= 1 && err == 0; i--) {
    snprintf(from, cap, "%s.%u", ls->path, i);
    snprintf(to, cap, "%s.%u", ls->path, i + 1);
    if (rename(from, to) != 0 && errno != ENOENT) err = -errno;
  }
  if (err == 0) {
    snprintf(to, cap, "%s.1", ls->path);
    if (rename(ls->path, to) != 0) err = -errno;
  }
  if (err == 0) err = switch_to_path(ls);
done:
  free(from);
  free(to);
  if (err != 0) {
    ls->size = 0; /* not again at every line: after another max_size */
    rotate_trouble(ls, err);
    return;
  }
  ls->size = 0;
  ls->rotations++;
}

/* Writes `n` bytes of whole lines to a regular file, rotating at line
 * ends: 0, or the write error. */
static int write_rotating(tt_logsink_t *ls, const char *p, size_t n) {
  while (n > 0) {
    size_t k = n;
    ssize_t w;
    if (ls->size + n > ls->max_size) {
      uint64_t room = ls->size < ls->max_size ? ls->max_size - ls->size : 0;
      const char *nl =
          room > 0 ? memrchr(p, '\n', room < n ? (size_t)room : n) : NULL;
      if (nl != NULL) {
        k = (size_t)(nl - p) + 1; /* the lines that fit */
      } else if (ls->size > 0) {
        rotate(ls);
        if (ls->size > 0) continue; /* followed another sink's rotation */
        k = 0;
      } else { /* one line longer than max_size: a file of its own */
        nl = memchr(p, '\n', n);
        k = nl ? (size_t)(nl - p) + 1 : n;
      }
      if (k == 0) continue;
    }
    if ((w = write_now(ls, p, k)) < 0) return (int)w;
    ls->size += (uint64_t)w;
    p += k;
    n -= k;
    if (n > 0 || ls->size >= ls->max_size) rotate(ls);
  }
  return 0;
}

/* Writes from the front of the buffer. */
static void drain(tt_logsink_t *ls) {
  ssize_t k;
  if (ls->len == 0) return;
  k = write_now(ls, ls->buf, ls->len);
  if (k < 0) {
    ls->len = 0;
    watch(ls, 0);
    trouble(ls, (int)k);
    return;
  }
  memmove(ls->buf, ls->buf + k, ls->len - (size_t)k);
  ls->len -= (size_t)k;
  if (ls->len == 0) ls->stalled = 0;
  watch(ls, ls->len > 0);
}

static void on_writable(uv_poll_t *h, int status, int events) {
  tt_logsink_t *ls = h->data;
  (void)events;
  if (status < 0) { /* the reader went away with the FIFO open: retry later */
    ls->polling = 0;
    return;
  }
  drain(ls);
}

static int keep(tt_logsink_t *ls, const char *p, size_t n) {
  if (ls->len + n > ls->cap) {
    size_t cap = ls->cap ? ls->cap : 4096;
    char *nb;
    while (cap < ls->len + n) cap *= 2;
    if (cap > TT_LOGSINK_BUFFER) cap = TT_LOGSINK_BUFFER;
    if (ls->len + n > cap || (nb = realloc(ls->buf, cap)) == NULL) return -1;
    ls->buf = nb;
    ls->cap = cap;
  }
  memcpy(ls->buf + ls->len, p, n);
  ls->len += n;
  return 0;
}

void tt_logsink_write(tt_logsink_t *ls, const char *p, size_t n) {
  ssize_t k = 0;
  if (ls->fd < 0 || n == 0) return;
  if (ls->max_size > 0 && ls->regular && ls->len == 0) {
    int err = write_rotating(ls, p, n); /* (a file never says EAGAIN) */
    if (err != 0) trouble(ls, err);
    return;
  }
  if (ls->len == 0) { /* nothing waits: straight to the file */
    k = write_now(ls, p, n);
    if (k < 0) {
      trouble(ls, (int)k);
      return;
    }
    if ((size_t)k == n) return;
  }
  if (keep(ls, p + k, n - (size_t)k) != 0) {
    /* a line partly written must be finished, whatever the bound */
    if (k > 0) {
      ls->dropped++;
    } else {
      ls->dropped++;
      if (!ls->stalled) {
        ls->stalled = 1;
        trouble(ls, 0);
      }
      return;
    }
  }
  watch(ls, 1);
}

int tt_logsink_reopen(tt_logsink_t *ls) {
  int fd = open_path(ls->path);
  if (fd < 0) return fd;
  if (ls->poll != NULL) { /* bound to the old fd */
    uv_close((uv_handle_t *)ls->poll, free_handle);
    ls->poll = NULL;
    ls->polling = 0;
  }
  close(ls->fd);
  ls->fd = fd;
  measure(ls);
  drain(ls);
  return 0;
}

uint64_t tt_logsink_dropped(const tt_logsink_t *ls) { return ls->dropped; }

void tt_logsink_discard(tt_logsink_t *ls) {
  if (ls->fd >= 0) close(ls->fd);
  ls->fd = -1;
  free(ls->buf);
  ls->buf = NULL;
}

static void finish_close(tt_logsink_t *ls) {
  free(ls->buf);
  ls->buf = NULL;
  ls->len = ls->cap = 0;
  if (ls->fd >= 0) close(ls->fd);
  ls->fd = -1;
  if (ls->close_cb) ls->close_cb(ls);
}

static void on_poll_closed(uv_handle_t *h) {
  tt_logsink_t *ls = h->data;
  free(h);
  finish_close(ls);
}

static void on_closer_closed(uv_handle_t *h) { finish_close(h->data); }

void tt_logsink_close(tt_logsink_t *ls, void (*cb)(tt_logsink_t *ls)) {
  if (ls->closing) return;
  if (ls->len > 0 && ls->fd >= 0) (void)write_now(ls, ls->buf, ls->len);
  ls->len = 0;
  ls->closing = 1;
  ls->close_cb = cb;
  if (ls->poll != NULL) {
    uv_close((uv_handle_t *)ls->poll, on_poll_closed);
    ls->poll = NULL;
  } else { /* nothing of ours to close: a handle made to be closed */
    uv_timer_init(ls->loop, &ls->closer);
    ls->closer.data = ls;
    uv_close((uv_handle_t *)&ls->closer, on_closer_closed);
  }
}
