/*
 * Incremental frame decoder.  Invariant: buf[start, end) holds unconsumed
 * bytes and never starts inside an already delivered frame.  Once a stream
 * is rejected (d->error set) the decoder stays rejected: a peer that sent one
 * malformed frame cannot be resynchronised.
 */
#include "tt_frame.h"

#include <stdlib.h>
#include <string.h>

#include "tt_error.h"
#include "tt_lines.h"
#include <uv.h>

/* Room a read asks for when no large frame is pending. */
#define TT_FRAME_READ_CHUNK ((size_t)64 << 10)
/* Below this much free space a read is not worth a syscall: compact first. */
#define TT_FRAME_MIN_READ ((size_t)16 << 10)
/* An empty buffer larger than this is given back after a large frame. */
#define TT_FRAME_KEEP_CAP ((size_t)2 << 20)

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

void tt_frame_header_pack(unsigned char *out, unsigned kind, unsigned flags,
                          uint32_t id, uint32_t len) {
  put_u32(out, len);
  out[4] = TT_FRAME_VERSION;
  out[5] = (unsigned char)kind;
  out[6] = (unsigned char)flags;
  out[7] = (unsigned char)(flags >> 8);
  put_u32(out + 8, id);
}

int tt_frame_header_parse(const unsigned char *in, size_t max_message,
                          tt_frame_header_t *h, const char **why) {
  h->len = get_u32(in);
  h->version = in[4];
  h->kind = in[5];
  h->flags = (uint16_t)(in[6] | in[7] << 8);
  h->id = get_u32(in + 8);
  if (h->version != TT_FRAME_VERSION) {
    *why = "unsupported frame version";
    return TT_ERR_IPC_PROTOCOL;
  }
  if (h->kind == 0 || h->kind > TT__FRAME_KIND_MAX) {
    *why = "unknown frame kind";
    return TT_ERR_IPC_PROTOCOL;
  }
  if ((size_t)h->len > max_message) {
    *why = "frame larger than max_message";
    return TT_ERR_IPC_PROTOCOL;
  }
  if (h->id == 0 && (h->kind == TT_FRAME_REQUEST ||
                     h->kind == TT_FRAME_REPLY || h->kind == TT_FRAME_FAULT)) {
    *why = "request or reply without an id";
    return TT_ERR_IPC_PROTOCOL;
  }
  return 0;
}

void tt_frame_decoder_init(tt_frame_decoder_t *d, size_t max_message) {
  memset(d, 0, sizeof *d);
  d->max_message = max_message ? max_message : TT_FRAME_DEFAULT_MAX_MESSAGE;
}

void tt_frame_decoder_use_lines(tt_frame_decoder_t *d) { d->lines = 1; }

void tt_frame_decoder_free(tt_frame_decoder_t *d) {
  free(d->buf);
  d->buf = NULL;
  d->cap = d->start = d->end = 0;
}

size_t tt_frame_decoder_pending(const tt_frame_decoder_t *d) {
  return d->end - d->start;
}

static int grow(tt_frame_decoder_t *d, size_t want) {
  char *nb = realloc(d->buf, want);
  if (nb == NULL) return UV_ENOMEM;
  d->buf = nb;
  d->cap = want;
  return 0;
}

static void compact(tt_frame_decoder_t *d) {
  if (d->start == 0) return;
  memmove(d->buf, d->buf + d->start, d->end - d->start);
  d->end -= d->start;
  d->start = 0;
}

