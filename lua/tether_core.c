/*
 * tether.core: the module entry point, the loop, and the one place every Lua
 * callback is run from (tt_call).
 *
 * The loop lives in a userdata kept in the registry; its __gc tears every
 * live object down and runs the loop until libuv has closed them all, so a
 * Lua state can be closed at any moment without leaks or dangling handles.
 * No callback runs into Lua once that has begun.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "binding.h"
#include "tt_error.h"
#include "tt_process.h"

#define TT_STATE_KEY "tether.state"
#define TT_VERSION "0.1.0"

static const char state_key = 0;

tt_state_t *tt_state(lua_State *L) {
  tt_state_t *st;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key);
  st = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (st == NULL) luaL_error(L, "tether.core is not initialised");
  return st;
}

/* ---- objects ----------------------------------------------------------- */

tt_box_t *tt_lobj_new_box(lua_State *L, tt_lobj_t *o, const char *mt,
                          int handler_idx, void (*teardown)(tt_lobj_t *)) {
  tt_state_t *st = tt_state(L);
  tt_box_t *box;
  if (handler_idx != 0) handler_idx = lua_absindex(L, handler_idx);
  box = lua_newuserdatauv(L, sizeof *box, 0);
  box->o = o;
  luaL_setmetatable(L, mt);
  o->st = st;
  o->teardown = teardown;
  o->next = st->objects.next;
  o->prev = &st->objects;
  st->objects.next->prev = o;
  st->objects.next = o;
  lua_pushvalue(L, -1);
  o->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (handler_idx != 0) {
    lua_pushvalue(L, handler_idx);
    o->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  } else {
    o->handler_ref = LUA_NOREF;
  }
  return box;
}

tt_lobj_t *tt_lobj_check(lua_State *L, int idx, const char *mt) {
  tt_box_t *box = luaL_checkudata(L, idx, mt);
  if (box->o == NULL || box->o->closing) return NULL;
  return box->o;
}

void tt_lobj_release(tt_lobj_t *o) {
  /* The state may be closing: its registry is still valid until the state
   * userdata's __gc has finished, which is what calls us then. */
  lua_State *L = o->st->L;
  luaL_unref(L, LUA_REGISTRYINDEX, o->handler_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, o->self_ref);
  o->handler_ref = o->self_ref = LUA_NOREF;
}

void tt_lobj_closed(tt_lobj_t *o) {
  o->closed = 1;
  if (!o->st->closing) tt_lobj_release(o);
  o->prev->next = o->next;
  o->next->prev = o->prev;
  o->next = o->prev = o;
  if (o->box_gone) free(o);
}

int tt_lobj_gc(lua_State *L) {
  tt_box_t *box = lua_touserdata(L, 1);
  tt_lobj_t *o = box ? box->o : NULL;
  if (o == NULL) return 0;
  box->o = NULL;
  o->collected = 1;
  if (!o->closing) {
    /* Nobody can observe events of a collected object: drop the handler
     * before closing, so closing cannot call back into Lua (this also runs
     * from lua_close). */
    tt_lobj_release(o);
    o->closing = 1;
    o->teardown(o);
  }
  /* Set only now: a teardown that completes at once must not free `o`
   * under us (tt_lobj_closed frees when the box is gone). */
  o->box_gone = 1;
  if (o->closed) free(o);
  return 0;
}

void tt_lobj_class(lua_State *L, const char *mt, const luaL_Reg *methods,
                   lua_CFunction tostring) {
  luaL_newmetatable(L, mt);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, tt_lobj_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, tt_lobj_gc);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}

lua_State *tt_lobj_begin(tt_lobj_t *o, const char *event) {
  lua_State *L = o->st->L;
  if (o->st->closing || o->st->exiting || o->handler_ref == LUA_NOREF)
    return NULL;
  luaL_checkstack(L, 8, "tether callback");
  lua_rawgeti(L, LUA_REGISTRYINDEX, o->handler_ref);
  if (event != NULL) lua_pushstring(L, event);
  return L;
}

/* ---- callbacks ----------------------------------------------------------- */

/* Message handler: keeps the error value and adds a traceback beside it. */
static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)",
                            luaL_typename(L, 1));
  }
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  luaL_traceback(L, L, msg, 1);
  lua_rawseti(L, -2, 2);
  return 1;
}

/* {err, traceback} on the stack top: to the uncaught handler or stashed. */
static int is_exit_request(lua_State *L) {
  int top = lua_gettop(L), yes = 0;
  lua_rawgeti(L, -1, 1); /* the error value in the {err, traceback} box */
  if (lua_istable(L, -1)) {
    lua_pushliteral(L, "tether_exit");
    yes = lua_rawget(L, -2) != LUA_TNIL;
  }
  lua_settop(L, top);
  return yes;
}

