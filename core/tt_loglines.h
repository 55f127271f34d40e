/*
 * tether log lines: a worker's output, which comes in pieces of any size,
 * cut into whole lines, each written to a log sink behind a prefix (e.g.
 * "[3] ") in one write, so that the lines of workers sharing one file never
 * interleave within a line.  A line longer than TT_LOG_MAX_LINE is cut
 * there; a last line without its newline gets one at the end.
 */
#ifndef TT_LOGLINES_H
#define TT_LOGLINES_H

#include <stddef.h>
#include <sys/types.h>

#include "tt_logsink.h"

/* The partial line waiting for its newline.  Zeroed: empty. */
typedef struct {
  char *buf;
  size_t len, cap;
} tt_loglines_t;

/* Feeds `n` bytes of output; n <= 0: the stream ended (the buffer is
 * freed).  `sink` NULL: lines are cut and dropped.  0, or UV_ENOMEM (the
 * lines of this piece that could not be written are dropped). */
int tt_loglines_feed(tt_loglines_t *l, const char *prefix, size_t prefix_len,
                     const char *buf, ssize_t n, tt_logsink_t *sink);
void tt_loglines_free(tt_loglines_t *l);

#endif /* TT_LOGLINES_H */