int tt_frame_decoder_space(tt_frame_decoder_t *d, char **base, size_t *len) {
  size_t have = d->end - d->start;
  size_t need = TT_FRAME_MIN_READ; /* bytes of free space we want after end */
  tt_frame_header_t h;
  const char *why;
  int err;

  if (have == 0) {
    d->start = d->end = d->scan = 0;
    if (d->cap > TT_FRAME_KEEP_CAP) tt_frame_decoder_free(d);
  }
  if (d->lines) { /* a line's length is unknown until its "\n" */
    if (d->cap - d->end < need) {
      compact(d);
      if (d->cap - d->end < need) {
        size_t want = d->cap ? d->cap * 2 : TT_FRAME_READ_CHUNK;
        if (want < d->end + need) want = d->end + need;
        if ((err = grow(d, want)) != 0) return err;
      }
    }
    *base = d->buf + d->end;
    *len = d->cap - d->end;
    return 0;
  }
  /* A frame is in progress: room for exactly its rest, so a large payload
   * is read in place and its tail does not cause reallocations.  The header
   * is validated here too: a callback may have stopped commit() before it
   * looked at this one. */
  if (have >= TT_FRAME_HEADER_SIZE && d->error == NULL &&
      tt_frame_header_parse((unsigned char *)d->buf + d->start, d->max_message,
                            &h, &why) == 0) {
    size_t total = TT_FRAME_HEADER_SIZE + (size_t)h.len;
    if (total > have) need = total - have;
  }
  if (d->cap - d->end < need) {
    compact(d);
    if (d->cap - d->end < need) {
      size_t want = d->end + need;
      if (want < TT_FRAME_READ_CHUNK) want = TT_FRAME_READ_CHUNK;
      if ((err = grow(d, want)) != 0) return err;
    }
  }
  *base = d->buf + d->end;
  *len = d->cap - d->end;
  return 0;
}

static int commit_lines(tt_frame_decoder_t *d, tt_frame_cb cb, void *ctx) {
  for (;;) {
    const char *line, *payload, *nl;
    size_t have = d->end - d->start, len;
    tt_frame_header_t h;
    int rc;
    if (have == 0) return 0; /* (and there may be no buffer yet) */
    line = d->buf + d->start;
    nl = memchr(line + d->scan, '\n', have - d->scan);
    if (nl == NULL) {
      d->scan = have;
      if (have > d->max_message) {
        d->error = "line longer than max_message";
        return TT_ERR_IPC_PROTOCOL;
      }
      return 0;
    }
    len = (size_t)(nl - line);
    if (len > d->max_message) {
      d->error = "line longer than max_message";
      return TT_ERR_IPC_PROTOCOL;
    }
    d->start += len + 1;
    d->scan = 0;
    if (tt_lines_parse(line, len, &h, &payload, &d->error) != 0)
      return TT_ERR_IPC_PROTOCOL;
    if ((rc = cb(ctx, &h, payload)) != 0) return rc;
  }
}

int tt_frame_decoder_commit(tt_frame_decoder_t *d, size_t n, tt_frame_cb cb,
                            void *ctx) {
  tt_frame_header_t h;
  int rc;

  if (d->error != NULL) return TT_ERR_IPC_PROTOCOL;
  d->end += n;
  if (d->lines) return commit_lines(d, cb, ctx);
  while (d->end - d->start >= TT_FRAME_HEADER_SIZE) {
    const unsigned char *p = (unsigned char *)d->buf + d->start;
    if (tt_frame_header_parse(p, d->max_message, &h, &d->error) != 0)
      return TT_ERR_IPC_PROTOCOL;
    if (d->end - d->start - TT_FRAME_HEADER_SIZE < (size_t)h.len) break;
    d->start += TT_FRAME_HEADER_SIZE + (size_t)h.len;
    /* The callback may feed or free nothing of ours: the channel defers
     * freeing the decoder until its close callback. */
    rc = cb(ctx, &h, (const char *)p + TT_FRAME_HEADER_SIZE);
    if (rc != 0) return rc;
  }
  return 0;
}

int tt_frame_decoder_feed(tt_frame_decoder_t *d, const void *data, size_t n,
                          tt_frame_cb cb, void *ctx) {
  const char *src = data;
  while (n > 0) {
    char *base;
    size_t room;
    int err = tt_frame_decoder_space(d, &base, &room);
    if (err != 0) return err;
    if (room > n) room = n;
    memcpy(base, src, room);
    src += room;
    n -= room;
    if ((err = tt_frame_decoder_commit(d, room, cb, ctx)) != 0) return err;
  }
  return 0;
}
