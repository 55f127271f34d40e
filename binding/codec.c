/*
 * Native value codec: one Lua value <-> one payload (doc/codec-format.md).
 *
 * Promise: every value made of nil, booleans, integers, floats, strings and
 * tables of those round-trips exactly: integer/float subtype, float bits
 * (NaN payloads, -0.0), binary strings, and table identity within a message
 * (shared subtables, cycles, tables as keys).  Anything else is refused with
 * TT_ERR_SERIALIZE and a message naming where it sits ("msg.items[3]:
 * function").
 *
 * Invariants:
 * - Encoding uses raw access only (lua_rawlen, lua_rawgeti, lua_next), so no
 *   metamethod and no Lua code runs; a message being encoded must not be
 *   mutated meanwhile (only a __gc finalizer could, and that is unsupported).
 * - On encode failure out->len is back at its value on entry and the stack
 *   holds exactly one extra value, the message.  On success the stack is as
 *   it was.  The only raise is a memory error (a failed realloc of `out`
 *   raises "not enough memory" after restoring out->len) or Lua stack
 *   exhaustion.
 * - Decoding never runs code and never sets a metatable: raw sets only.  It
 *   checks every count and length against the bytes actually left before it
 *   allocates, so a payload cannot make it allocate more than a small
 *   multiple of its own size (see `owed`).  Unknown tags, overlong varints,
 *   trailing bytes and nil/NaN keys are errors, never guessed at.
 * - Depth is the number of tables on the path to a value, root table = 1;
 *   both directions refuse a table deeper than max_depth.  C recursion is
 *   bounded by that limit, which is clamped to TT_CODEC_DEPTH_CAP.
 */
#include "codec.h"

#include <assert.h>
#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tt_error.h"
#include "util.h"

static_assert(sizeof(lua_Number) == 8, "the format carries IEEE doubles");
static_assert(sizeof(lua_Integer) == 8, "the format carries 64-bit integers");

/* Tag bytes; see doc/codec-format.md. */
enum {
  TAG_NIL = 0x00,
  TAG_FALSE = 0x01,
  TAG_TRUE = 0x02,
  TAG_INT = 0x03,    /* zigzag varint */
  TAG_FLOAT = 0x04,  /* 8 bytes, IEEE-754 binary64 little-endian */
  TAG_STRING = 0x05, /* varint length, bytes */
  TAG_TABLE = 0x06,  /* varint n, varint m, n values, m key/value pairs */
  TAG_REF = 0x07,    /* varint id of a table already started */
  TAG_BUFFER = 0x08, /* varint size; the bytes travel beside (a memfd) */
  TAG_POSINT = 0x40, /* 0x40..0x7f: integers 0..63 */
  TAG_SHORTSTR = 0x80, /* 0x80..0xbf: strings of 0..63 bytes */
  TAG_NEGINT = 0xc0    /* 0xc0..0xff: integers -64..-1 (the byte as int8) */
};

#define VARINT_MAX 10
/* The first tables of a message are tracked in a small array (by address on
 * encode, in stack slots on decode) so small messages need no bookkeeping
 * table; later ones spill into a Lua table. */
#define INLINE_TABLES 16
/* Presize hints are capped: beyond this a table grows as it is filled. */
#define PRESIZE_CAP (1 << 24)
/* Room for an error message, and how much of a path it may show. */
#define MSG_SIZE 256
#define PATH_CAP 120

static int clamp_depth(int max_depth) {
  if (max_depth <= 0) return TT_CODEC_DEFAULT_MAX_DEPTH;
  return max_depth > TT_CODEC_DEPTH_CAP ? TT_CODEC_DEPTH_CAP : max_depth;
}

/* ---- Encoding ----------------------------------------------------------- */

/* A path is a chain of these in the C stack frames of the walk; it is only
 * rendered when something fails. */
enum { P_INDEX, P_FIELD, P_KEY };
typedef struct path_s path_t;
struct path_s {
  const path_t *up; /* NULL: the enclosing table is the root, "msg" */
  int kind;
  int key;          /* P_FIELD, P_KEY: stack index of the key */
  lua_Integer i;    /* P_INDEX: the array index */
};

