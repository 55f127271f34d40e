/*
 * libFuzzer target for the value codec.  Every input is decoded; a failure
 * must be TT_ERR_IPC_PROTOCOL with a message and a balanced stack, never a
 * raise or a crash.  A success must re-encode (decoded values are always
 * serializable) and the re-encoding must decode again.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icore -Ibinding \
 *     -I/usr/include/lua5.4 fuzz/fuzz_codec.c binding/codec.c binding/util.c \
 *     core/error.c -llua5.4 -luv -o fuzz_codec
 *   ./fuzz_codec -max_total_time=60 corpus/
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "codec.h"
#include "tt_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static tt_wbuf_t buf; /* reused: no memory error can raise out of here */

/* The re-encoding may walk shared tables in another order than the input
 * defined them, so it can nest deeper than the input did: allow it.  The
 * input size bounds the real depth anyway. */
#define REENCODE_DEPTH 10000

static int run(lua_State *L) {
  const char *p = lua_touserdata(L, 1);
  size_t n = (size_t)lua_tointeger(L, 2);
  int top = lua_gettop(L), rc;
  rc = tt_codec_decode(L, p, n, TT_CODEC_DEFAULT_MAX_DEPTH);
  if (lua_gettop(L) != top + 1) abort();
  if (rc != 0) {
    if (rc != TT_ERR_IPC_PROTOCOL || lua_type(L, -1) != LUA_TSTRING) abort();
    return 0;
  }
  buf.len = 0;
  rc = tt_codec_encode(L, -1, &buf, REENCODE_DEPTH);
  if (rc != 0 || lua_gettop(L) != top + 1) abort();
  rc = tt_codec_decode(L, buf.data, buf.len, REENCODE_DEPTH);
  if (rc != 0 || lua_gettop(L) != top + 2) abort();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL) {
    L = luaL_newstate();
    if (L == NULL) abort();
  }
  lua_settop(L, 0);
  lua_pushcfunction(L, run);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)size);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) abort();
  return 0;
}