static void route_error(tt_state_t *st, lua_State *L) {
  /* tether.exit() inside a callback unwinds to run(); no handler sees it. */
  if (st->uncaught_ref != LUA_NOREF && !is_exit_request(L)) {
    int base;
    lua_pushcfunction(L, msgh);
    base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, st->uncaught_ref);
    lua_rawgeti(L, base - 1, 1);
    lua_rawgeti(L, base - 1, 2);
    if (lua_pcall(L, 2, 0, base) == LUA_OK) {
      lua_pop(L, 2); /* msgh, box */
      return;
    }
    /* The handler itself failed: that one is fatal. */
    lua_replace(L, base - 1);
    lua_pop(L, 1);
  }
  /* After tether.exit()/os.exit() in a callback, nothing more of this
   * iteration runs (e.g. the next message of the same read). */
  if (is_exit_request(L)) st->exiting = 1;
  if (st->error_ref == LUA_NOREF)
    st->error_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  else
    lua_pop(L, 1);
  uv_stop(&st->loop);
}

/* uncaught(err, traceback): the uncaught-error rule for errors found in
 * Lua (a failed tether.go coroutine). */
static int l_uncaught(lua_State *L) {
  tt_state_t *st = tt_state(L);
  luaL_checkany(L, 1);
  lua_settop(L, 2);
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 2);
  route_error(st, L);
  return 0;
}

int tt_call(tt_state_t *st, lua_State *L, int nargs) {
  int base = lua_gettop(L) - nargs; /* the function */
  int rc;
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  rc = lua_pcall(L, nargs, 0, base);
  if (rc != LUA_OK) route_error(st, L);
  lua_remove(L, base);
  return rc;
}

/* ---- loop ---------------------------------------------------------------- */

static int l_run(lua_State *L) {
  static const char *const modes[] = {"default", "once", "nowait", NULL};
  static const uv_run_mode uvmodes[] = {UV_RUN_DEFAULT, UV_RUN_ONCE,
                                        UV_RUN_NOWAIT};
  tt_state_t *st = tt_state(L);
  int mode = luaL_checkoption(L, 1, "default", modes);
  lua_State *prev = st->L;
  int more;
  if (st->running) return luaL_error(L, "tether.run: the loop is already running");
  st->running = 1;
  st->L = L;
  more = uv_run(&st->loop, uvmodes[mode]);
  st->L = prev;
  st->running = 0;
  if (st->error_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, st->error_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, st->error_ref);
    st->error_ref = LUA_NOREF;
    lua_rawgeti(L, -1, 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
      lua_rawgeti(L, -2, 2); /* the traceback starts with the message */
      return lua_error(L);
    }
    /* An error object is raised as it was, with the traceback added. */
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_pushliteral(L, "traceback");
      if (lua_rawget(L, -2) == LUA_TNIL) {
        lua_pushliteral(L, "traceback");
        lua_rawgeti(L, -4, 2);
        lua_rawset(L, -4);
      }
      lua_pop(L, 1);
    }
    return lua_error(L);
  }
  lua_pushboolean(L, more != 0);
  return 1;
}

static int l_stop(lua_State *L) {
  uv_stop(&tt_state(L)->loop);
  return 0;
}

static int l_now(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)uv_now(&tt_state(L)->loop));
  return 1;
}

static int l_update_time(lua_State *L) {
  uv_update_time(&tt_state(L)->loop);
  return 0;
}

static int l_hrtime(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)uv_hrtime());
  return 1;
}

/* ms until the loop has timers due (-1: none, 0: work pending now): what an
 * embedding loop should wait at most before calling run("nowait"). */
static int l_timeout(lua_State *L) {
  lua_pushinteger(L, uv_backend_timeout(&tt_state(L)->loop));
  return 1;
}

static int l_running(lua_State *L) {
  lua_pushboolean(L, tt_state(L)->running);
  return 1;
}

static int l_fd(lua_State *L) {
  lua_pushinteger(L, uv_backend_fd(&tt_state(L)->loop));
  return 1;
}

