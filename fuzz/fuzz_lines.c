/*
 * libFuzzer target for the JSON-lines decoder (Node.js "json" IPC framing:
 * tt_frame_decoder_use_lines() in core/frame.c, tt_lines_parse/pack in
 * core/lines.c).
 *
 * Build and run (from the repository root):
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
 *     -fno-sanitize-recover=undefined -Icore fuzz/fuzz_lines.c core/frame.c \
 *     core/lines.c core/error.c $(pkg-config --cflags --libs libuv) \
 *     -o build-fuzz/fuzz_lines
 *   build-fuzz/fuzz_lines -max_total_time=60 -max_len=80000 fuzz/corpus/lines
 *
 * Input layout: 4 control bytes, then the byte stream (as fuzz_frame.c).
 *   c[0]     seed of the split points (with c[3])
 *   c[1]     callback stop mask: bit (i % 8) set = stop after line i
 *   c[2]&3   max_message: 4096, 64, 4096, 1 MiB (small, so that the
 *            "line longer than max_message" path is reached)
 *   c[2]&4   use tt_frame_decoder_feed() (then without stops)
 *   c[2]&8   after a callback stop, go straight on reading (space()) instead
 *            of draining the decoder with commit(d, 0) first
 *   c[3]     bits 4-5: chunk size class, up to 1, 16, 4096 bytes or any;
 *            all of it also seeds the split points (with c[0])
 *
 * Every input is decoded three ways: by a reference model written from
 * tt_lines.h (split the stream at "\n", classify each line), by a one-shot
 * tt_frame_decoder_feed() of the whole stream, and split at the points
 * above.  abort() (a crash to libFuzzer) when:
 *   - in the callback: the line just consumed (the bytes before d->start) is
 *     not the next line of the input, ends in something else than "\n", or
 *     is longer than max_message; the payload is not inside that line (and
 *     so inside the current buffer) or contains "\n"; kind is not 1..4; id
 *     is 0 for kinds 2..4 or not 0 for a MESSAGE; an envelope's payload does
 *     not start right after its prefix ({"cmd":"TETHER_XXX","id":<id>,"field":) or is
 *     not closed by its "}"; the header differs from the reference model's;
 *   - tt_lines_pack(kind, id) + payload + tail, parsed again with
 *     tt_lines_parse(), does not give the same kind, id and payload;
 *   - the one-shot and the split decodings differ (frames, error or not,
 *     error text, bytes pending at the end), or differ from the model;
 *   - after an error the decoder accepts anything or calls back again;
 *   - the buffer grows past max_message + slack (plus the input, when a
 *     callback stop leaves lines unconsumed while reading on).
 * The first run found commit(d, 0) on a lines decoder that never had a
 * buffer (d->buf NULL: the empty stream) doing NULL + 0 and memchr(NULL,
 * .., 0), undefined behaviour that UBSan reports; fixed in frame.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tt_error.h"
#include "tt_frame.h"
#include "tt_lines.h"

#define CHECK(cond)                                                           \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__,   \
              #cond);                                                         \
      abort();                                                                \
    }                                                                         \
  } while (0)

/* Mirrors of frame.c's private tuning constants, used only as bounds. */
#define READ_CHUNK ((size_t)64 << 10)
#define MIN_READ ((size_t)16 << 10)

/* ------------------------------------------------------------------------ */
/* Reference model, from the envelope grammar in tt_lines.h. */

static const struct {
  unsigned kind;
  const char *key, *field;
} envelopes[] = {
    {TT_FRAME_REQUEST, "{\"cmd\":\"TETHER_REQUEST\",\"id\":", ",\"task\":"},
    {TT_FRAME_REPLY, "{\"cmd\":\"TETHER_REPLY\",\"id\":", ",\"result\":"},
    {TT_FRAME_FAULT, "{\"cmd\":\"TETHER_FAULT\",\"id\":", ",\"error\":"},
};

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

