/*
 * libFuzzer target for the frame decoder (core/frame.c).
 *
 * Build and run (from the repository root):
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
 *     -fno-sanitize-recover=undefined -Icore fuzz/fuzz_frame.c core/frame.c \
 *     core/error.c $(pkg-config --cflags --libs libuv) -o fuzz/fuzz_frame
 *   fuzz/fuzz_frame -max_total_time=60 -max_len=65536 fuzz/corpus/frame
 *
 * Input layout: 4 control bytes, then the byte stream.
 *   c[0]     seed of the split points (with c[3])
 *   c[1]     callback stop mask: bit (i % 8) set = stop after frame i
 *   c[2]&3   max_message: 1 MiB, 64, 4096, 1 MiB
 *   c[2]&4   use tt_frame_decoder_feed() (then without stops)
 *   c[2]&8   after a callback stop, go straight on reading (space()) instead
 *            of draining the decoder with commit(d, 0) first
 *   c[3]     bits 4-5: chunk size class, up to 1, 16, 4096 bytes or any;
 *            all of it also seeds the split points (with c[0])
 * (Without the drain, an earlier frame.c sized its buffer from a header that
 * a callback stop had left unvalidated: this target found that in seconds as
 * an out-of-memory.)  -DTT_FUZZ_DRAIN_AFTER_STOP forces the drain.
 *
 * Invariants checked (abort() on violation, so libFuzzer reports a crash):
 * every delivered header is valid (version, kind, len <= max_message); bytes
 * delivered + pending == bytes fed while no error; an error leaves d->error
 * set and the decoder rejecting everything after; the buffer never grows past
 * the largest allowed frame plus slack.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tt_error.h"
#include "tt_frame.h"

#define HDR TT_FRAME_HEADER_SIZE

#define CHECK(cond)                                                           \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__,   \
              #cond);                                                         \
      abort();                                                                \
    }                                                                         \
  } while (0)

typedef struct {
  size_t max;
  size_t frames, consumed;
  unsigned stop_mask;
  unsigned sum;
} ctx_t;

static int on_frame(void *p, const tt_frame_header_t *h, const char *payload) {
  ctx_t *c = p;
  CHECK(h->version == TT_FRAME_VERSION);
  CHECK(h->kind >= 1 && h->kind <= TT__FRAME_KIND_MAX);
  CHECK((size_t)h->len <= c->max);
  CHECK(h->len == 0 || payload != NULL);
  /* Touch the payload so ASan checks every byte of it is in bounds. */
  for (uint32_t i = 0; i < h->len; i++) c->sum += (unsigned char)payload[i];
  c->consumed += HDR + h->len;
  if ((c->stop_mask >> (c->frames++ % 8)) & 1)
    return (int)(c->frames % 100) + 1;
  return 0;
}

static uint32_t next_rand(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const size_t maxes[] = {1 << 20, 64, 4096, 1 << 20};
  uint8_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  tt_frame_decoder_t d;
  ctx_t ctx;
  size_t pos = 0, bound;
  uint32_t seed;
  int rc = 0, use_feed, drain;

  if (size >= 4) {
    c0 = data[0];
    c1 = data[1];
    c2 = data[2];
    c3 = data[3];
    data += 4;
    size -= 4;
  }
  memset(&ctx, 0, sizeof ctx);
  ctx.max = maxes[c2 & 3];
  ctx.stop_mask = c1;
  use_feed = (c2 & 4) != 0;
  /* feed() drops the bytes it had not copied yet when the callback stops
   * (the caller cannot tell how many): no stops through feed(). */
  if (use_feed) ctx.stop_mask = 0;
  drain = (c2 & 8) == 0;
#ifdef TT_FUZZ_DRAIN_AFTER_STOP
  drain = 1;
#endif
  seed = ((uint32_t)c0 << 8 | c3) * 2654435761u + 1;
  /* Largest frame allowed, a read chunk, the minimum read, and the input
   * itself (complete frames held back by callback stops). */
  bound = HDR + ctx.max + (64 << 10) + (16 << 10) + size;

  tt_frame_decoder_init(&d, ctx.max);
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
      rc = tt_frame_decoder_feed(&d, data + pos, n, on_frame, &ctx);
      pos += n;
    } else {
      while (n > 0 && rc == 0) {
        char *base;
        size_t room;
        CHECK(tt_frame_decoder_space(&d, &base, &room) == 0);
        CHECK(room > 0);
        CHECK(d.cap <= bound);
        if (room > n) room = n;
        memcpy(base, data + pos, room);
        pos += room;
        n -= room;
        rc = tt_frame_decoder_commit(&d, room, on_frame, &ctx);
        if (rc > 0 && drain) {
          while (rc > 0) rc = tt_frame_decoder_commit(&d, 0, on_frame, &ctx);
        } else if (rc > 0) {
          rc = 0; /* resume through space() on the next round */
        }
      }
    }
    CHECK(d.cap <= bound);
  }
  if (rc == 0) {
    /* Finish anything a last callback stop left behind. */
    do {
      rc = tt_frame_decoder_commit(&d, 0, on_frame, &ctx);
    } while (rc > 0);
  }
  if (rc == 0) {
    CHECK(d.error == NULL);
    CHECK(ctx.consumed + tt_frame_decoder_pending(&d) == pos);
  } else {
    size_t frames = ctx.frames;
    unsigned char ok[HDR];
    CHECK(rc == TT_ERR_IPC_PROTOCOL);
    CHECK(d.error != NULL && d.error[0] != '\0');
    CHECK(ctx.consumed <= pos);
    ctx.stop_mask = 0;
    CHECK(tt_frame_decoder_commit(&d, 0, on_frame, &ctx) ==
          TT_ERR_IPC_PROTOCOL);
    tt_frame_header_pack(ok, TT_FRAME_MESSAGE, 0, 0, 0);
    CHECK(tt_frame_decoder_feed(&d, ok, HDR, on_frame, &ctx) ==
          TT_ERR_IPC_PROTOCOL);
    CHECK(ctx.frames == frames);
  }
  tt_frame_decoder_free(&d);
  return 0;
}