static int l_set_uncaught(lua_State *L) {
  tt_state_t *st = tt_state(L);
  luaL_unref(L, LUA_REGISTRYINDEX, st->uncaught_ref);
  st->uncaught_ref = LUA_NOREF;
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_pushvalue(L, 1);
    st->uncaught_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

static int l_error(lua_State *L) {
  const char *code = luaL_checkstring(L, 1);
  const char *msg = luaL_optstring(L, 2, NULL);
  tt_lua_push_error(L, -1, msg ? msg : code);
  lua_pushstring(L, code);
  lua_setfield(L, -2, "code");
  return 1;
}

static int l_signal_number(lua_State *L) {
  int n = tt_signal_number(luaL_checkstring(L, 1));
  if (n == 0) return 0;
  lua_pushinteger(L, n);
  return 1;
}

static int l_signal_name(lua_State *L) {
  const char *n = tt_signal_name((int)luaL_checkinteger(L, 1));
  lua_pushstring(L, n);
  return 1;
}

static int l_watch_parent(lua_State *L) {
  int err = tt_process_watch_parent(lua_toboolean(L, 1),
                                    (int)luaL_optinteger(L, 2, 1000));
  if (err != 0) return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_parent_alive(lua_State *L) {
  lua_pushboolean(L, tt_process_parent_alive());
  return 1;
}

static int l_set_max_depth(lua_State *L) {
  tt_state_t *st = tt_state(L);
  lua_Integer d = luaL_checkinteger(L, 1);
  luaL_argcheck(L, d > 0 && d < 1000000, 1, "depth out of range");
  st->max_depth = (int)d;
  return 0;
}

/* ---- state teardown ------------------------------------------------------ */

static void close_stray(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static int state_gc(lua_State *L) {
  tt_state_t *st = lua_touserdata(L, 1);
  if (st->closing) return 0;
  st->closing = 1;
  st->L = L;
  /* Everything still open is closed now; core memory is freed in the close
   * callbacks (or by the boxes' __gc, whichever comes last). */
  while (st->objects.next != &st->objects) {
    tt_lobj_t *o = st->objects.next;
    /* Unlink first so a teardown that completes later cannot loop here. */
    o->prev->next = o->next;
    o->next->prev = o->prev;
    o->next = o->prev = o;
    /* Also when already closing: a child waiting for its exit is let go
     * now (teardowns are idempotent). */
    o->closing = 1;
    o->teardown(o);
  }
  uv_walk(&st->loop, close_stray, NULL);
  while (uv_run(&st->loop, UV_RUN_DEFAULT) != 0) {
  }
  uv_loop_close(&st->loop);
  free(st->wbuf.data);
  st->wbuf.data = NULL;
  return 0;
}

/* set_json(encode, decode): the JSON codec of JSON-mode channels, written
 * in Lua over lua-cjson by the facade.  encode(v) -> text | nil, why;
 * decode(text) -> true, value | false, why. */
static int l_set_json(lua_State *L) {
  tt_state_t *st = tt_state(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, st->json_encode_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, st->json_decode_ref);
  lua_pushvalue(L, 1);
  st->json_encode_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 2);
  st->json_decode_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* parallelism() -> how many CPUs we may use (the default pool size) */
static int l_parallelism(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)uv_available_parallelism());
  return 1;
}

static const luaL_Reg funcs[] = {
    {"parallelism", l_parallelism},
    {"set_json", l_set_json},
    {"run", l_run},
    {"stop", l_stop},
    {"now", l_now},
    {"update_time", l_update_time},
    {"hrtime", l_hrtime},
    {"fd", l_fd},
    {"running", l_running},
    {"timeout", l_timeout},
    {"uncaught", l_uncaught},
    {"set_uncaught", l_set_uncaught},
    {"error", l_error},
    {"signal_number", l_signal_number},
    {"signal_name", l_signal_name},
    {"watch_parent", l_watch_parent},
    {"parent_alive", l_parent_alive},
    {"set_max_depth", l_set_max_depth},
    {NULL, NULL}};

__attribute__((visibility("default"))) int luaopen_tether_core(lua_State *L) {
  tt_state_t *st;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key);
  if (lua_isnil(L, -1)) {
    int err;
    lua_pop(L, 1);
    st = lua_newuserdatauv(L, sizeof *st, 0);
    memset(st, 0, sizeof *st);
    if ((err = uv_loop_init(&st->loop)) != 0)
      return luaL_error(L, "tether: cannot create the loop: %s",
                        uv_strerror(err));
    st->uncaught_ref = st->error_ref = LUA_NOREF;
    st->json_encode_ref = st->json_decode_ref = LUA_NOREF;
    st->max_depth = TT_CODEC_DEFAULT_MAX_DEPTH;
    st->objects.next = st->objects.prev = &st->objects;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    st->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &state_key);
    /* Like Node: a write to a closed pipe or socket is an error value,
     * never a process-killing signal (children get SIG_DFL back). */
    {
      struct sigaction sa;
      if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    }
  } else {
    lua_pop(L, 1);
  }

  lua_newtable(L);
  luaL_setfuncs(L, funcs, 0);
  lua_pushliteral(L, TT_VERSION);
  lua_setfield(L, -2, "version");
  lua_newtable(L);
#define XX(name, _)                                                           \
  lua_pushliteral(L, #name);                                                  \
  lua_setfield(L, -2, #name);
  TT_ERR_MAP(XX)
#undef XX
  lua_setfield(L, -2, "errors");
  tt_codec_open(L);
  tt_open_timer(L);
  tt_open_child(L);
  tt_open_supervisor(L);
  tt_open_pool(L);
  tt_open_channel(L);
  return 1;
}