typedef struct {
  lua_State *L;
  tt_wbuf_t *out;
  tt_codec_attach_t *attach;
  size_t start; /* out->len on entry */
  int max_depth;
  int spill;    /* stack slot of the spill table: seen table -> id */
  lua_Integer ntables;
  const void *inl[INLINE_TABLES];
  char msg[MSG_SIZE];
} enc_t;

static void grow(enc_t *e, size_t n) {
  tt_wbuf_t *b = e->out;
  size_t need = b->len + n, cap = b->cap * 2;
  char *p;
  if (need < n) goto nomem;
  if (cap < need) cap = need < 64 ? 64 : need;
  p = realloc(b->data, cap);
  if (p == NULL) goto nomem;
  b->data = p;
  b->cap = cap;
  return;
nomem:
  b->len = e->start;
  luaL_error(e->L, "not enough memory");
}

/* Returns where to write at least `n` bytes; the caller advances len. */
static inline unsigned char *room(enc_t *e, size_t n) {
  tt_wbuf_t *b = e->out;
  if (b->cap - b->len < n) grow(e, n);
  return (unsigned char *)b->data + b->len;
}

static inline size_t put_varint(unsigned char *p, uint64_t v) {
  size_t i = 0;
  while (v >= 0x80) {
    p[i++] = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  p[i++] = (unsigned char)v;
  return i;
}

static size_t varint_len(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static void put_tagged_varint(enc_t *e, int tag, uint64_t v) {
  unsigned char *p = room(e, 1 + VARINT_MAX);
  p[0] = (unsigned char)tag;
  e->out->len += 1 + put_varint(p + 1, v);
}

static void put_int(enc_t *e, lua_Integer v) {
  if (v >= -64 && v < 64) {
    unsigned char *p = room(e, 1);
    /* For -64..-1 the two's complement byte is exactly 0xc0..0xff. */
    *p = v >= 0 ? (unsigned char)(TAG_POSINT + v) : (unsigned char)v;
    e->out->len++;
  } else {
    uint64_t u = (uint64_t)v;
    put_tagged_varint(e, TAG_INT, (u << 1) ^ (0 - (u >> 63)));
  }
}

static void put_float(enc_t *e, lua_Number x) {
  unsigned char *p = room(e, 9);
  uint64_t u;
  int i;
  memcpy(&u, &x, 8); /* the bits, NaN payload and sign included */
  p[0] = TAG_FLOAT;
  for (i = 0; i < 8; i++) p[1 + i] = (unsigned char)(u >> (8 * i));
  e->out->len += 9;
}

static void put_string(enc_t *e, const char *s, size_t n) {
  unsigned char *p;
  size_t k;
  if (n < 64) {
    p = room(e, 1 + n);
    p[0] = (unsigned char)(TAG_SHORTSTR + n);
    k = 1;
  } else {
    p = room(e, 1 + VARINT_MAX + n);
    p[0] = TAG_STRING;
    k = 1 + put_varint(p + 1, n);
  }
  memcpy(p + k, s, n);
  e->out->len += k + n;
}

/* ---- Error paths (cold) ------------------------------------------------- */

typedef struct {
  char *s;
  size_t len, cap;
  int cut;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *s, size_t n) {
  if (b->cut) return;
  if (n > b->cap - b->len) {
    n = b->cap - b->len;
    b->cut = 1;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
}

static void sb_puts(sbuf_t *b, const char *s) { sb_put(b, s, strlen(s)); }

static int is_identifier(const char *s, size_t n) {
  static const char *const reserved[] = {
      "and",   "break", "do",     "else", "elseif", "end",   "false",
      "for",   "function", "goto", "if",  "in",     "local", "nil",
      "not",   "or",    "repeat", "return", "then", "true",  "until",
      "while", NULL};
  size_t i;
  int r;
  if (n == 0 || (s[0] >= '0' && s[0] <= '9')) return 0;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9')))
      return 0;
  }
  for (r = 0; reserved[r] != NULL; r++)
    if (strlen(reserved[r]) == n && memcmp(reserved[r], s, n) == 0) return 0;
  return 1;
}

/* A Lua string literal: printable ASCII as is, \" \\ \n \r \t, else \ddd. */
static void sb_quote(sbuf_t *b, const char *s, size_t n) {
  size_t i;
  sb_put(b, "[\"", 2);
  for (i = 0; i < n && !b->cut; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[5];
    switch (c) {
    case '"': sb_put(b, "\\\"", 2); break;
    case '\\': sb_put(b, "\\\\", 2); break;
    case '\n': sb_put(b, "\\n", 2); break;
    case '\r': sb_put(b, "\\r", 2); break;
    case '\t': sb_put(b, "\\t", 2); break;
    default:
      if (c >= 0x20 && c < 0x7f) {
        sb_put(b, (const char *)&c, 1);
      } else {
        snprintf(esc, sizeof esc, "\\%03u", c);
        sb_put(b, esc, 4);
      }
    }
  }
  sb_put(b, "\"]", 2);
}

/* Shortest %g form that reads back as the same double. */
static void sb_float(sbuf_t *b, double x) {
  char tmp[40];
  int prec;
  for (prec = 15; prec < 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, x);
    if (strtod(tmp, NULL) == x) break;
  }
  if (prec == 17) snprintf(tmp, sizeof tmp, "%.17g", x);
  sb_puts(b, tmp);
}

static void sb_key(sbuf_t *b, lua_State *L, int k) {
  char tmp[48];
  size_t n;
  const char *s;
  switch (lua_type(L, k)) {
  case LUA_TSTRING:
    s = lua_tolstring(L, k, &n);
    if (is_identifier(s, n)) {
      sb_put(b, ".", 1);
      sb_put(b, s, n);
    } else {
      sb_quote(b, s, n);
    }
    break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, k)) {
      snprintf(tmp, sizeof tmp, "[" LUA_INTEGER_FMT "]",
               (LUAI_UACINT)lua_tointeger(L, k));
      sb_puts(b, tmp);
    } else {
      sb_put(b, "[", 1);
      sb_float(b, (double)lua_tonumber(L, k));
      sb_put(b, "]", 1);
    }
    break;
  case LUA_TBOOLEAN:
    sb_puts(b, lua_toboolean(L, k) ? "[true]" : "[false]");
    break;
  default: /* tables: their contents would not identify them anyway */
    snprintf(tmp, sizeof tmp, "[%s]", luaL_typename(L, k));
    sb_puts(b, tmp);
  }
}

