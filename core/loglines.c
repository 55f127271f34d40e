/* Log lines: see tt_loglines.h. */
#include "tt_loglines.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "tt_limits.h"

static int append(tt_loglines_t *l, const char *p, size_t n) {
  if (l->len + n > l->cap) {
    size_t cap = l->cap ? l->cap : 256;
    char *nb;
    while (cap < l->len + n) cap *= 2;
    if ((nb = realloc(l->buf, cap)) == NULL) return UV_ENOMEM;
    l->buf = nb;
    l->cap = cap;
  }
  memcpy(l->buf + l->len, p, n);
  l->len += n;
  return 0;
}

/* The line in `l`, behind the prefix, onto `out`. */
static int emit(tt_loglines_t *out, const char *prefix, size_t prefix_len,
                tt_loglines_t *l) {
  int err = append(out, prefix, prefix_len);
  if (err == 0) err = append(out, l->buf, l->len);
  l->len = 0;
  return err;
}

int tt_loglines_feed(tt_loglines_t *l, const char *prefix, size_t prefix_len,
                     const char *buf, ssize_t n, tt_logsink_t *sink) {
  /* every whole line of this piece goes out in one write */
  tt_loglines_t out = {NULL, 0, 0};
  int err = 0;
  if (n > 0) {
    const char *p = buf, *end = buf + n;
    while (p < end && err == 0) {
      const char *nl = memchr(p, '\n', (size_t)(end - p));
      size_t k = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
      err = append(l, p, k);
      p += k;
      if (err == 0 && (nl || l->len >= TT_LOG_MAX_LINE)) {
        if (!nl) err = append(l, "\n", 1);
        if (err == 0) err = emit(&out, prefix, prefix_len, l);
        l->len = 0;
      }
    }
  } else if (l->len > 0) { /* the end: the last line had no newline */
    err = append(l, "\n", 1);
    if (err == 0) err = emit(&out, prefix, prefix_len, l);
  }
  if (err == 0 && out.len > 0 && sink != NULL)
    tt_logsink_write(sink, out.buf, out.len);
  free(out.buf);
  if (n <= 0) tt_loglines_free(l);
  return err;
}

void tt_loglines_free(tt_loglines_t *l) {
  free(l->buf);
  memset(l, 0, sizeof *l);
}
