/*
 * Native value codec: Lua value <-> bytes (format in PROTOCOL.md; byte-exact
 * description in doc/codec-format.md).
 *
 * Encoding walks the value with raw access only (no metamethods) and writes
 * into a caller-owned growable buffer, appending at out->len so the caller can
 * reserve room for a frame header first.  Decoding builds the value with raw
 * sets only, so it never runs code, and validates every length and count
 * against the bytes that are actually there before allocating.
 */
#ifndef TT_LUA_CODEC_H
#define TT_LUA_CODEC_H

#include <lua.h>
#include <stddef.h>

/* Nesting limit used by both ends unless configured otherwise.  The root
 * table has depth 1; max_depth <= 0 means this default.  The cap bounds the
 * C recursion (well inside a default 8 MiB thread stack): the codec clamps
 * to it, and what a user configures is refused above it. */
#define TT_CODEC_DEFAULT_MAX_DEPTH 2000
#define TT_CODEC_DEPTH_CAP 10000

/* Output buffer: grown with realloc(); its owner frees `data` with free(). */
typedef struct {
  char *data;
  size_t len;
  size_t cap;
} tt_wbuf_t;

/* What travels beside a message's bytes: a tether.buffer's descriptor,
 * one per message.  Where a buffer is, the codec writes a BUFFER tag with
 * its size and asks the caller, who carries the descriptor; without a
 * caller (NULL) a buffer cannot be sent, and a BUFFER tag is malformed. */
typedef struct tt_codec_attach_s tt_codec_attach_t;
struct tt_codec_attach_s {
  /* Encoding: the buffer (userdata "tether.buffer") at idx is to travel:
   * NULL and *size, or why it cannot. */
  const char *(*take)(tt_codec_attach_t *a, lua_State *L, int idx,
                      uint64_t *size);
  /* Decoding: pushes the buffer for a BUFFER tag of `size` bytes: NULL,
   * or why there is none (nothing pushed).  May raise on memory errors. */
  const char *(*give)(tt_codec_attach_t *a, lua_State *L, uint64_t size);
};

/* Encodes the value at `idx`.  Returns 0, or TT_ERR_SERIALIZE with a message
 * naming the path of the bad value ("msg.items[3]: function") pushed on the
 * stack; out->len is then back where it was (nothing partial is kept). May
 * raise only on memory errors; out stays owned by the caller either way. */
int tt_codec_encode(lua_State *L, int idx, tt_wbuf_t *out, int max_depth);

/* Decodes exactly `n` bytes.  Returns 0 with the value pushed, or
 * TT_ERR_IPC_PROTOCOL with a message string pushed.  May raise only on memory
 * errors, so call it from protected code. */
int tt_codec_decode(lua_State *L, const char *p, size_t n, int max_depth);

/* The same, refusing (TT_ERR_IPC_PROTOCOL) a payload whose value would take
 * more than `budget` bytes of Lua memory (an estimate counted as tables,
 * slots and strings are made, before each is allocated): a peer cannot make
 * a small payload of empty tables cost 40 times its size.  0: no budget. */
int tt_codec_decode_budget(lua_State *L, const char *p, size_t n,
                           int max_depth, size_t budget);

/* The same two, with a caller for buffers (may be NULL). */
int tt_codec_encode_with(lua_State *L, int idx, tt_wbuf_t *out,
                         int max_depth, tt_codec_attach_t *a);
int tt_codec_decode_with(lua_State *L, const char *p, size_t n,
                         int max_depth, size_t budget, tt_codec_attach_t *a);

/* What each decoded item is charged against a budget (a little over what
 * Lua 5.4 allocates for it on a 64-bit build, malloc's rounding included). */
#define TT_CODEC_COST_TABLE 96  /* Table, its id slot in the decoder */
#define TT_CODEC_COST_SLOT 16   /* per array slot */
#define TT_CODEC_COST_NODE 32   /* per hash node (sizes are powers of 2) */
#define TT_CODEC_COST_STRING 40 /* per string, plus its bytes */

/* Registers encode/decode test helpers into the table at the stack top. */
void tt_codec_open(lua_State *L);

#endif