static void sb_path(sbuf_t *b, lua_State *L, const path_t *p) {
  char tmp[48];
  if (p == NULL) {
    sb_puts(b, "msg");
    return;
  }
  sb_path(b, L, p->up);
  switch (p->kind) {
  case P_INDEX:
    snprintf(tmp, sizeof tmp, "[" LUA_INTEGER_FMT "]", (LUAI_UACINT)p->i);
    sb_puts(b, tmp);
    break;
  case P_FIELD:
    sb_key(b, L, p->key);
    break;
  default: /* inside a key: name it by its type, "[table]" */
    snprintf(tmp, sizeof tmp, "[%s]", luaL_typename(L, p->key));
    sb_puts(b, tmp);
  }
}

/* Writes "<path>: <what>" into e->msg; returns TT_ERR_SERIALIZE. */
static int enc_fail(enc_t *e, const path_t *p, const char *fmt, ...) {
  sbuf_t b = {e->msg, 0, PATH_CAP, 0};
  va_list ap;
  sb_path(&b, e->L, p);
  if (b.cut) {
    memcpy(e->msg + b.len, "...", 3);
    b.len += 3;
  }
  memcpy(e->msg + b.len, ": ", 2);
  b.len += 2;
  va_start(ap, fmt);
  vsnprintf(e->msg + b.len, sizeof e->msg - b.len, fmt, ap);
  va_end(ap);
  return TT_ERR_SERIALIZE;
}

/* ---- The walk ----------------------------------------------------------- */

