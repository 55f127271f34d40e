/*
 * A minimal lua5.4 for profiling: Debian's lua5.4 binary is stripped, so
 * perf and callgrind name none of the interpreter's functions; this one is
 * linked from liblua5.4.a, which keeps its symbols.  It runs a script with
 * `arg` set as lua.c sets it (arg[-1] the interpreter, so tether.fork's
 * children run under it too).  Not a full lua.c: no options, no REPL.
 *
 *   cc -std=c11 -O2 -g -Wall -Wextra -I/usr/include/lua5.4 -o build/lua_symbols \
 *      bench/lua_symbols.c /usr/lib/x86_64-linux-gnu/liblua5.4.a -lm -ldl -Wl,-E
 *   valgrind --tool=callgrind --trace-children=yes --collect-atstart=no \
 *      --toggle-collect=uv_run build/lua_symbols bench/count_pingpong.lua
 *
 * (-Wl,-E: tether's core.so finds the Lua API in the executable.)
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>

static int traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L;
  int i, rc;
  if (argc < 2) {
    fprintf(stderr, "usage: %s script [args]\n", argv[0]);
    return 2;
  }
  L = luaL_newstate();
  luaL_openlibs(L);
  lua_createtable(L, argc, 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  lua_pushcfunction(L, traceback);
  if (luaL_loadfile(L, argv[1]) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
  rc = lua_pcall(L, argc - 2, 0, 1);
  if (rc != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lua_close(L);
  return rc == LUA_OK ? 0 : 1;
}
