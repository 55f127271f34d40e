/*
 * The zygote (core/tt_zygote.h) seen from Lua.
 *
 * core.zygote_pair() -> asker, zygote_fd: a blocking socket pair
 * (close-on-exec).  `asker` is a userdata (tt_zygote_t: the socket and
 * the spares to reap) given as the `zygote` spawn option; asker:close(),
 * __gc and __close close it; asker:set_pid(pid) names the zygote once it
 * is spawned.  The zygote's end is passed with pass_fds and closed by the
 * caller (core.close_fd).
 * core.zygote_serve(fd, spares) -> link (in a new spare) | false (the
 * asker closed the socket: the zygote should exit) | nil, err.
 * core.zygote_claim(fd, link) -> argv (in the new worker, after the
 * loop was told it forked and the handshake was read again) | false (the
 * asker is gone: the spare should exit) | nil, err.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "binding.h"
#include "tt_handshake.h"
#include "tt_process.h"
#include "tt_zygote.h"

#define TT_ZYGOTE_MT "tether.zygote_asker"

tt_zygote_t *tt_lua_zygote(lua_State *L, int idx) {
  tt_zygote_t *z = luaL_testudata(L, idx, TT_ZYGOTE_MT);
  return z != NULL && z->sock >= 0 ? z : NULL;
}

static int l_zygote_close(lua_State *L) {
  tt_zygote_close(luaL_checkudata(L, 1, TT_ZYGOTE_MT));
  return 0;
}

static int l_zygote_pair(lua_State *L) {
  int sv[2];
  tt_zygote_t *z = lua_newuserdatauv(L, sizeof *z, 0);
  tt_zygote_init(z, -1);
  luaL_setmetatable(L, TT_ZYGOTE_MT);
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return tt_lua_fail(L, -errno, "socketpair");
  tt_zygote_init(z, sv[0]);
  lua_pushinteger(L, sv[1]);
  return 2;
}

/* asker:set_pid(pid): the zygote's pid, once spawned (its records of the
 * spares it makes are then believed, tt_zygote_set_pid) */
static int l_zygote_set_pid(lua_State *L) {
  tt_zygote_t *z = luaL_checkudata(L, 1, TT_ZYGOTE_MT);
  lua_Integer pid = luaL_checkinteger(L, 2);
  luaL_argcheck(L, pid > 0 && pid < 0x7fffffff, 2, "bad pid");
  tt_zygote_set_pid(z, (int)pid);
  return 0;
}

static int l_close_fd(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd > 2 && fd < 0x7fffffff, 1, "bad descriptor");
  lua_pushboolean(L, close((int)fd) == 0);
  return 1;
}

static int l_zygote_serve(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  lua_Integer spares = luaL_optinteger(L, 2, 1);
  int r;
  luaL_argcheck(L, fd >= 0 && fd < 0x7fffffff, 1, "bad descriptor");
  luaL_argcheck(L, spares >= 1 && spares <= TT_ZYGOTE_MAX_SPARES, 2,
                "spares out of range");
  r = tt_zygote_serve((int)fd, (unsigned)spares);
  if (r == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (r == -ECHILD)
    return tt_lua_fail(L, r, "a spare died before it was used (killed?): "
                             "workers are exec'd from now on");
  if (r < 0) return tt_lua_fail(L, r, "the zygote stopped serving");
  lua_pushinteger(L, r);
  return 1;
}

static int l_zygote_claim(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1), link = luaL_checkinteger(L, 2);
  tt_zygote_worker_t w = {NULL, 0};
  int r, err;
  luaL_argcheck(L, fd >= 0 && fd < 0x7fffffff, 1, "bad descriptor");
  luaL_argcheck(L, link >= 0 && link < 0x7fffffff, 2, "bad descriptor");
  {
    /* the loop's own descriptors: renewed by uv_loop_fork in the worker,
     * which closes them at these numbers first */
    uv_loop_t *loop = &tt_state(L)->loop;
    int keep[5] = {loop->backend_fd, loop->async_io_watcher.fd,
                   loop->async_wfd, loop->signal_pipefd[0],
                   loop->signal_pipefd[1]};
    r = tt_zygote_claim((int)fd, (int)link, keep, 5, &w);
  }
  if (r == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (r < 0) return tt_lua_fail(L, r, "the spare stopped waiting");
  /* a new worker: a loop of its own, and the environment it was given */
  if ((err = uv_loop_fork(&tt_state(L)->loop)) != 0) {
    fprintf(stderr, "tether: a forked worker cannot renew its loop: %s\n",
            uv_strerror(err));
    _exit(127);
  }
  tt_handshake_reload();
  lua_createtable(L, w.argc, 0);
  for (int i = 0; i < w.argc; i++) {
    lua_pushstring(L, w.args[i]);
    lua_rawseti(L, -2, i + 1);
  }
  free(w.args); /* (the strings stay: the environment lives among them) */
  return 1;
}

static int l_can_prefork(lua_State *L) {
  lua_pushboolean(L, tt_process_can_prefork());
  return 1;
}

void tt_open_zygote(lua_State *L) {
  static const luaL_Reg fns[] = {{"zygote_pair", l_zygote_pair},
                                 {"can_prefork", l_can_prefork},
                                 {"zygote_serve", l_zygote_serve},
                                 {"zygote_claim", l_zygote_claim},
                                 {"close_fd", l_close_fd},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
  luaL_newmetatable(L, TT_ZYGOTE_MT);
  lua_pushcfunction(L, l_zygote_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_zygote_close);
  lua_setfield(L, -2, "__close");
  lua_newtable(L);
  lua_pushcfunction(L, l_zygote_close);
  lua_setfield(L, -2, "close");
  lua_pushcfunction(L, l_zygote_set_pid);
  lua_setfield(L, -2, "set_pid");
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
