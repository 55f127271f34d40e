/*
 * tether.buffer (core/tt_shmbuf.h) seen from Lua: a byte array in shared
 * memory, writable until it is frozen (explicitly, or by sending it), then
 * read-only everywhere.  A message, a call, a reply or a task carries up to
 * 16 buffers without copying their bytes: their descriptors travel with
 * the frame, and the receiver maps the same memory (binding/message.c, the
 * codec's BUFFER tag).
 *
 * core.buffer(n | string) -> buffer | nil, err
 * buf:read([i [, j]]) -> string (string.sub's positions)
 * buf:write(i, s) -> buf (1-based; the whole of s fits, or an error)
 * buf:freeze() -> buf | nil, err;  buf:frozen() -> boolean
 * buf:close(), __close, __gc;  #buf;  tostring(buf)
 */
#include <string.h>
#include <sys/resource.h>

#include "binding.h"
#include "tt_shmbuf.h"

#define TT_BUFFER_MT "tether.buffer"

/* A quarter of the descriptors we may have open. */
static size_t fd_budget(void) {
  static size_t budget;
  if (budget == 0) {
    struct rlimit rl;
    rlim_t n = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
    if (n == RLIM_INFINITY || n > 1u << 20) n = 1u << 20;
    budget = n / 4 > 16 ? (size_t)(n / 4) : 16;
  }
  return budget;
}

tt_shmbuf_t *tt_lua_buffer_test(lua_State *L, int idx) {
  return luaL_testudata(L, idx, TT_BUFFER_MT);
}

tt_shmbuf_t *tt_lua_new_buffer(lua_State *L) {
  tt_shmbuf_t *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->fd = -1;
  b->data = NULL;
  b->size = 0;
  b->frozen = 0;
  luaL_setmetatable(L, TT_BUFFER_MT);
  return b;
}

void tt_lua_buffer_pressure(lua_State *L, size_t size) {
  /* The collector sees a small userdata, not the memory and descriptor it
   * holds: dropped buffers would pile up descriptors until EMFILE. */
  tt_state_t *st = tt_state(L);
  size_t kb = (size < ((size_t)64 << 10) ? ((size_t)64 << 10) : size) >> 10;
  st->live_buffers++;
  if (!lua_gc(L, LUA_GCISRUNNING)) return;
  if (st->live_buffers > fd_budget()) {
    lua_gc(L, LUA_GCCOLLECT);
    return;
  }
  lua_gc(L, LUA_GCSTEP, kb > 0x7fffffff ? 0x7fffffff : (int)kb);
}

static tt_shmbuf_t *open_buffer(lua_State *L) {
  tt_shmbuf_t *b = luaL_checkudata(L, 1, TT_BUFFER_MT);
  if (b->fd < 0) luaL_error(L, "buffer is closed");
  return b;
}

static int l_buffer(lua_State *L) {
  size_t n = 0;
  const char *s = NULL;
  tt_shmbuf_t *b;
  int err;
  if (lua_type(L, 1) == LUA_TSTRING) {
    s = lua_tolstring(L, 1, &n);
  } else {
    lua_Integer k = luaL_checkinteger(L, 1);
    luaL_argcheck(L, k >= 0 && (uint64_t)k <= TT_SHMBUF_MAX, 1,
                  "size out of range (0 to 1 GiB)");
    n = (size_t)k;
  }
  if (n > TT_SHMBUF_MAX)
    return tt_lua_fail(L, UV_EINVAL, "a buffer holds at most 1 GiB");
  b = tt_lua_new_buffer(L);
  if ((err = tt_shmbuf_create(b, n)) == UV_EMFILE && lua_gc(L, LUA_GCISRUNNING)) {
    lua_gc(L, LUA_GCCOLLECT); /* (dropped buffers hold descriptors) */
    err = tt_shmbuf_create(b, n);
  }
  if (err != 0) return tt_lua_fail(L, err, "cannot make a shared buffer");
  if (s != NULL && n > 0) memcpy(b->data, s, n);
  tt_lua_buffer_pressure(L, n);
  return 1;
}

/* string.sub's positions: negative from the end, clamped */
static size_t position(lua_Integer i, size_t len) {
  if (i > 0) return (size_t)i;
  if (i == 0) return 1;
  if (i < -(lua_Integer)len) return 1;
  return len + (size_t)i + 1;
}

static int l_read(lua_State *L) {
  tt_shmbuf_t *b = open_buffer(L);
  size_t len = b->size;
  size_t i = position(luaL_optinteger(L, 2, 1), len);
  lua_Integer jj = luaL_optinteger(L, 3, -1);
  size_t j = jj >= 0                      ? (size_t)jj
             : jj < -(lua_Integer)len     ? 0
                                          : len - (size_t)(-(jj + 1));
  if (j > len) j = len;
  if (i > j) lua_pushliteral(L, "");
  else lua_pushlstring(L, b->data + i - 1, j - i + 1);
  return 1;
}

static int l_write(lua_State *L) {
  tt_shmbuf_t *b = open_buffer(L);
  lua_Integer i = luaL_checkinteger(L, 2);
  size_t n;
  const char *s = luaL_checklstring(L, 3, &n);
  if (b->frozen) return luaL_error(L, "buffer is frozen (sent, or freeze())");
  luaL_argcheck(L, i >= 1 && (size_t)(i - 1) <= b->size &&
                       n <= b->size - (size_t)(i - 1),
                2, "out of the buffer");
  if (n > 0) memcpy(b->data + i - 1, s, n);
  lua_settop(L, 1);
  return 1;
}

static int l_freeze(lua_State *L) {
  tt_shmbuf_t *b = open_buffer(L);
  int err = tt_shmbuf_freeze(b);
  if (err != 0) return tt_lua_fail(L, err, "cannot freeze the buffer");
  lua_settop(L, 1);
  return 1;
}

static int l_frozen(lua_State *L) {
  tt_shmbuf_t *b = luaL_checkudata(L, 1, TT_BUFFER_MT);
  lua_pushboolean(L, b->frozen);
  return 1;
}

static int l_close(lua_State *L) {
  tt_shmbuf_t *b = luaL_checkudata(L, 1, TT_BUFFER_MT);
  if (b->fd >= 0) {
    tt_state_t *st = tt_state(L);
    if (st->live_buffers > 0) st->live_buffers--;
  }
  tt_shmbuf_close(b);
  return 0;
}

static int l_len(lua_State *L) {
  tt_shmbuf_t *b = luaL_checkudata(L, 1, TT_BUFFER_MT);
  lua_pushinteger(L, (lua_Integer)b->size);
  return 1;
}

static int l_tostring(lua_State *L) {
  tt_shmbuf_t *b = luaL_checkudata(L, 1, TT_BUFFER_MT);
  if (b->fd < 0) lua_pushliteral(L, "tether.buffer (closed)");
  else
    lua_pushfstring(L, "tether.buffer (%I bytes%s)", (lua_Integer)b->size,
                    b->frozen ? ", frozen" : "");
  return 1;
}

void tt_open_buffer(lua_State *L) {
  static const luaL_Reg methods[] = {{"read", l_read},     {"write", l_write},
                                     {"freeze", l_freeze}, {"frozen", l_frozen},
                                     {"close", l_close},   {NULL, NULL}};
  lua_pushcfunction(L, l_buffer);
  lua_setfield(L, -2, "buffer");
  luaL_newmetatable(L, TT_BUFFER_MT);
  lua_pushcfunction(L, l_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, l_len);
  lua_setfield(L, -2, "__len");
  lua_pushcfunction(L, l_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
