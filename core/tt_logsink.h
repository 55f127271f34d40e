/*
 * tether log sink: appends lines to a log file without ever blocking the
 * loop.
 *
 * The file is opened O_APPEND|O_NONBLOCK|O_CLOEXEC (created 0644).  A FIFO
 * that has no reader yet is opened read-write, so the open neither blocks
 * nor fails and a reader that comes later gets what was written meanwhile.
 * A write that the file cannot take now (a FIFO or a pipe whose reader is
 * slow) leaves the rest in a bounded buffer, written when the fd is
 * writable again; lines that do not fit are dropped whole and counted, and
 * on_dropped tells the owner once per stall.  Regular files are written at
 * once (they never say EAGAIN).
 *
 * A regular file can be rotated by size (tt_logsink_rotate): when a write
 * would take it past max_size, the whole lines that fit are written, then
 * path.(keep-1) -> path.keep, ..., path -> path.1 (the oldest beyond keep
 * is overwritten, so dropped), a fresh path is opened, and the rest goes
 * there: a line is never split between two files (one longer than
 * max_size gets a file of its own).  keep 0 truncates the file instead.
 * Only renames and an open happen on the loop.  When the path no longer
 * is our file (another sink on the same path rotated it, or logrotate
 * moved it), the sink reopens the path instead of rotating again.  A
 * failed rotation is reported through on_trouble and the sink goes on
 * writing to the file it has, trying again after another max_size bytes.
 */
#ifndef TT_LOGSINK_H
#define TT_LOGSINK_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "tt_limits.h" /* TT_LOGSINK_BUFFER */

typedef struct tt_logsink_s tt_logsink_t;

struct tt_logsink_s {
  void *data; /* owner's */
  /* A stall began dropping lines (`dropped` counts all so far), or a
   * write failed (err < 0: the file is unusable until reopened), or a
   * rotation failed (err < 0, `failed_op` is "rotate"; nothing is lost). */
  void (*on_trouble)(tt_logsink_t *ls, int err, uint64_t dropped);
  const char *failed_op; /* read-only, during on_trouble: "write", "rotate" */

  /* private */
  uv_loop_t *loop;
  const char *path; /* the owner's string */
  int fd;
  int polling, closing, stalled;
  uv_poll_t *poll; /* made when the file first says EAGAIN */
  uv_timer_t closer; /* defers the close callback when there is no poll */
  char *buf;
  size_t len, cap;
  uint64_t dropped;
  int regular;        /* a regular file: rotation applies */
  uint64_t size;      /* of the file, as far as we wrote it */
  uint64_t max_size;  /* 0: no rotation */
  unsigned keep;
  uint64_t rotations;
  void (*close_cb)(tt_logsink_t *ls);
};

/* Opens `path` (kept, not copied).  0, or a negative error (nothing to
 * close then). */
int tt_logsink_open(uv_loop_t *loop, tt_logsink_t *ls, const char *path);
/* Appends `len` bytes: one or more whole lines. */
void tt_logsink_write(tt_logsink_t *ls, const char *p, size_t len);
/* Opens the path again (after logrotate moved the file); what waits in the
 * buffer goes to the new file.  0 or the error (the old file is kept). */
int tt_logsink_reopen(tt_logsink_t *ls);
uint64_t tt_logsink_dropped(const tt_logsink_t *ls);
/* Rotates the file past `max_size` bytes (0: never), keeping `keep` old
 * ones (at most TT_LOGSINK_MAX_KEEP; 0: truncate instead).  UV_EINVAL for
 * a keep over the bound.  No effect on a FIFO, a pipe or a tty. */
int tt_logsink_rotate(tt_logsink_t *ls, uint64_t max_size, unsigned keep);
/* Rotations (or truncations) done so far. */
uint64_t tt_logsink_rotations(const tt_logsink_t *ls);
/* Closes a sink that was opened but never written to, at once. */
void tt_logsink_discard(tt_logsink_t *ls);
/* What still waits is given one last non-blocking try, then the file is
 * closed; `cb` runs from the loop (never from inside this call) once the
 * memory may be freed.  Idempotent. */
void tt_logsink_close(tt_logsink_t *ls, void (*cb)(tt_logsink_t *ls));

#endif /* TT_LOGSINK_H */