static size_t trimmed(const char *line, size_t n) {
  while (n > 0 && is_space(line[n - 1])) n--;
  return n;
}

typedef struct {
  unsigned kind;
  uint32_t id;
  size_t off, len; /* payload, relative to the line */
} ref_t;

/* 0 and *r, or -1 for a blank line.  An envelope is exactly
 *   key, 1-10 digits worth 1..2^32-1, field, at least one byte, "}"
 * once trailing blanks are dropped; anything else is a MESSAGE. */
static int ref_line(const char *line, size_t n, ref_t *r) {
  n = trimmed(line, n);
  if (n == 0) return -1;
  r->kind = TT_FRAME_MESSAGE;
  r->id = 0;
  r->off = 0;
  r->len = n;
  for (size_t e = 0; e < sizeof envelopes / sizeof envelopes[0]; e++) {
    size_t kl = strlen(envelopes[e].key), fl = strlen(envelopes[e].field);
    size_t nd = 0;
    uint64_t v = 0;
    if (n < kl || memcmp(line, envelopes[e].key, kl) != 0) continue;
    while (kl + nd < n && nd < 10 && line[kl + nd] >= '0' &&
           line[kl + nd] <= '9') {
      v = v * 10 + (uint64_t)(line[kl + nd] - '0');
      nd++;
    }
    if (nd == 0 || v == 0 || v > UINT32_MAX) return 0;
    if (kl + nd + fl + 2 > n) return 0;
    if (memcmp(line + kl + nd, envelopes[e].field, fl) != 0) return 0;
    if (line[n - 1] != '}') return 0;
    r->kind = envelopes[e].kind;
    r->id = (uint32_t)v;
    r->off = kl + nd + fl;
    r->len = n - 1 - r->off;
    return 0;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */

typedef struct {
  uint8_t kind;
  uint32_t id;
  size_t off; /* stream offset of the payload */
  uint32_t len;
} rec_t;

typedef struct {
  rec_t *v;
  size_t n, cap;
} recs_t;

static void recs_push(recs_t *r, const rec_t *x) {
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 64;
    r->v = realloc(r->v, r->cap * sizeof *r->v);
    CHECK(r->v != NULL);
  }
  r->v[r->n++] = *x;
}

typedef struct {
  tt_frame_decoder_t *d;
  const char *data; /* the whole stream */
  size_t size;
  size_t max;
  size_t consumed; /* stream bytes of the lines delivered, "\n" included */
  size_t frames;
  unsigned stop_mask;
  int rejected; /* the decoder reported an error: no more callbacks */
  char *rt;     /* round-trip line buffer: TT_LINES_HEAD_MAX + size + 2 */
  recs_t recs;
} ctx_t;

static void round_trip(ctx_t *c, const tt_frame_header_t *h,
                       const char *payload) {
  char head[TT_LINES_HEAD_MAX], tail[2];
  size_t hl, tl, n;
  tt_frame_header_t h2;
  const char *p2 = NULL, *why = NULL;

  if (memchr(payload, '\n', h->len) != NULL) return;
  CHECK(tt_lines_pack(h->kind, h->id, head, &hl, tail, &tl) == 0);
  CHECK(hl < TT_LINES_HEAD_MAX && tl >= 1 && tl <= 2);
  CHECK(tail[tl - 1] == '\n');
  memcpy(c->rt, head, hl);
  memcpy(c->rt + hl, payload, h->len);
  memcpy(c->rt + hl + h->len, tail, tl);
  n = hl + h->len + tl - 1; /* the line, without its "\n" */
  CHECK(memchr(c->rt, '\n', n) == NULL);
  CHECK(tt_lines_parse(c->rt, n, &h2, &p2, &why) == 0);
  CHECK(h2.version == TT_FRAME_VERSION);
  CHECK(h2.kind == h->kind);
  CHECK(h2.id == h->id);
  CHECK(h2.len == h->len);
  CHECK(p2 == c->rt + hl);
  CHECK(memcmp(p2, payload, h->len) == 0);
}

static int on_frame(void *p, const tt_frame_header_t *h, const char *payload) {
  ctx_t *c = p;
  const tt_frame_decoder_t *d = c->d;
  const char *src = c->data + c->consumed, *nl, *line;
  size_t L, n;
  ref_t r;
  rec_t rec;

  CHECK(!c->rejected);
  CHECK(d->error == NULL);
  /* Only complete lines are delivered, in order: the next "\n" of the input
   * ends this one. */
  nl = memchr(src, '\n', c->size - c->consumed);
  CHECK(nl != NULL);
  L = (size_t)(nl - src);
  CHECK(L <= c->max);
  /* The decoder consumed it: it sits just before d->start. */
  CHECK(d->buf != NULL);
  CHECK(d->start <= d->end && d->end <= d->cap);
  CHECK(d->start >= L + 1);
  line = d->buf + d->start - L - 1;
  CHECK(line[L] == '\n');
  CHECK(memcmp(line, src, L) == 0);
  n = trimmed(line, L);
  CHECK(n > 0); /* a blank line is an error, never a frame */

  CHECK(h->version == TT_FRAME_VERSION);
  CHECK(h->kind >= TT_FRAME_MESSAGE && h->kind <= TT_FRAME_FAULT);
  CHECK(h->flags == 0);
  CHECK(payload != NULL);
  /* Inside the line, so inside the current buffer. */
  CHECK(payload >= line && payload <= line + n);
  CHECK((size_t)h->len <= (size_t)(line + n - payload));
  CHECK(memchr(payload, '\n', h->len) == NULL);
  if (h->kind == TT_FRAME_MESSAGE) {
    CHECK(h->id == 0);
    CHECK(payload == line && h->len == n);
  } else {
    /* {"cmd":"TETHER_XXX","id":<digits>,"field":<payload>} */
    char head[TT_LINES_HEAD_MAX], tail[2];
    size_t hl, tl, kl, fl, i;
    uint64_t v = 0;
    const char *field;
    CHECK(h->id != 0);
    CHECK(tt_lines_pack(h->kind, h->id, head, &hl, tail, &tl) == 0);
    CHECK(hl < TT_LINES_HEAD_MAX);
    head[hl] = '\0';
    /* The key ends with "id": (the envelope starts with "cmd":, so the id's
     * digits follow the second colon, not the first). */
    CHECK(strstr(head, "\"id\":") != NULL);
    kl = (size_t)(strstr(head, "\"id\":") - head) + 5;
    field = strrchr(head, ',');
    CHECK(field != NULL);
    fl = hl - (size_t)(field - head);
    CHECK((size_t)(payload - line) > kl + fl);
    CHECK(memcmp(line, head, kl) == 0);
    CHECK(memcmp(payload - fl, field, fl) == 0);
    for (i = kl; line + i < payload - fl; i++) {
      CHECK(line[i] >= '0' && line[i] <= '9');
      v = v * 10 + (uint64_t)(line[i] - '0');
    }
    CHECK(i - kl >= 1 && i - kl <= 10);
    CHECK(v == h->id);
    CHECK(h->len >= 1);
    CHECK(payload + h->len + 1 == line + n && payload[h->len] == '}');
  }
  /* The model agrees. */
  CHECK(ref_line(line, L, &r) == 0);
  CHECK(r.kind == h->kind && r.id == h->id);
  CHECK(line + r.off == payload && r.len == h->len);

  round_trip(c, h, payload);

  rec.kind = h->kind;
  rec.id = h->id;
  rec.off = c->consumed + (size_t)(payload - line);
  rec.len = h->len;
  recs_push(&c->recs, &rec);
  c->consumed += L + 1;
  if ((c->stop_mask >> (c->frames++ % 8)) & 1)
    return (int)(c->frames % 100) + 1;
  return 0;
}

/* What a decoding ended with. */
typedef struct {
  int rc; /* 0 or TT_ERR_IPC_PROTOCOL */
  const char *error;
  size_t pending; /* when rc == 0 */
} end_t;

/* After an error, the decoder rejects everything and calls nobody. */
static void check_rejected(tt_frame_decoder_t *d, ctx_t *c) {
  static const char ok[] = "{\"a\":1}\n";
  size_t frames = c->frames;
  CHECK(d->error != NULL && d->error[0] != '\0');
  c->rejected = 1;
  CHECK(tt_frame_decoder_commit(d, 0, on_frame, c) == TT_ERR_IPC_PROTOCOL);
  CHECK(tt_frame_decoder_feed(d, ok, sizeof ok - 1, on_frame, c) ==
        TT_ERR_IPC_PROTOCOL);
  CHECK(c->frames == frames);
}

static uint32_t next_rand(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static void ctx_init(ctx_t *c, tt_frame_decoder_t *d, const char *data,
                     size_t size, size_t max, char *rt) {
  memset(c, 0, sizeof *c);
  c->d = d;
  c->data = data;
  c->size = size;
  c->max = max;
  c->rt = rt;
}

int LLVMFuzzerTestOneInput(const uint8_t *udata, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *udata, size_t size) {
  static const size_t maxes[] = {4096, 64, 4096, 1 << 20};
  const char *data = (const char *)udata;
  uint8_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  tt_frame_decoder_t d1, d2;
  ctx_t one, split;
  end_t e1, e2, em;
  recs_t model = {0};
  size_t pos = 0, bound, max, at;
  uint32_t seed;
  int rc = 0, use_feed, drain;
  char *rt;

  if (size >= 4) {
    c0 = (uint8_t)data[0];
    c1 = (uint8_t)data[1];
    c2 = (uint8_t)data[2];
    c3 = (uint8_t)data[3];
    data += 4;
    size -= 4;
  }
  max = maxes[c2 & 3];
  use_feed = (c2 & 4) != 0;
  drain = (c2 & 8) == 0;
  rt = malloc(TT_LINES_HEAD_MAX + size + 2);
  CHECK(rt != NULL);

  /* tt_lines_parse on the raw input as one line ("\n"s and all). */
  {
    tt_frame_header_t h;
    const char *pl = NULL, *why = NULL;
    ref_t r;
    int want = ref_line(data, size, &r);
    int got = tt_lines_parse(data, size, &h, &pl, &why);
    if (want != 0) {
      CHECK(got == TT_ERR_IPC_PROTOCOL && why != NULL && why[0] != '\0');
    } else {
      CHECK(got == 0);
      CHECK(h.kind == r.kind && h.id == r.id && h.len == r.len);
      CHECK(pl == data + r.off);
    }
  }

  /* The model: lines of the whole stream. */
  em.rc = 0;
  em.error = NULL;
  em.pending = 0;
  for (at = 0;;) {
    const char *nl = memchr(data + at, '\n', size - at);
    size_t L;
    ref_t r;
    rec_t rec;
    if (nl == NULL) {
      if (size - at > max)
        em.rc = TT_ERR_IPC_PROTOCOL;
      else
        em.pending = size - at;
      break;
    }
    L = (size_t)(nl - (data + at));
    if (L > max || ref_line(data + at, L, &r) != 0) {
      em.rc = TT_ERR_IPC_PROTOCOL;
      break;
    }
    rec.kind = (uint8_t)r.kind;
    rec.id = r.id;
    rec.off = at + r.off;
    rec.len = (uint32_t)r.len;
    recs_push(&model, &rec);
    at += L + 1;
  }

  /* One shot: the whole stream through feed(), no stops. */
  tt_frame_decoder_init(&d1, max);
  tt_frame_decoder_use_lines(&d1);
  ctx_init(&one, &d1, data, size, max, rt);
  e1.rc = tt_frame_decoder_feed(&d1, data, size, on_frame, &one);
  e1.error = d1.error;
  e1.pending = e1.rc == 0 ? tt_frame_decoder_pending(&d1) : 0;
  if (e1.rc == 0) {
    CHECK(d1.error == NULL);
    CHECK(one.consumed + e1.pending == size);
  } else {
    CHECK(e1.rc == TT_ERR_IPC_PROTOCOL);
    check_rejected(&d1, &one);
  }

  /* Split at input-derived points, through space()/commit() or feed(). */
  tt_frame_decoder_init(&d2, max);
  tt_frame_decoder_use_lines(&d2);
  ctx_init(&split, &d2, data, size, max, rt);
  split.stop_mask = use_feed ? 0 : c1; /* feed() cannot resume after one */
  seed = ((uint32_t)c0 << 8 | c3) * 2654435761u + 1;
  /* The longest line allowed, the minimum read, doubled by the buffer's
   * growth, and a first read chunk; reading on after a stop may hold any
   * part of the input on top. */
  bound = READ_CHUNK + 2 * (max + MIN_READ + (drain ? 0 : size));
  while (pos < size && rc == 0) {
    size_t n, limit;
    switch ((c3 >> 4) & 3) {
    case 0: limit = 1; break;
    case 1: limit = 16; break;
    case 2: limit = 4096; break;
    default: limit = size; break;
    }
    n = 1 + next_rand(&seed) % limit;
    if (n > size - pos) n = size - pos;
    if (use_feed) {
      rc = tt_frame_decoder_feed(&d2, data + pos, n, on_frame, &split);
      pos += n;
    } else {
      while (n > 0 && rc == 0) {
        char *base;
        size_t room;
        CHECK(tt_frame_decoder_space(&d2, &base, &room) == 0);
        CHECK(room > 0);
        CHECK(d2.cap <= bound);
        if (room > n) room = n;
        memcpy(base, data + pos, room);
        pos += room;
        n -= room;
        rc = tt_frame_decoder_commit(&d2, room, on_frame, &split);
        if (rc > 0 && drain) {
          while (rc > 0) rc = tt_frame_decoder_commit(&d2, 0, on_frame, &split);
        } else if (rc > 0) {
          rc = 0; /* resume through space() on the next round */
        }
      }
    }
    CHECK(d2.cap <= bound);
  }
  if (rc == 0) {
    /* Finish anything a last callback stop left behind.  (On the empty
     * stream this is commit(d, 0) on a decoder that never had a buffer.) */
    do {
      rc = tt_frame_decoder_commit(&d2, 0, on_frame, &split);
    } while (rc > 0);
  }
  e2.rc = rc;
  e2.error = d2.error;
  e2.pending = rc == 0 ? tt_frame_decoder_pending(&d2) : 0;
  if (rc == 0) {
    CHECK(d2.error == NULL);
    CHECK(pos == size);
    CHECK(split.consumed + e2.pending == size);
  } else {
    CHECK(rc == TT_ERR_IPC_PROTOCOL);
    CHECK(split.consumed <= pos);
    split.stop_mask = 0;
    check_rejected(&d2, &split);
  }

  /* Same frames, same end, however the stream was split; and as modelled. */
  CHECK(e1.rc == em.rc && e2.rc == em.rc);
  CHECK(e1.pending == em.pending && e2.pending == em.pending);
  if (em.rc != 0) CHECK(strcmp(e1.error, e2.error) == 0);
  CHECK(one.recs.n == model.n && split.recs.n == model.n);
  for (size_t i = 0; i < model.n; i++) {
    const rec_t *m = &model.v[i], *a = &one.recs.v[i], *b = &split.recs.v[i];
    CHECK(a->kind == m->kind && a->id == m->id && a->off == m->off &&
          a->len == m->len);
    CHECK(b->kind == m->kind && b->id == m->id && b->off == m->off &&
          b->len == m->len);
  }

  tt_frame_decoder_free(&d1);
  tt_frame_decoder_free(&d2);
  free(one.recs.v);
  free(split.recs.v);
  free(model.v);
  free(rt);
  return 0;
}