static lua_Integer seen_find(enc_t *e, int t, const void *ptr) {
  lua_State *L = e->L;
  lua_Integer i, k = e->ntables < INLINE_TABLES ? e->ntables : INLINE_TABLES;
  for (i = 0; i < k; i++)
    if (e->inl[i] == ptr) return i;
  if (e->ntables > INLINE_TABLES) {
    lua_pushvalue(L, t);
    if (lua_rawget(L, e->spill) == LUA_TNUMBER) i = lua_tointeger(L, -1);
    else i = -1;
    lua_pop(L, 1);
    return i;
  }
  return -1;
}

static void seen_add(enc_t *e, int t, const void *ptr) {
  lua_State *L = e->L;
  if (e->ntables < INLINE_TABLES) {
    e->inl[e->ntables] = ptr;
  } else {
    if (e->ntables == INLINE_TABLES) {
      lua_createtable(L, 0, INLINE_TABLES);
      lua_replace(L, e->spill);
    }
    /* Keyed by the table itself, not its address: anchors it too. */
    lua_pushvalue(L, t);
    lua_pushinteger(L, e->ntables);
    lua_rawset(L, e->spill);
  }
  e->ntables++;
}

static int enc_value(enc_t *e, int idx, int depth, const path_t *path);

static int bad_type(int t) {
  return t == LUA_TFUNCTION || t == LUA_TUSERDATA || t == LUA_TTHREAD ||
         t == LUA_TLIGHTUSERDATA;
}

/* Writes the varints of n and m where two bytes were reserved for them at
 * `at`, moving the body after them when they need more. */
static void put_counts(enc_t *e, size_t at, uint64_t n, uint64_t m) {
  size_t extra = varint_len(n) + varint_len(m) - 2;
  unsigned char *p;
  if (extra > 0) {
    size_t body = e->out->len - at - 2;
    room(e, extra);
    p = (unsigned char *)e->out->data + at;
    memmove(p + 2 + extra, p + 2, body);
    e->out->len += extra;
  }
  p = (unsigned char *)e->out->data + at;
  p += put_varint(p, n);
  put_varint(p, m);
}

/* One walk with lua_next, which gives a table's array slots first and in
 * order: the values of keys 1, 2, 3... as they come from the first key on
 * are the array part.  Where that run breaks, the array part still goes
 * on to the table's length (a border, raw access; its holes are written
 * as nil), so a list whose keys sit in the hash part, or that has holes,
 * is not sent as pairs: then the walk starts again for the other keys.
 * Every other key goes in the hash part. */
static int enc_table(enc_t *e, int t, int depth, const path_t *path) {
  lua_State *L = e->L;
  const void *ptr = lua_topointer(L, t);
  lua_Integer id = seen_find(e, t, ptr), len = -1; /* -1: the run goes on */
  uint64_t n = 0, m = 0;
  size_t at;
  unsigned char *p;
  int k, r;
  if (id >= 0) {
    put_tagged_varint(e, TAG_REF, (uint64_t)id);
    return 0;
  }
  if (depth > e->max_depth)
    return enc_fail(e, path, "nesting deeper than %d", e->max_depth);
  if (!lua_checkstack(L, 6))
    return enc_fail(e, path, "nesting too deep for the Lua stack");
  seen_add(e, t, ptr);
  p = room(e, 3);
  p[0] = TAG_TABLE;
  /* The counts are known after the walk: a byte each is reserved, enough
   * below 128; bigger tables move their body once (put_counts). */
  at = e->out->len + 1;
  e->out->len = at + 2;
  k = lua_gettop(L) + 1; /* where keys, then values, are pushed */
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int isint = 0;
    lua_Integer ki = 0;
    if (lua_type(L, k) == LUA_TNUMBER)
      ki = lua_tointegerx(L, k, &isint); /* (a float key is never integral) */
    if (len < 0) {
      if (isint && ki == (lua_Integer)n + 1) {
        path_t sub = {path, P_INDEX, 0, ki};
        if ((r = enc_value(e, k + 1, depth, &sub)) != 0) return r;
        n++;
        lua_pop(L, 1);
        continue;
      }
      len = (lua_Integer)lua_rawlen(L, t);
      if (len > (lua_Integer)n) {
        lua_Integer i;
        lua_pop(L, 2); /* the key too: the walk starts again below */
        for (i = (lua_Integer)n + 1; i <= len; i++) {
          path_t sub = {path, P_INDEX, 0, i};
          lua_rawgeti(L, t, i);
          if ((r = enc_value(e, k, depth, &sub)) != 0) return r;
          lua_pop(L, 1);
        }
        n = (uint64_t)len;
        lua_pushnil(L);
        continue;
      }
    }
    if (isint && ki >= 1 && ki <= (lua_Integer)n) { /* sent in the array */
      lua_pop(L, 1);
      continue;
    }
    {
      path_t kp = {path, P_KEY, k, 0}, vp = {path, P_FIELD, k, 0};
      if (bad_type(lua_type(L, k)))
        return enc_fail(e, &kp, "%s used as a key", luaL_typename(L, k));
      if ((r = enc_value(e, k, depth, &kp)) != 0 ||
          (r = enc_value(e, k + 1, depth, &vp)) != 0)
        return r;
      m++;
    }
    lua_pop(L, 1);
  }
  put_counts(e, at, n, m);
  return 0;
}

