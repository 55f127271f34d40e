/*
 * codec_test: the codec alone as a Lua module, to test it in isolation.
 * Besides encode/decode it has probes that call the C API directly, so the
 * spec can check what Lua cannot see: out->len and the stack after a call.
 */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "tt_error.h"

LUAMOD_API int luaopen_codec_test(lua_State *L);

static void push_rc(lua_State *L, int rc) {
  if (rc == 0) lua_pushliteral(L, "OK");
  else lua_pushstring(L, tt_err_name(rc));
}

/* _encode_into(prefix, v [, max_depth]) -> rc name, buffer bytes, stack
 * delta.  The buffer starts out holding `prefix`, like a reserved frame
 * header.  (It leaks if the encoder raises: fine for a test probe.) */
static int probe_encode(lua_State *L) {
  size_t n;
  const char *prefix = luaL_checklstring(L, 1, &n);
  int depth = (int)luaL_optinteger(L, 3, 0), top, delta, rc;
  tt_wbuf_t b;
  luaL_checkany(L, 2);
  b.cap = n + 1;
  b.data = malloc(b.cap);
  if (b.data == NULL) return luaL_error(L, "not enough memory");
  memcpy(b.data, prefix, n);
  b.len = n;
  top = lua_gettop(L);
  rc = tt_codec_encode(L, 2, &b, depth);
  delta = lua_gettop(L) - top;
  lua_checkstack(L, 3);
  push_rc(L, rc);
  lua_pushlstring(L, b.data, b.len);
  lua_pushinteger(L, delta);
  free(b.data);
  return 3;
}

/* _decode_probe(s [, max_depth]) -> rc name, value or message, stack
 * delta. */
static int probe_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  int depth = (int)luaL_optinteger(L, 2, 0), top = lua_gettop(L), delta;
  int rc;
  rc = tt_codec_decode(L, s, n, depth);
  delta = lua_gettop(L) - top;
  push_rc(L, rc);
  lua_insert(L, -2);
  lua_pushinteger(L, delta);
  return 3;
}

static int light(lua_State *L) {
  lua_pushlightuserdata(L, (void *)L);
  return 1;
}

LUAMOD_API int luaopen_codec_test(lua_State *L) {
  lua_newtable(L);
  tt_codec_open(L);
  lua_pushcfunction(L, probe_encode);
  lua_setfield(L, -2, "_encode_into");
  lua_pushcfunction(L, probe_decode);
  lua_setfield(L, -2, "_decode_probe");
  lua_pushcfunction(L, light);
  lua_setfield(L, -2, "_lightuserdata");
  return 1;
}
