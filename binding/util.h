/*
 * Shared helpers of the tether.core binding: the contract's error object and
 * the one place every Lua callback is run from.
 */
#ifndef TT_LUA_UTIL_H
#define TT_LUA_UTIL_H

#include <lauxlib.h>
#include <lua.h>

#define TT_ERROR_MT "tether.error"

/* Pushes the contract's error object {code=, message=} for `code` (a tt_ or
 * UV_ code).  `msg` NULL means the code's standard description. */
void tt_lua_push_error(lua_State *L, int code, const char *msg);
/* Pushes nil and an error object; returns 2 for `return tt_lua_fail(...)`. */
int tt_lua_fail(lua_State *L, int code, const char *msg);

#endif