static int enc_value(enc_t *e, int idx, int depth, const path_t *path) {
  lua_State *L = e->L;
  size_t n;
  const char *s;
  unsigned char *p;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
  case LUA_TBOOLEAN:
    p = room(e, 1);
    *p = lua_isnil(L, idx) ? TAG_NIL
         : lua_toboolean(L, idx) ? TAG_TRUE
                                 : TAG_FALSE;
    e->out->len++;
    return 0;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) put_int(e, lua_tointeger(L, idx));
    else put_float(e, lua_tonumber(L, idx));
    return 0;
  case LUA_TSTRING:
    s = lua_tolstring(L, idx, &n);
    put_string(e, s, n);
    return 0;
  case LUA_TTABLE:
    return enc_table(e, idx, depth + 1, path);
  case LUA_TUSERDATA:
    if (luaL_testudata(L, idx, "tether.buffer") != NULL) {
      uint64_t size = 0;
      const char *why =
          e->attach != NULL
              ? e->attach->take(e->attach, L, idx, &size)
              : "a tether.buffer travels only between processes on one "
                "machine, in a message, a call, a reply or a local pool's "
                "task (not in an error, an option or a remote pool's task)";
      if (why != NULL) return enc_fail(e, path, "%s", why);
      put_tagged_varint(e, TAG_BUFFER, size);
      return 0;
    }
    return enc_fail(e, path, "%s", luaL_typename(L, idx));
  default:
    return enc_fail(e, path, "%s", luaL_typename(L, idx));
  }
}

int tt_codec_encode(lua_State *L, int idx, tt_wbuf_t *out, int max_depth) {
  return tt_codec_encode_with(L, idx, out, max_depth, NULL);
}

int tt_codec_encode_with(lua_State *L, int idx, tt_wbuf_t *out,
                         int max_depth, tt_codec_attach_t *a) {
  enc_t e;
  int top = lua_gettop(L), r;
  idx = lua_absindex(L, idx);
  e.L = L;
  e.out = out;
  e.attach = a;
  e.start = out->len;
  e.max_depth = clamp_depth(max_depth);
  e.spill = 0;
  e.ntables = 0;
  if (lua_type(L, idx) == LUA_TTABLE) {
    luaL_checkstack(L, 8, NULL);
    lua_pushnil(L); /* slot for the spill table, if ever needed */
    e.spill = top + 1;
  }
  r = enc_value(&e, idx, 0, NULL);
  lua_settop(L, top);
  if (r != 0) {
    out->len = e.start;
    lua_pushstring(L, e.msg);
  }
  return r;
}

/* ---- Decoding ----------------------------------------------------------- */

typedef struct {
  lua_State *L;
  tt_codec_attach_t *attach;
  const unsigned char *p, *start, *end;
  int max_depth;
  int slots; /* spill table slot; tables 0..INLINE_TABLES-1 follow it */
  lua_Integer ntables;
  /* Minimum bytes the unread items of the open tables still need.  A table
   * may only claim bytes beyond that, so all presized slots together stay
   * below the payload size even for nested declarations. */
  size_t owed;
  size_t budget, used; /* decode budget (0: none), estimate so far */
  char msg[MSG_SIZE];
} dec_t;

