/*
 * The acceptor (core/tt_acceptor.h) seen from Lua: a cluster's parent takes
 * connections from its listening socket and hands them on.
 *
 * core.acceptor(listen_handle, fn) -> acceptor | nil, err: fn(handle) for
 * each connection (the handle is fn's), fn(nil, err) when accepting stalls
 * (EMFILE, ...; it retries by itself).  The acceptor keeps the listening
 * handle referenced; it never closes it.  Methods: pause(on), stop().
 */
#include <stdlib.h>
#include <unistd.h>

#include "binding.h"
#include "tt_acceptor.h"

#define TT_ACCEPTOR_MT "tether.acceptor"

typedef struct {
  tt_lobj_t o;
  tt_acceptor_t a;
  int listen_ref; /* the listening handle: alive as long as we accept */
} tt_lacceptor_t;

static void on_closed(tt_acceptor_t *a) {
  tt_lacceptor_t *c = a->data;
  luaL_unref(c->o.st->L, LUA_REGISTRYINDEX, c->listen_ref);
  c->listen_ref = LUA_NOREF;
  tt_lobj_closed(&c->o);
}

static void teardown(tt_lobj_t *o) {
  tt_acceptor_close(&((tt_lacceptor_t *)o)->a, on_closed);
}

static void on_connection(tt_acceptor_t *a, int fd) {
  tt_lacceptor_t *c = a->data;
  lua_State *L = tt_lobj_begin(&c->o, NULL);
  if (L == NULL) {
    close(fd);
    return;
  }
  tt_lua_push_handle(L, fd); /* the handler's; __gc closes it if dropped */
  tt_call(c->o.st, L, 1);
}

static void on_error(tt_acceptor_t *a, int err) {
  tt_lacceptor_t *c = a->data;
  lua_State *L = tt_lobj_begin(&c->o, NULL);
  if (L == NULL) return;
  lua_pushnil(L);
  tt_lua_push_error(L, err, "accepting connections (retried in 100 ms)");
  tt_call(c->o.st, L, 2);
}

static int l_acceptor(lua_State *L) {
  int fd = tt_lua_handle_fd(L, 1);
  tt_lacceptor_t *c;
  int err;
  luaL_argcheck(L, fd != -2, 1, "handle expected");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (fd < 0) return tt_lua_fail(L, UV_EBADF, "the handle is empty");
  if ((c = calloc(1, sizeof *c)) == NULL) return tt_lua_fail(L, UV_ENOMEM, NULL);
  c->a.data = c;
  c->a.on_connection = on_connection;
  c->a.on_error = on_error;
  if ((err = tt_acceptor_start(&tt_state(L)->loop, &c->a, fd)) != 0) {
    free(c);
    return tt_lua_fail(L, err, NULL);
  }
  lua_pushvalue(L, 1);
  c->listen_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  tt_lobj_new_box(L, &c->o, TT_ACCEPTOR_MT, 2, teardown);
  return 1;
}

/* pause(on): stop taking connections (the backlog holds them) or resume. */
static int m_pause(lua_State *L) {
  tt_lacceptor_t *c = (tt_lacceptor_t *)tt_lobj_check(L, 1, TT_ACCEPTOR_MT);
  if (c != NULL) tt_acceptor_pause(&c->a, lua_toboolean(L, 2));
  return 0;
}

static int m_stop(lua_State *L) {
  return tt_lobj_close_method(L, TT_ACCEPTOR_MT);
}

static int m_tostring(lua_State *L) {
  tt_box_t *box = lua_touserdata(L, 1);
  lua_pushfstring(L, "tether.acceptor (%s)",
                  box->o && !box->o->closing ? "active" : "stopped");
  return 1;
}

void tt_open_acceptor(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"pause", m_pause}, {"stop", m_stop}, {NULL, NULL}};
  tt_lobj_class(L, TT_ACCEPTOR_MT, methods, m_tostring);
  lua_pushcfunction(L, l_acceptor);
  lua_setfield(L, -2, "acceptor");
}
