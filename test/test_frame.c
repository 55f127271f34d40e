/*
 * Unit tests for the frame codec (core/frame.c, core/tt_frame.h).
 *
 * Hot loops check with REQUIRE() (a plain `if` + ck_abort_msg) rather than
 * ck_assert(): in CK_FORK mode every passing ck_assert() also records its
 * location through Check's message pipe, which costs a lot over the millions
 * of checks the split tests make.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "suites.h"
#include "tt_error.h"
#include "tt_frame.h"

/* Mirrors of frame.c's private tuning constants, used only as bounds. */
#define READ_CHUNK ((size_t)64 << 10)
#define MIN_READ ((size_t)16 << 10)
#define KEEP_CAP ((size_t)2 << 20)
#define MiB ((size_t)1 << 20)
#define HDR TT_FRAME_HEADER_SIZE

#define REQUIRE(cond, ...)                                                    \
  do {                                                                        \
    if (!(cond)) ck_abort_msg(__VA_ARGS__);                                   \
  } while (0)

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------------ */
/* Deterministic PRNG (splitmix64): every random test is seeded and prints
 * its seed/round on failure. */

typedef struct {
  uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static size_t rng_below(rng_t *r, size_t n) {
  return n ? (size_t)(rng_next(r) % n) : 0;
}

/* Uniform in [lo, hi]. */
static size_t rng_range(rng_t *r, size_t lo, size_t hi) {
  return lo + rng_below(r, hi - lo + 1);
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  ck_assert_ptr_nonnull(p);
  return p;
}

/* ------------------------------------------------------------------------ */
/* Streams of valid frames with known contents. */

typedef struct {
  unsigned kind, flags;
  uint32_t id;
  size_t len;
} fspec_t;

typedef struct {
  unsigned char *bytes;
  size_t size;
  const fspec_t *f;
  size_t *off; /* offset of frame i's payload in bytes */
  size_t *end; /* offset one past frame i */
  size_t n;
} stream_t;

static void stream_build(stream_t *s, const fspec_t *specs, size_t n,
                         uint64_t seed) {
  rng_t r = {seed};
  size_t pos = 0;

  s->size = 0;
  for (size_t i = 0; i < n; i++) s->size += HDR + specs[i].len;
  s->bytes = xmalloc(s->size);
  s->off = xmalloc(n * sizeof *s->off);
  s->end = xmalloc(n * sizeof *s->end);
  s->f = specs;
  s->n = n;
  for (size_t i = 0; i < n; i++) {
    tt_frame_header_pack(s->bytes + pos, specs[i].kind, specs[i].flags,
                         specs[i].id, (uint32_t)specs[i].len);
    pos += HDR;
    s->off[i] = pos;
    for (size_t j = 0; j < specs[i].len; j++)
      s->bytes[pos + j] = (unsigned char)rng_next(&r);
    pos += specs[i].len;
    s->end[i] = pos;
  }
}

static void stream_free(stream_t *s) {
  free(s->bytes);
  free(s->off);
  free(s->end);
  memset(s, 0, sizeof *s);
}

/* Number of frames entirely within the first k bytes; *bnd = their end. */
static size_t complete_within(const stream_t *s, size_t k, size_t *bnd) {
  size_t i = 0;
  *bnd = 0;
  while (i < s->n && s->end[i] <= k) *bnd = s->end[i++];
  return i;
}

/* Callback checking each frame against the stream, in order. */
typedef struct {
  const stream_t *s;
  size_t next;  /* index of the next expected frame */
  long stop_at; /* return stop_rc after delivering this frame index, or -1 */
  int stop_rc;
  int stop_every; /* return stop_rc after every frame */
} expect_t;

static void expect_init(expect_t *e, const stream_t *s) {
  memset(e, 0, sizeof *e);
  e->s = s;
  e->stop_at = -1;
}

static int expect_cb(void *ctx, const tt_frame_header_t *h,
                     const char *payload) {
  expect_t *e = ctx;
  const stream_t *s = e->s;
  const fspec_t *f;

  REQUIRE(e->next < s->n, "extra frame #%zu (kind %u, len %u)", e->next,
          (unsigned)h->kind, (unsigned)h->len);
  f = &s->f[e->next];
  REQUIRE(h->version == TT_FRAME_VERSION && h->kind == f->kind &&
              h->flags == f->flags && h->id == f->id && h->len == f->len,
          "frame #%zu: got v%u kind %u flags %#x id %#x len %u; want kind %u "
          "flags %#x id %#x len %zu",
          e->next, (unsigned)h->version, (unsigned)h->kind,
          (unsigned)h->flags, (unsigned)h->id, (unsigned)h->len, f->kind,
          f->flags, (unsigned)f->id, f->len);
  REQUIRE(f->len == 0 || payload != NULL, "frame #%zu: NULL payload",
          e->next);
  REQUIRE(f->len == 0 || memcmp(payload, s->bytes + s->off[e->next], f->len) == 0,
          "frame #%zu: payload differs", e->next);
  e->next++;
  if (e->stop_every || (e->stop_at >= 0 && (size_t)e->stop_at == e->next - 1))
    return e->stop_rc;
  return 0;
}

/* Counts frames; never expected to be called. */
static int count_cb(void *ctx, const tt_frame_header_t *h,
                    const char *payload) {
  (void)h;
  (void)payload;
  ++*(size_t *)ctx;
  return 0;
}

/* All five kinds, edge-case ids/flags and the payload sizes around the
 * header size, a page and the 64 KiB read chunk. */
static const fspec_t main_specs[] = {
    {TT_FRAME_MESSAGE, 0, 0, 0},
    {TT_FRAME_REQUEST, 1, 1, 1},
    {TT_FRAME_REPLY, 0xFFFF, 0xFFFFFFFFu, 11},
    {TT_FRAME_FAULT, 0x8000, 0x80000000u, 12},
    {TT_FRAME_CONTROL, 0x00FF, 0x01020304u, 13},
    {TT_FRAME_REQUEST, 0, 7, 4096},
    {TT_FRAME_REPLY, 0x0102, 7, 70000},
    {TT_FRAME_MESSAGE, 0, 0, 0},
    {TT_FRAME_CONTROL, 0xFFFF, 0xDEADBEEFu, 12},
};

/* A longer stream: adds frames of exactly/around the read chunk and well
 * beyond it, for the (cheaper) byte-by-byte and random chunk tests. */
static const fspec_t big_specs[] = {
    {TT_FRAME_MESSAGE, 0, 0, 0},
    {TT_FRAME_REQUEST, 1, 1, 1},
    {TT_FRAME_REPLY, 0xFFFF, 0xFFFFFFFFu, 11},
    {TT_FRAME_FAULT, 0x8000, 0x80000000u, 12},
    {TT_FRAME_CONTROL, 0x00FF, 0x01020304u, 13},
    {TT_FRAME_REQUEST, 0, 7, 4096},
    {TT_FRAME_REPLY, 0x0102, 7, 70000},
    {TT_FRAME_MESSAGE, 0, 0, 0},
    {TT_FRAME_FAULT, 3, 99, 200000},
    {TT_FRAME_MESSAGE, 0, 100, 65536 - HDR},
    {TT_FRAME_REQUEST, 0, 101, 65536},
    {TT_FRAME_REPLY, 0, 101, 65536 + 1},
    {TT_FRAME_MESSAGE, 0, 0, 16384},
    {TT_FRAME_CONTROL, 0xFFFF, 0xDEADBEEFu, 13},
};

/* Feeds s->bytes[from, to) and checks the frames/pending state afterwards. */
static void feed_check(tt_frame_decoder_t *d, expect_t *e, size_t from,
                       size_t to, const char *what, size_t round) {
  size_t bnd, want;
  int rc = tt_frame_decoder_feed(d, e->s->bytes + from, to - from, expect_cb, e);
  REQUIRE(rc == 0, "%s %zu: feed [%zu, %zu) returned %d (%s)", what, round,
          from, to, rc, d->error ? d->error : "-");
  want = complete_within(e->s, to, &bnd);
  REQUIRE(e->next == want, "%s %zu: after %zu bytes %zu frames, want %zu",
          what, round, to, e->next, want);
  REQUIRE(tt_frame_decoder_pending(d) == to - bnd,
          "%s %zu: after %zu bytes pending %zu, want %zu", what, round, to,
          tt_frame_decoder_pending(d), to - bnd);
  REQUIRE(d->error == NULL, "%s %zu: error %s", what, round, d->error);
}

/* ------------------------------------------------------------------------ */
/* Header pack/parse */

START_TEST(test_header_layout) {
  unsigned char b[HDR];
  static const unsigned char want[HDR] = {0xD4, 0xC3, 0xB2, 0xA1, 0x01, 0x03,
                                          0xEF, 0xBE, 0x44, 0x33, 0x22, 0x11};
  static const unsigned char want0[HDR] = {0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0};
  tt_frame_header_t h;
  const char *why = NULL;

  ck_assert_int_eq(TT_FRAME_HEADER_SIZE, 12);
  ck_assert_int_eq(TT_FRAME_VERSION, 1);
  memset(b, 0xAA, sizeof b);
  tt_frame_header_pack(b, TT_FRAME_REPLY, 0xBEEF, 0x11223344u, 0xA1B2C3D4u);
  ck_assert_mem_eq(b, want, HDR);
  ck_assert_int_eq(tt_frame_header_parse(b, (size_t)0xFFFFFFFFu, &h, &why), 0);
  ck_assert_uint_eq(h.len, 0xA1B2C3D4u);
  ck_assert_uint_eq(h.version, 1);
  ck_assert_uint_eq(h.kind, TT_FRAME_REPLY);
  ck_assert_uint_eq(h.flags, 0xBEEF);
  ck_assert_uint_eq(h.id, 0x11223344u);

  tt_frame_header_pack(b, TT_FRAME_MESSAGE, 0, 0, 0);
  ck_assert_mem_eq(b, want0, HDR);
  ck_assert_int_eq(tt_frame_header_parse(b, 0, &h, &why), 0);
  ck_assert_uint_eq(h.len, 0);
}
END_TEST

START_TEST(test_header_round_trip) {
  rng_t r = {42};
  for (int i = 0; i < 100000; i++) {
    unsigned char b[HDR];
    tt_frame_header_t h;
    const char *why = NULL;
    unsigned kind = (unsigned)rng_range(&r, 1, TT__FRAME_KIND_MAX);
    unsigned flags = (unsigned)(rng_next(&r) & 0xFFFF);
    uint32_t id = (uint32_t)rng_next(&r), len = (uint32_t)rng_next(&r);
    tt_frame_header_pack(b, kind, flags, id, len);
    /* Field by field, independent of the implementation's helpers. */
    REQUIRE(b[0] == (len & 0xFF) && b[1] == ((len >> 8) & 0xFF) &&
                b[2] == ((len >> 16) & 0xFF) && b[3] == (len >> 24) &&
                b[4] == TT_FRAME_VERSION && b[5] == kind &&
                b[6] == (flags & 0xFF) && b[7] == (flags >> 8) &&
                b[8] == (id & 0xFF) && b[9] == ((id >> 8) & 0xFF) &&
                b[10] == ((id >> 16) & 0xFF) && b[11] == (id >> 24),
            "layout: kind %u flags %#x id %#x len %#x", kind, flags,
            (unsigned)id, (unsigned)len);
    REQUIRE(tt_frame_header_parse(b, (size_t)len, &h, &why) == 0,
            "parse rejected len %#x: %s", (unsigned)len, why);
    REQUIRE(h.len == len && h.version == TT_FRAME_VERSION && h.kind == kind &&
                h.flags == flags && h.id == id,
            "round trip: kind %u flags %#x id %#x len %#x", kind, flags,
            (unsigned)id, (unsigned)len);
    if (len > 0)
      REQUIRE(tt_frame_header_parse(b, (size_t)len - 1, &h, &why) ==
                  TT_ERR_IPC_PROTOCOL,
              "len %#x accepted with max %#x", (unsigned)len,
              (unsigned)len - 1);
  }
}
END_TEST

START_TEST(test_header_parse_rejects) {
  unsigned char b[HDR];
  tt_frame_header_t h;
  const char *why;
  static const unsigned versions[] = {0, 2, 0x7F, 0xFF};
  static const unsigned kinds[] = {0, 8, 9, 0x80, 0xFF};

  for (size_t i = 0; i < COUNT(versions); i++) {
    tt_frame_header_pack(b, TT_FRAME_MESSAGE, 0, 0, 0);
    b[4] = (unsigned char)versions[i];
    why = NULL;
    ck_assert_int_eq(tt_frame_header_parse(b, MiB, &h, &why),
                     TT_ERR_IPC_PROTOCOL);
    ck_assert_ptr_nonnull(why);
    ck_assert_int_gt((int)strlen(why), 0);
  }
  for (size_t i = 0; i < COUNT(kinds); i++) {
    tt_frame_header_pack(b, kinds[i], 0, 0, 0);
    why = NULL;
    ck_assert_int_eq(tt_frame_header_parse(b, MiB, &h, &why),
                     TT_ERR_IPC_PROTOCOL);
    ck_assert_ptr_nonnull(why);
  }
  for (unsigned k = 1; k <= TT__FRAME_KIND_MAX; k++) {
    tt_frame_header_pack(b, k, 0xFFFF, 0xFFFFFFFFu, (uint32_t)MiB);
    ck_assert_int_eq(tt_frame_header_parse(b, MiB, &h, &why), 0);
    tt_frame_header_pack(b, k, 0, 0, (uint32_t)MiB + 1);
    why = NULL;
    ck_assert_int_eq(tt_frame_header_parse(b, MiB, &h, &why),
                     TT_ERR_IPC_PROTOCOL);
    ck_assert_ptr_nonnull(why);
  }
  tt_frame_header_pack(b, TT_FRAME_MESSAGE, 0, 0, 0xFFFFFFFFu);
  ck_assert_int_eq(tt_frame_header_parse(b, MiB, &h, &why),
                   TT_ERR_IPC_PROTOCOL);
  ck_assert_int_eq(tt_frame_header_parse(b, 0xFFFFFFFFu, &h, &why), 0);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Splits */

/* Is a cold (freshly initialised) decoder worth it for split k?  Near every
 * frame boundary and every 64 KiB, plus every 13th split; elsewhere a warm
 * decoder (reused, pending 0, buffer kept) is as good and spares the
 * allocator 70,000 large mallocs, which ASan and valgrind pay dearly for. */
static int cold_split(const stream_t *s, size_t k) {
  if (k % 13 == 0 || k % READ_CHUNK <= 2 * HDR ||
      READ_CHUNK - k % READ_CHUNK <= 2 * HDR)
    return 1;
  for (size_t i = 0; i < s->n; i++) {
    size_t a = s->end[i] - s->f[i].len - HDR; /* frame start */
    if ((k >= a && k - a <= 2 * HDR) || (k <= a && a - k <= 2 * HDR))
      return 1;
    if ((k >= s->end[i] && k - s->end[i] <= 2 * HDR) ||
        (k <= s->end[i] && s->end[i] - k <= 2 * HDR))
      return 1;
  }
  return 0;
}

START_TEST(test_every_split) {
  stream_t s;
  tt_frame_decoder_t warm;
  size_t cold = 0;
  stream_build(&s, main_specs, COUNT(main_specs), 1);
  tt_frame_decoder_init(&warm, 0);
  for (size_t k = 0; k <= s.size; k++) {
    tt_frame_decoder_t fresh, *d = &warm;
    expect_t e;
    if (cold_split(&s, k)) {
      tt_frame_decoder_init(&fresh, 0);
      d = &fresh;
      cold++;
    }
    expect_init(&e, &s);
    feed_check(d, &e, 0, k, "split", k);
    feed_check(d, &e, k, s.size, "split", k);
    REQUIRE(e.next == s.n && tt_frame_decoder_pending(d) == 0,
            "split %zu: %zu frames, pending %zu", k, e.next,
            tt_frame_decoder_pending(d));
    if (d == &fresh) tt_frame_decoder_free(&fresh);
  }
  tt_frame_decoder_free(&warm);
  ck_assert_uint_gt(cold, s.size / 13);
  stream_free(&s);
}
END_TEST

START_TEST(test_byte_by_byte) {
  stream_t s;
  tt_frame_decoder_t d;
  expect_t e;
  stream_build(&s, big_specs, COUNT(big_specs), 2);
  tt_frame_decoder_init(&d, 0);
  expect_init(&e, &s);
  for (size_t k = 0; k < s.size; k++) feed_check(&d, &e, k, k + 1, "byte", k);
  ck_assert_uint_eq(e.next, s.n);
  ck_assert_uint_eq(tt_frame_decoder_pending(&d), 0);
  tt_frame_decoder_free(&d);
  stream_free(&s);
}
END_TEST

static size_t random_chunk(rng_t *r, int mode) {
  switch (mode) {
  case 0: return rng_range(r, 1, 16);
  case 1: return rng_range(r, 1, 4096);
  case 2: return rng_range(r, 1, 300000);
  case 3: return rng_range(r, HDR - 1, HDR + 1);
  default: return random_chunk(r, (int)rng_below(r, 4));
  }
}

START_TEST(test_random_chunks) {
  stream_t s;
  stream_build(&s, big_specs, COUNT(big_specs), 3);
  for (size_t round = 0; round < 200; round++) {
    rng_t r = {1000 + round};
    int mode = (int)(round % 5);
    tt_frame_decoder_t d;
    expect_t e;
    size_t pos = 0;
    tt_frame_decoder_init(&d, 0);
    expect_init(&e, &s);
    while (pos < s.size) {
      size_t n = random_chunk(&r, mode);
      if (n > s.size - pos) n = s.size - pos;
      feed_check(&d, &e, pos, pos + n, "chunk round", round);
      pos += n;
    }
    REQUIRE(e.next == s.n && tt_frame_decoder_pending(&d) == 0,
            "round %zu: %zu frames, pending %zu", round, e.next,
            tt_frame_decoder_pending(&d));
    tt_frame_decoder_free(&d);
  }
  stream_free(&s);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Zero-copy: space/commit straight from a source. */

static const fspec_t zc_specs[] = {
    {TT_FRAME_MESSAGE, 0, 1, 5},
    {TT_FRAME_REQUEST, 0, 2, 3 * MiB},
    {TT_FRAME_REPLY, 0, 2, 100},
    {TT_FRAME_MESSAGE, 0, 0, 0},
    {TT_FRAME_FAULT, 0, 3, 70000},
    {TT_FRAME_CONTROL, 0, 0, 3 * MiB + 1},
    {TT_FRAME_MESSAGE, 0, 4, 1},
};

typedef struct {
  tt_frame_decoder_t d;
  expect_t e;
  size_t pos; /* stream bytes committed so far */
  size_t max_cap, max_total;
} zc_t;

static void zc_init(zc_t *z, const stream_t *s) {
  tt_frame_decoder_init(&z->d, 0);
  expect_init(&z->e, s);
  z->pos = z->max_cap = z->max_total = 0;
  for (size_t i = 0; i < s->n; i++)
    if (HDR + s->f[i].len > z->max_total) z->max_total = HDR + s->f[i].len;
}

/* Asks for space and checks the zero-copy promise: once the header of the
 * frame being received is in, the space holds the rest of that frame. */
static void zc_space(zc_t *z, char **base, size_t *len) {
  const stream_t *s = z->e.s;
  size_t i = z->e.next;
  int rc = tt_frame_decoder_space(&z->d, base, len);
  REQUIRE(rc == 0, "space: %d", rc);
  REQUIRE(*len > 0, "space: 0 bytes at %zu", z->pos);
  REQUIRE(*base == z->d.buf + z->d.end, "space: base not at end");
  if (i < s->n && z->pos >= s->off[i]) {
    REQUIRE(*len >= s->end[i] - z->pos,
            "frame #%zu: space %zu < %zu bytes still to come", i, *len,
            s->end[i] - z->pos);
  }
  if (z->d.cap > z->max_cap) z->max_cap = z->d.cap;
  /* No over-allocation either: at most the largest frame plus slack. */
  REQUIRE(z->d.cap <= z->max_total + READ_CHUNK + MIN_READ,
          "cap %zu for frames of at most %zu bytes", z->d.cap, z->max_total);
}

static void zc_commit(zc_t *z, size_t n) {
  size_t bnd, want;
  int rc = tt_frame_decoder_commit(&z->d, n, expect_cb, &z->e);
  z->pos += n;
  REQUIRE(rc == 0, "commit(%zu) at %zu: %d", n, z->pos, rc);
  want = complete_within(z->e.s, z->pos, &bnd);
  REQUIRE(z->e.next == want && tt_frame_decoder_pending(&z->d) == z->pos - bnd,
          "after %zu bytes: %zu frames (want %zu), pending %zu (want %zu)",
          z->pos, z->e.next, want, tt_frame_decoder_pending(&z->d),
          z->pos - bnd);
}

static void zc_finish(zc_t *z) {
  char *base;
  size_t len;
  ck_assert_uint_eq(z->e.next, z->e.s->n);
  ck_assert_uint_eq(tt_frame_decoder_pending(&z->d), 0);
  /* A 3 MiB frame needs a buffer beyond the keep limit ... */
  ck_assert_uint_ge(z->max_cap, HDR + 3 * MiB);
  ck_assert_uint_gt(z->max_cap, KEEP_CAP);
  /* ... which is given back once the decoder is empty again. */
  ck_assert_int_eq(tt_frame_decoder_space(&z->d, &base, &len), 0);
  ck_assert_uint_le(z->d.cap, KEEP_CAP);
  ck_assert_uint_ge(len, MIN_READ);
  tt_frame_decoder_free(&z->d);
  ck_assert_ptr_null(z->d.buf);
  ck_assert_uint_eq(z->d.cap, 0);
}

START_TEST(test_zero_copy_memory) {
  stream_t s;
  stream_build(&s, zc_specs, COUNT(zc_specs), 4);
  for (int round = 0; round < 6; round++) {
    rng_t r = {2000 + (uint64_t)round};
    zc_t z;
    zc_init(&z, &s);
    while (z.pos < s.size) {
      char *base;
      size_t len, n;
      zc_space(&z, &base, &len);
      switch (round % 3) {
      case 0: n = len; break;                            /* fill it all */
      case 1: n = rng_range(&r, 1, len); break;           /* any part */
      default: n = rng_range(&r, 1, len < 4096 ? len : 4096); /* small */
      }
      if (n > s.size - z.pos) n = s.size - z.pos;
      memcpy(base, s.bytes + z.pos, n);
      zc_commit(&z, n);
    }
    zc_finish(&z);
  }
  stream_free(&s);
}
END_TEST

static void write_all_random(int fd, const unsigned char *p, size_t n,
                             uint64_t seed) {
  rng_t r = {seed};
  while (n > 0) {
    size_t k = rng_range(&r, 1, 200000);
    ssize_t w;
    if (k > n) k = n;
    w = write(fd, p, k);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) _exit(2);
    p += w;
    n -= (size_t)w;
  }
}

START_TEST(test_zero_copy_socketpair) {
  stream_t s;
  int sv[2], status;
  pid_t pid;
  rng_t r = {3000};
  zc_t z;

  stream_build(&s, zc_specs, COUNT(zc_specs), 5);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(sv[0]);
    write_all_random(sv[1], s.bytes, s.size, 3001);
    close(sv[1]);
    _exit(0);
  }
  close(sv[1]);
  zc_init(&z, &s);
  for (;;) {
    char *base;
    size_t len, want;
    ssize_t got;
    zc_space(&z, &base, &len);
    want = rng_below(&r, 2) ? len : rng_range(&r, 1, len);
    got = read(sv[0], base, want);
    if (got < 0 && errno == EINTR) continue;
    REQUIRE(got >= 0, "read: %s", strerror(errno));
    if (got == 0) break;
    REQUIRE(z.pos + (size_t)got <= s.size, "read past the stream");
    REQUIRE(memcmp(base, s.bytes + z.pos, (size_t)got) == 0,
            "socket bytes differ at %zu", z.pos);
    zc_commit(&z, (size_t)got);
  }
  close(sv[0]);
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ck_assert_uint_eq(z.pos, s.size);
  zc_finish(&z);
  stream_free(&s);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Truncation, limits, garbage */

START_TEST(test_truncated) {
  static const fspec_t specs[] = {{TT_FRAME_REQUEST, 5, 77, 100}};
  stream_t s;
  stream_build(&s, specs, 1, 6);
  static const size_t cuts[] = {1, 5, HDR - 1, HDR, HDR + 1, HDR + 50,
                                HDR + 99};
  for (size_t i = 0; i < COUNT(cuts); i++) {
    tt_frame_decoder_t d;
    expect_t e;
    char *base;
    size_t len;
    /* feed() */
    tt_frame_decoder_init(&d, 0);
    expect_init(&e, &s);
    ck_assert_int_eq(tt_frame_decoder_feed(&d, s.bytes, cuts[i], expect_cb, &e), 0);
    ck_assert_uint_eq(e.next, 0);
    ck_assert_uint_eq(tt_frame_decoder_pending(&d), cuts[i]);
    ck_assert_ptr_null(d.error);
    /* The held bytes survive more space() calls and complete the frame. */
    ck_assert_int_eq(tt_frame_decoder_space(&d, &base, &len), 0);
    ck_assert_uint_eq(tt_frame_decoder_pending(&d), cuts[i]);
    ck_assert_int_eq(tt_frame_decoder_feed(&d, s.bytes + cuts[i],
                                           s.size - cuts[i], expect_cb, &e),
                     0);
    ck_assert_uint_eq(e.next, 1);
    ck_assert_uint_eq(tt_frame_decoder_pending(&d), 0);
    tt_frame_decoder_free(&d);

    /* space()/commit() */
    tt_frame_decoder_init(&d, 0);
    expect_init(&e, &s);
    ck_assert_int_eq(tt_frame_decoder_space(&d, &base, &len), 0);
    ck_assert_uint_ge(len, cuts[i]);
    memcpy(base, s.bytes, cuts[i]);
    ck_assert_int_eq(tt_frame_decoder_commit(&d, cuts[i], expect_cb, &e), 0);
    ck_assert_uint_eq(e.next, 0);
    ck_assert_uint_eq(tt_frame_decoder_pending(&d), cuts[i]);
    tt_frame_decoder_free(&d);
  }
  stream_free(&s);
}
END_TEST

/* A lone 12-byte header of a zero-length frame is a whole frame. */
START_TEST(test_empty_payload_frame) {
  static const fspec_t specs[] = {{TT_FRAME_CONTROL, 0, 9, 0}};
  stream_t s;
  tt_frame_decoder_t d;
  expect_t e;
  stream_build(&s, specs, 1, 7);
  tt_frame_decoder_init(&d, 0);
  expect_init(&e, &s);
  ck_assert_int_eq(tt_frame_decoder_feed(&d, s.bytes, HDR, expect_cb, &e), 0);
  ck_assert_uint_eq(e.next, 1);
  ck_assert_uint_eq(tt_frame_decoder_pending(&d), 0);
  /* Nothing fed, nothing happens. */
  ck_assert_int_eq(tt_frame_decoder_feed(&d, NULL, 0, expect_cb, &e), 0);
  ck_assert_int_eq(tt_frame_decoder_commit(&d, 0, expect_cb, &e), 0);
  ck_assert_uint_eq(e.next, 1);
  tt_frame_decoder_free(&d);
  stream_free(&s);
}
END_TEST

static void check_rejected(tt_frame_decoder_t *d, size_t *calls) {
  unsigned char ok[HDR];
  char *base;
  size_t len, before = *calls;
  ck_assert_ptr_nonnull(d->error);
  ck_assert_int_gt((int)strlen(d->error), 0);
  /* Stays rejected, whatever comes next. */
  tt_frame_header_pack(ok, TT_FRAME_MESSAGE, 0, 0, 0);
  ck_assert_int_eq(tt_frame_decoder_feed(d, ok, HDR, count_cb, calls),
                   TT_ERR_IPC_PROTOCOL);
  ck_assert_int_eq(tt_frame_decoder_commit(d, 0, count_cb, calls),
                   TT_ERR_IPC_PROTOCOL);
  ck_assert_int_eq(tt_frame_decoder_space(d, &base, &len), 0);
  memcpy(base, ok, HDR);
  ck_assert_int_eq(tt_frame_decoder_commit(d, HDR, count_cb, calls),
                   TT_ERR_IPC_PROTOCOL);
  ck_assert_uint_eq(*calls, before);
  /* The rejected header is never used to size the buffer. */
  ck_assert_uint_le(d->cap, READ_CHUNK);
}

START_TEST(test_oversized) {
  static const uint32_t lens[] = {0xFFFFFFFFu, (uint32_t)MiB + 1, 0x80000000u};
  for (size_t i = 0; i < COUNT(lens); i++) {
    unsigned char b[HDR];
    tt_frame_decoder_t d;
    size_t calls = 0;
    char *base;
    size_t len;
    tt_frame_header_pack(b, TT_FRAME_MESSAGE, 0, 1, lens[i]);

    /* In one piece. */
    tt_frame_decoder_init(&d, MiB);
    ck_assert_uint_eq(d.max_message, MiB);
    ck_assert_int_eq(tt_frame_decoder_feed(&d, b, HDR, count_cb, &calls),
                     TT_ERR_IPC_PROTOCOL);
    ck_assert_uint_eq(calls, 0);
    ck_assert_uint_le(d.cap, READ_CHUNK);
    check_rejected(&d, &calls);
    tt_frame_decoder_free(&d);

    /* Byte by byte: rejected exactly when the 12th byte arrives. */
    tt_frame_decoder_init(&d, MiB);
    for (size_t k = 0; k < HDR - 1; k++) {
      ck_assert_int_eq(tt_frame_decoder_feed(&d, b + k, 1, count_cb, &calls), 0);
      ck_assert_int_eq(tt_frame_decoder_space(&d, &base, &len), 0);
    }
    ck_assert_int_eq(tt_frame_decoder_feed(&d, b + HDR - 1, 1, count_cb, &calls),
                     TT_ERR_IPC_PROTOCOL);
    ck_assert_uint_le(d.cap, READ_CHUNK);
    check_rejected(&d, &calls);
    tt_frame_decoder_free(&d);

    /* After a valid frame: that one is delivered first. */
    tt_frame_decoder_init(&d, MiB);
    {
      unsigned char two[2 * HDR];
      tt_frame_header_pack(two, TT_FRAME_MESSAGE, 0, 0, 0);
      memcpy(two + HDR, b, HDR);
      ck_assert_int_eq(tt_frame_decoder_feed(&d, two, sizeof two, count_cb, &calls),
                       TT_ERR_IPC_PROTOCOL);
      ck_assert_uint_eq(calls, 1);
    }
    check_rejected(&d, &calls);
    tt_frame_decoder_free(&d);
  }
}
END_TEST

START_TEST(test_max_message_accepted) {
  static const fspec_t specs[] = {{TT_FRAME_REQUEST, 0, 5, MiB},
                                  {TT_FRAME_REPLY, 0, 5, 3}};
  stream_t s;
  tt_frame_decoder_t d;
  expect_t e;
  char *base;
  size_t len;
  stream_build(&s, specs, COUNT(specs), 8);
  tt_frame_decoder_init(&d, MiB);
  expect_init(&e, &s);
  ck_assert_int_eq(tt_frame_decoder_feed(&d, s.bytes, HDR, expect_cb, &e), 0);
  ck_assert_ptr_null(d.error);
  ck_assert_uint_eq(tt_frame_decoder_pending(&d), HDR);
  ck_assert_int_eq(tt_frame_decoder_space(&d, &base, &len), 0);
  ck_assert_uint_ge(len, MiB);
  ck_assert_int_eq(
      tt_frame_decoder_feed(&d, s.bytes + HDR, s.size - HDR, expect_cb, &e), 0);
  ck_assert_uint_eq(e.next, 2);
  ck_assert_uint_eq(tt_frame_decoder_pending(&d), 0);
  tt_frame_decoder_free(&d);
  stream_free(&s);

  /* max_message 0 means the default limit. */
  {
    unsigned char b[HDR];
    size_t calls = 0;
    tt_frame_decoder_init(&d, 0);
    ck_assert_uint_eq(d.max_message, TT_FRAME_DEFAULT_MAX_MESSAGE);
    tt_frame_header_pack(b, TT_FRAME_MESSAGE, 0, 0,
                         (uint32_t)TT_FRAME_DEFAULT_MAX_MESSAGE);
    ck_assert_int_eq(tt_frame_decoder_feed(&d, b, HDR, count_cb, &calls), 0);
    ck_assert_uint_eq(tt_frame_decoder_pending(&d), HDR);
    tt_frame_decoder_free(&d);
    tt_frame_decoder_init(&d, 0);
    tt_frame_header_pack(b, TT_FRAME_MESSAGE, 0, 0,
                         (uint32_t)TT_FRAME_DEFAULT_MAX_MESSAGE + 1);
    ck_assert_int_eq(tt_frame_decoder_feed(&d, b, HDR, count_cb, &calls),
                     TT_ERR_IPC_PROTOCOL);
    ck_assert_uint_le(d.cap, READ_CHUNK);
    ck_assert_uint_eq(calls, 0);
    tt_frame_decoder_free(&d);
  }
}
END_TEST

START_TEST(test_garbage) {
  static const struct {
    unsigned char version, kind;
  } bad[] = {{0, 1}, {2, 1}, {0xFF, 1}, {1, 0}, {1, 6}, {1, 255}};
  for (size_t i = 0; i < COUNT(bad); i++) {
    unsigned char b[3 * HDR + 4];
    tt_frame_decoder_t d;
    size_t calls = 0;
    /* valid empty frame, the bad header (claiming a 2 GiB payload that must
     * never be allocated for), and a valid frame after it */
    tt_frame_header_pack(b, TT_FRAME_MESSAGE, 0, 0, 0);
    tt_frame_header_pack(b + HDR, TT_FRAME_MESSAGE, 0, 0, 0x7FFFFFF0u);
    b[HDR + 4] = bad[i].version;
    b[HDR + 5] = bad[i].kind;
    tt_frame_header_pack(b + 2 * HDR, TT_FRAME_MESSAGE, 0, 0, 4);
    memset(b + 3 * HDR, 'x', 4);

    /* As the first frame. */
    tt_frame_decoder_init(&d, 0);
    ck_assert_int_eq(tt_frame_decoder_feed(&d, b + HDR, HDR, count_cb, &calls),
                     TT_ERR_IPC_PROTOCOL);
    ck_assert_uint_eq(calls, 0);
    check_rejected(&d, &calls);
    tt_frame_decoder_free(&d);

    /* After a valid frame, in one piece: that frame still comes out. */
    tt_frame_decoder_init(&d, 0);
    ck_assert_int_eq(tt_frame_decoder_feed(&d, b, sizeof b, count_cb, &calls),
                     TT_ERR_IPC_PROTOCOL);
    ck_assert_uint_eq(calls, 1);
    check_rejected(&d, &calls);
    tt_frame_decoder_free(&d);

    /* Byte by byte: 11 bytes of the bad header are not judged yet. */
    calls = 0;
    tt_frame_decoder_init(&d, 0);
    for (size_t k = 0; k < 2 * HDR - 1; k++)
      ck_assert_int_eq(tt_frame_decoder_feed(&d, b + k, 1, count_cb, &calls), 0);
    ck_assert_uint_eq(calls, 1);
    ck_assert_uint_eq(tt_frame_decoder_pending(&d), HDR - 1);
    ck_assert_int_eq(
        tt_frame_decoder_feed(&d, b + 2 * HDR - 1, 1, count_cb, &calls),
        TT_ERR_IPC_PROTOCOL);
    check_rejected(&d, &calls);
    ck_assert_uint_eq(calls, 1);
    tt_frame_decoder_free(&d);
  }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Callback stop */

static const fspec_t stop_specs[] = {
    {TT_FRAME_REQUEST, 0, 1, 10},
    {TT_FRAME_REPLY, 0, 1, 0},
    {TT_FRAME_MESSAGE, 0, 0, 300},
    {TT_FRAME_CONTROL, 0, 0, 1},
};

START_TEST(test_cb_stop_commit_resumes) {
  stream_t s;
  tt_frame_decoder_t d;
  expect_t e;
  stream_build(&s, stop_specs, COUNT(stop_specs), 9);
  tt_frame_decoder_init(&d, 0);
  expect_init(&e, &s);
  e.stop_at = 0;
  e.stop_rc = 42;
  /* The value is passed back and nothing after that frame is delivered. */
  ck_assert_int_eq(tt_frame_decoder_feed(&d, s.bytes, s.size, expect_cb, &e),
                   42);
  ck_assert_uint_eq(e.next, 1);
  ck_assert_uint_eq(tt_frame_decoder_pending(&d), s.size - s.end[0]);
  ck_assert_ptr_null(d.error);
  /* Feeding 0 bytes does not resume: feed() only decodes what it copies. */
  ck_assert_int_eq(tt_frame_decoder_feed(&d, s.bytes, 0, expect_cb, &e), 0);
  ck_assert_uint_eq(e.next, 1);
  ck_assert_uint_eq(tt_frame_decoder_pending(&d), s.size - s.end[0]);
  /* commit(0) does: it delivers the rest. */
  ck_assert_int_eq(tt_frame_decoder_commit(&d, 0, expect_cb, &e), 0);
  ck_assert_uint_eq(e.next, s.n);
  ck_assert_uint_eq(tt_frame_decoder_pending(&d), 0);
  tt_frame_decoder_free(&d);
  stream_free(&s);
}
END_TEST

START_TEST(test_cb_stop_every_frame) {
  stream_t s;
  tt_frame_decoder_t d;
  expect_t e;
  char *base;
  size_t len;
  stream_build(&s, stop_specs, COUNT(stop_specs), 10);
  tt_frame_decoder_init(&d, 0);
  expect_init(&e, &s);
  e.stop_every = 1;
  e.stop_rc = -7; /* any non-zero value, negative ones too */
  ck_assert_int_eq(tt_frame_decoder_space(&d, &base, &len), 0);
  ck_assert_uint_ge(len, s.size);
  memcpy(base, s.bytes, s.size);
  ck_assert_int_eq(tt_frame_decoder_commit(&d, s.size, expect_cb, &e), -7);
  ck_assert_uint_eq(e.next, 1);
  for (size_t i = 1; i < s.n; i++) {
    ck_assert_int_eq(tt_frame_decoder_commit(&d, 0, expect_cb, &e), -7);
    ck_assert_uint_eq(e.next, i + 1);
    ck_assert_uint_eq(tt_frame_decoder_pending(&d), s.size - s.end[i]);
  }
  /* Nothing left: the callback is not called again. */
  ck_assert_int_eq(tt_frame_decoder_commit(&d, 0, expect_cb, &e), 0);
  ck_assert_uint_eq(e.next, s.n);
  tt_frame_decoder_free(&d);
  stream_free(&s);
}
END_TEST

/* Stopping on the last complete frame still counts its bytes as consumed,
 * and a partial frame after it stays pending. */
START_TEST(test_cb_stop_then_partial) {
  stream_t s;
  tt_frame_decoder_t d;
  expect_t e;
  stream_build(&s, stop_specs, COUNT(stop_specs), 11);
  tt_frame_decoder_init(&d, 0);
  expect_init(&e, &s);
  e.stop_at = 1;
  e.stop_rc = 1;
  ck_assert_int_eq(
      tt_frame_decoder_feed(&d, s.bytes, s.end[1] + 5, expect_cb, &e), 1);
  ck_assert_uint_eq(e.next, 2);
  ck_assert_uint_eq(tt_frame_decoder_pending(&d), 5);
  ck_assert_int_eq(tt_frame_decoder_feed(&d, s.bytes + s.end[1] + 5,
                                         s.size - s.end[1] - 5, expect_cb, &e),
                   0);
  ck_assert_uint_eq(e.next, s.n);
  ck_assert_uint_eq(tt_frame_decoder_pending(&d), 0);
  tt_frame_decoder_free(&d);
  stream_free(&s);
}
END_TEST

/* Regression: when the callback stops decoding, commit() returns before the
 * *next* header (already in the buffer) is validated.  An earlier
 * tt_frame_decoder_space() assumed any header at buf[start] was validated and
 * sized the buffer from its raw len: a peer could make the decoder allocate
 * ~4 GiB with max_message = 1 MiB. */
START_TEST(test_cb_stop_does_not_size_by_unvalidated_header) {
  static const struct {
    unsigned char version, kind;
  } next[] = {{1, TT_FRAME_MESSAGE}, {0x55, TT_FRAME_MESSAGE}, {1, 0}};
  for (size_t i = 0; i < COUNT(next); i++) {
    unsigned char b[2 * HDR];
    tt_frame_decoder_t d;
    char *base = NULL;
    size_t len = 0, calls = 0;
    int rc;
    tt_frame_header_pack(b, TT_FRAME_MESSAGE, 0, 0, 0);
    tt_frame_header_pack(b + HDR, TT_FRAME_MESSAGE, 0, 0, 0xFFFFFFF0u);
    b[HDR + 4] = next[i].version;
    b[HDR + 5] = next[i].kind;
    tt_frame_decoder_init(&d, MiB);
    {
      expect_t e;
      static const fspec_t one[] = {{TT_FRAME_MESSAGE, 0, 0, 0}};
      stream_t s;
      stream_build(&s, one, 1, 12);
      expect_init(&e, &s);
      e.stop_at = 0;
      e.stop_rc = 1;
      ck_assert_int_eq(tt_frame_decoder_feed(&d, b, sizeof b, expect_cb, &e), 1);
      ck_assert_uint_eq(e.next, 1);
      stream_free(&s);
    }
    /* The next read: must not grow the buffer by the unchecked len. */
    rc = tt_frame_decoder_space(&d, &base, &len);
    ck_assert_msg(rc == 0, "space() returned %d (%s) after a callback stop",
                  rc, tt_err_name(rc));
    ck_assert_msg(d.cap <= READ_CHUNK + MIN_READ,
                  "case %zu: space() grew the buffer to %zu bytes from an "
                  "unvalidated header (max_message %zu)",
                  i, d.cap, d.max_message);
    /* And the bad header is still rejected when decoding resumes. */
    ck_assert_int_eq(tt_frame_decoder_commit(&d, 0, count_cb, &calls),
                     TT_ERR_IPC_PROTOCOL);
    ck_assert_uint_eq(calls, 0);
    tt_frame_decoder_free(&d);
  }
}
END_TEST

/* Regression: in an earlier tt_frame_decoder_space(), once fewer than
 * TT_FRAME_MIN_READ (16 KiB) bytes of a large frame were missing, every call
 * wanted MIN_READ free bytes but grew the buffer to exactly end + MIN_READ,
 * so the next read of r bytes left MIN_READ - r free and the buffer was
 * realloc'ed again: one realloc (a copy of the whole frame, outside glibc's
 * mremap fast path) per read for the last 16 KiB of every large frame.  A
 * peer trickling small packets turned a 64 MiB frame into ~16,000 copies of
 * 64 MiB. */
START_TEST(test_tail_reads_do_not_realloc) {
  static const fspec_t specs[] = {{TT_FRAME_MESSAGE, 0, 1, 100000}};
  static const size_t tail = 2048;
  stream_t s;
  tt_frame_decoder_t d;
  expect_t e;
  size_t pos = 0, grows = 0, last_cap;
  stream_build(&s, specs, 1, 13);
  tt_frame_decoder_init(&d, 0);
  expect_init(&e, &s);
  /* Everything but the last `tail` bytes in large reads ... */
  while (pos < s.size - tail) {
    char *base;
    size_t len;
    ck_assert_int_eq(tt_frame_decoder_space(&d, &base, &len), 0);
    if (len > s.size - tail - pos) len = s.size - tail - pos;
    memcpy(base, s.bytes + pos, len);
    ck_assert_int_eq(tt_frame_decoder_commit(&d, len, expect_cb, &e), 0);
    pos += len;
  }
  /* ... then the rest one byte per read, as a trickling peer would. */
  last_cap = d.cap;
  while (pos < s.size) {
    char *base;
    size_t len;
    REQUIRE(tt_frame_decoder_space(&d, &base, &len) == 0, "space");
    if (d.cap != last_cap) grows++;
    last_cap = d.cap;
    *base = (char)s.bytes[pos++];
    REQUIRE(tt_frame_decoder_commit(&d, 1, expect_cb, &e) == 0, "commit");
  }
  ck_assert_uint_eq(e.next, 1);
  ck_assert_msg(grows <= 2,
                "the buffer (%zu bytes) was resized %zu times over the last "
                "%zu single-byte reads of a %zu-byte frame",
                d.cap, grows, tail, s.size);
  tt_frame_decoder_free(&d);
  stream_free(&s);
}
END_TEST

/* Found by fuzz/fuzz_lines.c on the empty input: commit(d, 0) on a lines
 * decoder that never had a buffer computed NULL + 0 and called memchr(NULL,
 * '\n', 0), undefined behaviour (UBSan in the -asan build reports it). */
START_TEST(test_lines_commit_without_buffer) {
  tt_frame_decoder_t d;
  size_t calls = 0;
  tt_frame_decoder_init(&d, 4096);
  tt_frame_decoder_use_lines(&d);
  ck_assert_ptr_null(d.buf);
  ck_assert_int_eq(tt_frame_decoder_commit(&d, 0, count_cb, &calls), 0);
  ck_assert_int_eq(tt_frame_decoder_feed(&d, NULL, 0, count_cb, &calls), 0);
  ck_assert_uint_eq(calls, 0);
  ck_assert_uint_eq(tt_frame_decoder_pending(&d), 0);
  ck_assert_ptr_null(d.error);
  tt_frame_decoder_free(&d);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Random inputs */

typedef struct {
  size_t max;
  size_t frames, consumed;
  unsigned sum;
  int stops; /* the callback may stop decoding */
  rng_t *r;
} inv_t;

static int inv_cb(void *ctx, const tt_frame_header_t *h, const char *payload) {
  inv_t *v = ctx;
  REQUIRE(h->version == TT_FRAME_VERSION && h->kind >= 1 &&
              h->kind <= TT__FRAME_KIND_MAX && (size_t)h->len <= v->max,
          "bad header delivered: v%u kind %u len %u (max %zu)",
          (unsigned)h->version, (unsigned)h->kind, (unsigned)h->len, v->max);
  REQUIRE(h->len == 0 || payload != NULL, "NULL payload");
  /* Touch every payload byte so ASan/valgrind check the range. */
  for (uint32_t i = 0; i < h->len; i++) v->sum += (unsigned char)payload[i];
  v->frames++;
  v->consumed += HDR + h->len;
  if (v->stops && rng_below(v->r, 3) == 0)
    return 1 + (int)rng_below(v->r, 1000);
  return 0;
}

/* Feeds through space/commit; a callback stop is drained with commit(0)
 * right away (the decoder is never asked for space in between). */
static int push(tt_frame_decoder_t *d, const unsigned char *p, size_t n,
                inv_t *v, size_t bound) {
  while (n > 0) {
    char *base;
    size_t room;
    int rc = tt_frame_decoder_space(d, &base, &room);
    REQUIRE(rc == 0, "space: %d", rc);
    REQUIRE(room > 0, "space: no room");
    REQUIRE(d->cap <= bound, "cap %zu > %zu", d->cap, bound);
    if (room > n) room = n;
    memcpy(base, p, room);
    p += room;
    n -= room;
    rc = tt_frame_decoder_commit(d, room, inv_cb, v);
    while (rc > 0) rc = tt_frame_decoder_commit(d, 0, inv_cb, v);
    if (rc != 0) return rc;
  }
  return 0;
}

START_TEST(test_random_inputs) {
  static const size_t maxes[] = {16, 300, 4096, MiB};
  rng_t r = {77};
  unsigned char *buf = xmalloc(8192);
  size_t protocol = 0, clean = 0;

  for (int iter = 0; iter < 10000; iter++) {
    size_t max = maxes[rng_below(&r, COUNT(maxes))];
    int mode = (int)rng_below(&r, 3);
    size_t size = 0, nframes = 0, pos;
    tt_frame_decoder_t d;
    inv_t v;
    int rc = 0, use_feed = rng_below(&r, 4) == 0;
    size_t bound;

    if (mode == 0) { /* pure noise, sometimes with a valid version byte */
      size = rng_below(&r, 600);
      for (size_t i = 0; i < size; i++) buf[i] = (unsigned char)rng_next(&r);
      if (size > 5 && rng_below(&r, 2)) {
        buf[4] = TT_FRAME_VERSION;
        buf[5] = (unsigned char)rng_range(&r, 0, 6);
      }
    } else { /* valid frames, then (mode 1) a few mutated bytes */
      while (size < 4000 && rng_below(&r, 8) != 0) {
        size_t len = rng_below(&r, 4) ? rng_below(&r, 40) : rng_below(&r, 400);
        if (len > max) len = max;
        tt_frame_header_pack(buf + size, (unsigned)rng_range(&r, 1, 5),
                             (unsigned)rng_below(&r, 0x10000),
                             (uint32_t)rng_next(&r), (uint32_t)len);
        size += HDR;
        for (size_t i = 0; i < len; i++) buf[size++] = (unsigned char)rng_next(&r);
        nframes++;
      }
      if (mode == 1 && size > 0)
        for (size_t m = rng_range(&r, 1, 3); m > 0; m--)
          buf[rng_below(&r, size)] = (unsigned char)rng_next(&r);
    }

    memset(&v, 0, sizeof v);
    v.max = max;
    v.r = &r;
    v.stops = !use_feed;
    bound = READ_CHUNK + MIN_READ + HDR + max + size;
    tt_frame_decoder_init(&d, max);
    pos = 0;
    while (pos < size && rc == 0) {
      size_t n = rng_range(&r, 1, rng_below(&r, 2) ? 16 : size);
      if (n > size - pos) n = size - pos;
      rc = use_feed ? tt_frame_decoder_feed(&d, buf + pos, n, inv_cb, &v)
                    : push(&d, buf + pos, n, &v, bound);
      pos += n;
      REQUIRE(d.cap <= bound, "iter %d: cap %zu", iter, d.cap);
    }
    if (rc == 0) {
      clean++;
      REQUIRE(v.consumed + tt_frame_decoder_pending(&d) == size,
              "iter %d: consumed %zu + pending %zu != %zu", iter, v.consumed,
              tt_frame_decoder_pending(&d), size);
      REQUIRE(d.error == NULL, "iter %d: error without failure", iter);
      if (mode == 2)
        REQUIRE(v.frames == nframes && tt_frame_decoder_pending(&d) == 0,
                "iter %d: %zu of %zu valid frames", iter, v.frames, nframes);
    } else {
      size_t calls = v.frames;
      protocol++;
      REQUIRE(rc == TT_ERR_IPC_PROTOCOL, "iter %d: rc %d", iter, rc);
      REQUIRE(mode != 2, "iter %d: valid stream rejected: %s", iter, d.error);
      REQUIRE(d.error != NULL && d.error[0] != '\0', "iter %d: no reason", iter);
      REQUIRE(v.consumed <= size, "iter %d: consumed %zu > %zu", iter,
              v.consumed, size);
      v.stops = 0;
      REQUIRE(tt_frame_decoder_feed(&d, buf, size ? size : 1, inv_cb, &v) ==
                  TT_ERR_IPC_PROTOCOL,
              "iter %d: accepted after an error", iter);
      REQUIRE(v.frames == calls, "iter %d: frames after an error", iter);
    }
    tt_frame_decoder_free(&d);
  }
  free(buf);
  /* The generator really exercises both outcomes. */
  ck_assert_uint_gt(protocol, 1000);
  ck_assert_uint_gt(clean, 1000);
}
END_TEST

/* ------------------------------------------------------------------------ */

Suite *frame_suite(void) {
  Suite *s = suite_create("frame");
  TCase *tc;

  tc = tcase_create("header");
  tcase_add_test(tc, test_header_layout);
  tcase_add_test(tc, test_header_round_trip);
  tcase_add_test(tc, test_header_parse_rejects);
  suite_add_tcase(s, tc);

  tc = tcase_create("splits");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_every_split);
  tcase_add_test(tc, test_byte_by_byte);
  tcase_add_test(tc, test_random_chunks);
  suite_add_tcase(s, tc);

  tc = tcase_create("zero_copy");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_zero_copy_memory);
  tcase_add_test(tc, test_zero_copy_socketpair);
  suite_add_tcase(s, tc);

  tc = tcase_create("limits");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_truncated);
  tcase_add_test(tc, test_empty_payload_frame);
  tcase_add_test(tc, test_oversized);
  tcase_add_test(tc, test_max_message_accepted);
  tcase_add_test(tc, test_garbage);
  suite_add_tcase(s, tc);

  tc = tcase_create("callback_stop");
  tcase_add_test(tc, test_cb_stop_commit_resumes);
  tcase_add_test(tc, test_cb_stop_every_frame);
  tcase_add_test(tc, test_cb_stop_then_partial);
  suite_add_tcase(s, tc);

  tc = tcase_create("regressions");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_cb_stop_does_not_size_by_unvalidated_header);
  tcase_add_test(tc, test_tail_reads_do_not_realloc);
  tcase_add_test(tc, test_lines_commit_without_buffer);
  suite_add_tcase(s, tc);

  tc = tcase_create("random");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_random_inputs);
  suite_add_tcase(s, tc);
  return s;
}