static int dec_fail(dec_t *d, const unsigned char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Charges `cost` bytes of Lua memory before they are allocated. */
static int charge(dec_t *d, const unsigned char *at, size_t cost) {
  d->used += cost;
  if (d->budget != 0 && d->used > d->budget)
    return dec_fail(d, at, "value would take more than %zu bytes of Lua "
                           "memory (the decode budget)", d->budget);
  return 0;
}

static size_t pow2_at_least(uint64_t m) {
  size_t p = 1;
  while (p < m && p < ((size_t)1 << 40)) p <<= 1;
  return m == 0 ? 0 : p;
}

static int dec_fail(dec_t *d, const unsigned char *at, const char *fmt, ...) {
  va_list ap;
  size_t n;
  va_start(ap, fmt);
  vsnprintf(d->msg, sizeof d->msg, fmt, ap);
  va_end(ap);
  n = strlen(d->msg);
  snprintf(d->msg + n, sizeof d->msg - n, " at byte %zu",
           (size_t)(at - d->start));
  return TT_ERR_IPC_PROTOCOL;
}

static int get_varint(dec_t *d, uint64_t *out) {
  const unsigned char *p = d->p;
  uint64_t v = 0;
  unsigned shift = 0;
  for (;;) {
    unsigned b;
    if (p == d->end) return dec_fail(d, d->p, "truncated varint");
    b = *p++;
    if (shift == 63 && b > 1)
      return dec_fail(d, d->p, "varint overflows 64 bits");
    v |= (uint64_t)(b & 0x7f) << shift;
    if (b < 0x80) {
      if (b == 0 && shift > 0) /* one value, one spelling */
        return dec_fail(d, d->p, "overlong varint");
      break;
    }
    shift += 7;
  }
  d->p = p;
  *out = v;
  return 0;
}

static int dec_value(dec_t *d, int depth);

static int dec_table(dec_t *d, const unsigned char *at, int depth) {
  lua_State *L = d->L;
  size_t outer = d->owed, avail;
  uint64_t n, m, i;
  int t, r;
  if (depth > d->max_depth)
    return dec_fail(d, at, "nesting deeper than %d", d->max_depth);
  if ((r = get_varint(d, &n)) != 0 || (r = get_varint(d, &m)) != 0) return r;
  avail = (size_t)(d->end - d->p);
  avail = avail > outer ? avail - outer : 0;
  /* Each value takes at least one byte, each pair two. */
  if (n > avail)
    return dec_fail(d, at, "table array count %llu exceeds the data left",
                    (unsigned long long)n);
  if (m > (avail - n) / 2)
    return dec_fail(d, at, "table hash count %llu exceeds the data left",
                    (unsigned long long)m);
  if (!lua_checkstack(L, 6))
    return dec_fail(d, at, "nesting too deep for the Lua stack");
  if ((r = charge(d, at, TT_CODEC_COST_TABLE + TT_CODEC_COST_SLOT * (size_t)n +
                             TT_CODEC_COST_NODE * pow2_at_least(m))) != 0)
    return r;
  lua_createtable(L, n < PRESIZE_CAP ? (int)n : PRESIZE_CAP,
                  m < PRESIZE_CAP ? (int)m : PRESIZE_CAP);
  t = lua_gettop(L);
  if (d->ntables < INLINE_TABLES) {
    lua_copy(L, t, d->slots + 1 + (int)d->ntables);
  } else {
    if (d->ntables == INLINE_TABLES) {
      lua_createtable(L, INLINE_TABLES, 0);
      lua_replace(L, d->slots);
    }
    lua_pushvalue(L, t);
    lua_rawseti(L, d->slots, d->ntables - INLINE_TABLES + 1);
  }
  d->ntables++;
  for (i = 1; i <= n; i++) {
    d->owed = outer + (size_t)(n - i) + 2 * (size_t)m;
    if ((r = dec_value(d, depth)) != 0) return r;
    if (lua_isnil(L, -1)) lua_pop(L, 1); /* a hole */
    else lua_rawseti(L, t, (lua_Integer)i);
  }
  for (i = 1; i <= m; i++) {
    const unsigned char *kat = d->p;
    d->owed = outer + 2 * (size_t)(m - i) + 1;
    if ((r = dec_value(d, depth)) != 0) return r;
    if (lua_isnil(L, -1)) return dec_fail(d, kat, "nil table key");
    if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1) &&
        isnan(lua_tonumber(L, -1)))
      return dec_fail(d, kat, "NaN table key");
    d->owed = outer + 2 * (size_t)(m - i);
    if ((r = dec_value(d, depth)) != 0) return r;
    if (lua_isnil(L, -1)) lua_pop(L, 2); /* absent, like t[k] = nil */
    else lua_rawset(L, t);
  }
  d->owed = outer;
  return 0;
}

