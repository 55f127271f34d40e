/* The contract's error object: {code=, message=} with __tostring. */
#include "util.h"

#include "tt_error.h"

static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "code");
  lua_getfield(L, 1, "message");
  lua_pushfstring(L, "%s: %s", luaL_optstring(L, -2, "?"),
                  luaL_optstring(L, -1, "?"));
  return 1;
}

void tt_lua_push_error(lua_State *L, int code, const char *msg) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, tt_err_name(code));
  lua_setfield(L, -2, "code");
  lua_pushstring(L, msg != NULL ? msg : tt_strerror(code));
  lua_setfield(L, -2, "message");
  if (luaL_newmetatable(L, TT_ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushstring(L, "tether.error");
    lua_setfield(L, -2, "__name");
  }
  lua_setmetatable(L, -2);
}

int tt_lua_fail(lua_State *L, int code, const char *msg) {
  lua_pushnil(L);
  tt_lua_push_error(L, code, msg);
  return 2;
}