static int dec_value(dec_t *d, int depth) {
  lua_State *L = d->L;
  const unsigned char *at = d->p;
  uint64_t u;
  unsigned tag;
  int r, i;
  if (at == d->end) return dec_fail(d, at, "truncated value");
  tag = *d->p++;
  if (tag >= TAG_SHORTSTR) {
    if (tag >= TAG_NEGINT) {
      lua_pushinteger(L, (lua_Integer)tag - 0x100);
      return 0;
    }
    u = tag - TAG_SHORTSTR;
    goto string;
  }
  if (tag >= TAG_POSINT) {
    lua_pushinteger(L, (lua_Integer)(tag - TAG_POSINT));
    return 0;
  }
  switch (tag) {
  case TAG_NIL: lua_pushnil(L); return 0;
  case TAG_FALSE: lua_pushboolean(L, 0); return 0;
  case TAG_TRUE: lua_pushboolean(L, 1); return 0;
  case TAG_INT:
    if ((r = get_varint(d, &u)) != 0) return r;
    lua_pushinteger(L, (lua_Integer)((u >> 1) ^ (0 - (u & 1))));
    return 0;
  case TAG_FLOAT: {
    lua_Number x;
    if (d->end - d->p < 8) return dec_fail(d, at, "truncated float");
    for (u = 0, i = 0; i < 8; i++) u |= (uint64_t)d->p[i] << (8 * i);
    memcpy(&x, &u, 8);
    d->p += 8;
    lua_pushnumber(L, x);
    return 0;
  }
  case TAG_STRING:
    if ((r = get_varint(d, &u)) != 0) return r;
    goto string;
  case TAG_TABLE:
    return dec_table(d, at, depth + 1);
  case TAG_BUFFER: {
    const char *why;
    if ((r = get_varint(d, &u)) != 0) return r;
    if (d->attach == NULL)
      return dec_fail(d, at, "a buffer where none may travel");
    if ((why = d->attach->give(d->attach, L, u)) != NULL)
      return dec_fail(d, at, "%s", why);
    return 0;
  }
  case TAG_REF:
    if ((r = get_varint(d, &u)) != 0) return r;
    if (u >= (uint64_t)d->ntables)
      return dec_fail(d, at, "reference to undefined table %llu",
                      (unsigned long long)u);
    if (u < INLINE_TABLES) lua_pushvalue(L, d->slots + 1 + (int)u);
    else lua_rawgeti(L, d->slots, (lua_Integer)(u - INLINE_TABLES + 1));
    return 0;
  default:
    return dec_fail(d, at, "unknown tag 0x%02x", tag);
  }
string:
  if (u > (uint64_t)(d->end - d->p)) return dec_fail(d, at, "truncated string");
  if ((r = charge(d, at, TT_CODEC_COST_STRING + (size_t)u)) != 0) return r;
  lua_pushlstring(L, (const char *)d->p, (size_t)u);
  d->p += u;
  return 0;
}

int tt_codec_decode(lua_State *L, const char *p, size_t n, int max_depth) {
  return tt_codec_decode_budget(L, p, n, max_depth, 0);
}

int tt_codec_decode_budget(lua_State *L, const char *p, size_t n,
                           int max_depth, size_t budget) {
  return tt_codec_decode_with(L, p, n, max_depth, budget, NULL);
}

int tt_codec_decode_with(lua_State *L, const char *p, size_t n,
                         int max_depth, size_t budget, tt_codec_attach_t *a) {
  dec_t d;
  int base = lua_gettop(L), r;
  d.L = L;
  d.attach = a;
  d.budget = budget;
  d.used = 0;
  d.start = d.p = (const unsigned char *)(p != NULL ? p : "");
  d.end = d.p + n;
  d.max_depth = clamp_depth(max_depth);
  d.slots = 0;
  d.ntables = 0;
  d.owed = 0;
  luaL_checkstack(L, INLINE_TABLES + 8, NULL);
  if (n > 0 && d.p[0] == TAG_TABLE) {
    lua_settop(L, base + 1 + INLINE_TABLES); /* nils: the table slots */
    d.slots = base + 1;
  }
  r = dec_value(&d, 0);
  if (r == 0 && d.p != d.end)
    r = dec_fail(&d, d.p, "trailing bytes after the value");
  if (r != 0) {
    lua_settop(L, base);
    lua_pushstring(L, d.msg);
    return r;
  }
  if (d.slots != 0) {
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
  }
  return 0;
}

/* ---- Lua helpers -------------------------------------------------------- */

#define WBUF_MT "tether.codec.wbuf"
/* A buffer bigger than this is given back after each encode. */
#define WBUF_KEEP ((size_t)4 << 20)

static int wbuf_gc(lua_State *L) {
  tt_wbuf_t *b = lua_touserdata(L, 1);
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
  return 0;
}

static tt_wbuf_t *wbuf_new(lua_State *L) {
  tt_wbuf_t *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->data = NULL;
  b->len = b->cap = 0;
  if (luaL_newmetatable(L, WBUF_MT)) {
    lua_pushcfunction(L, wbuf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}

static int opt_depth(lua_State *L, int arg) {
  lua_Integer d = luaL_optinteger(L, arg, TT_CODEC_DEFAULT_MAX_DEPTH);
  luaL_argcheck(L, d >= 1 && d <= TT_CODEC_DEPTH_CAP, arg,
                "max_depth out of range");
  return (int)d;
}

/* encode(v [, max_depth]) -> payload | nil, err.  The buffer lives in an
 * upvalue userdata, reused across calls; it is taken out of the upvalue
 * while in use so a re-entrant call (from a finalizer) gets its own, and a
 * raise leaves it to the GC instead of leaking it. */
static int l_encode(lua_State *L) {
  int depth = opt_depth(L, 2), r;
  tt_wbuf_t *b;
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (lua_isuserdata(L, lua_upvalueindex(1))) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushnil(L);
    lua_replace(L, lua_upvalueindex(1));
  } else {
    wbuf_new(L);
  }
  b = lua_touserdata(L, 2);
  b->len = 0;
  r = tt_codec_encode(L, 1, b, depth);
  if (r != 0) {
    lua_pushvalue(L, 2);
    lua_replace(L, lua_upvalueindex(1));
    return tt_lua_fail(L, r, lua_tostring(L, -1));
  }
  lua_pushlstring(L, b->data, b->len);
  if (b->cap > WBUF_KEEP) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
  }
  lua_pushvalue(L, 2);
  lua_replace(L, lua_upvalueindex(1));
  return 1;
}

/* decode(payload [, max_depth]) -> value | nil, err */
static int l_decode(lua_State *L) {
  size_t n;
  const char *s;
  int depth, r;
  luaL_checktype(L, 1, LUA_TSTRING);
  depth = opt_depth(L, 2);
  s = lua_tolstring(L, 1, &n);
  r = tt_codec_decode(L, s, n, depth);
  if (r != 0) return tt_lua_fail(L, r, lua_tostring(L, -1));
  return 1;
}

void tt_codec_open(lua_State *L) {
  luaL_checkstack(L, 4, NULL);
  wbuf_new(L);
  lua_pushcclosure(L, l_encode, 1);
  lua_setfield(L, -2, "encode");
  lua_pushcfunction(L, l_decode);
  lua_setfield(L, -2, "decode");
}
