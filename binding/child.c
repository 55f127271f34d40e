/*
 * tether.child: a spawned process, seen from the parent.  The Lua facade
 * (tether.lua) wraps it with events; this file turns core callbacks into
 * handler(event, ...) calls and exposes the process operations.
 *
 * The box is pinned from spawn until the "close" event, so a running child
 * is never collected; a failed spawn is closed at once and returns nil, err.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "binding.h"
#include "tt_error.h"
#include "tt_process.h"

typedef struct {
  tt_lobj_t o;
  tt_process_t p;
  tt_rpc_t rpc;
} tt_lchild_t;

static tt_lchild_t *of(tt_process_t *p) {
  return (tt_lchild_t *)((char *)p - offsetof(tt_lchild_t, p));
}

static void on_rpc_closed(tt_rpc_t *rpc) { tt_lobj_closed(rpc->data); }

/* The process is done with; its calls' timers may still be closing. */
static void on_process_closed(tt_process_t *p) {
  tt_lchild_t *c = of(p);
  if (c->o.rpc != NULL)
    tt_rpc_close(c->o.rpc, on_rpc_closed);
  else
    tt_lobj_closed(&c->o);
}

/* While the state lives, the process handle is kept until the exit is
 * reaped (no zombie); when the state closes, nobody will reap it: let go. */
static void teardown(tt_lobj_t *o) {
  tt_lchild_t *c = (tt_lchild_t *)o;
  if (o->st->closing)
    tt_process_abandon(&c->p, on_process_closed);
  else
    tt_process_close(&c->p, on_process_closed);
}

static void push_status(lua_State *L, tt_process_t *p) {
  if (p->term_signal != 0) {
    lua_pushnil(L);
    lua_pushstring(L, tt_signal_name(p->term_signal));
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushinteger(L, p->term_signal);
    }
  } else {
    lua_pushinteger(L, (lua_Integer)p->exit_status);
    lua_pushnil(L);
  }
}

static void on_exit_cb(tt_process_t *p, int64_t status, int sig) {
  lua_State *L = tt_lobj_begin(&of(p)->o, "exit");
  (void)status;
  (void)sig;
  if (L == NULL) return;
  push_status(L, p);
  tt_call(of(p)->o.st, L, 3);
}

static void on_disconnect(tt_process_t *p) {
  lua_State *L;
  if (of(p)->o.rpc != NULL)
    tt_rpc_fail_all(of(p)->o.rpc, TT_ERR_IPC_CHANNEL_CLOSED);
  L = tt_lobj_begin(&of(p)->o, "disconnect");
  if (L != NULL) tt_call(of(p)->o.st, L, 1);
}

static void on_closed(tt_process_t *p) {
  tt_lchild_t *c = of(p);
  lua_State *L = tt_lobj_begin(&c->o, "close");
  if (L != NULL) {
    push_status(L, p);
    tt_call(c->o.st, L, 3);
  }
  c->o.closing = 1;
  tt_process_close(p, on_process_closed);
}

static void on_stdin_drain(tt_process_t *p) {
  lua_State *L = tt_lobj_begin(&of(p)->o, "stdin_drain");
  if (L != NULL) tt_call(of(p)->o.st, L, 1);
}

static void on_data(tt_process_t *p, int fd, const char *buf, ssize_t n) {
  lua_State *L = tt_lobj_begin(&of(p)->o, fd == 1 ? "stdout" : "stderr");
  if (L == NULL) return;
  if (n > 0)
    lua_pushlstring(L, buf, (size_t)n);
  else
    lua_pushnil(L);
  tt_call(of(p)->o.st, L, 2);
}

/* ---- spawn --------------------------------------------------------------- */

static tt_stdio_mode_t stdio_mode(lua_State *L, int idx, const char **path) {
  const char *s = lua_tostring(L, idx);
  *path = NULL;
  if (lua_isnil(L, idx) || strcmp(s, "inherit") == 0) return TT_STDIO_INHERIT;
  if (lua_type(L, idx) != LUA_TSTRING)
    luaL_error(L, "stdio: expected a string");
  if (strcmp(s, "pipe") == 0) return TT_STDIO_PIPE;
  if (strcmp(s, "ignore") == 0) return TT_STDIO_IGNORE;
  *path = s;
  return TT_STDIO_FILE;
}

static size_t opt_size(lua_State *L, int opts, const char *name) {
  lua_Integer v;
  int isnum;
  lua_getfield(L, opts, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  v = lua_tointegerx(L, -1, &isnum);
  if (!isnum || v <= 0 || (uint64_t)v > UINT32_MAX)
    luaL_error(L, "%s: expected a positive integer below 4 GiB", name);
  lua_pop(L, 1);
  return (size_t)v;
}

/* nil, err for a spawn that failed, naming what was wrong: the program,
 * the working directory or a stdio file (libuv says ENOENT for all). */
static int spawn_failed(lua_State *L, int err, const tt_process_options_t *po) {
  char why[1024];
  return tt_lua_fail(L, err, tt_process_spawn_error(po, err, why, sizeof why));
}

/* spawn(file, args, opts, handler) -> child | nil, err.  args is an array
 * of strings (not including the program name); opts are already validated
 * by the facade except for the types checked here. */
static int l_spawn(lua_State *L) {
  const char *file = luaL_checkstring(L, 1);
  tt_process_options_t po;
  tt_lchild_t *c;
  lua_Integer nargs, nenv = 0, i;
  char **argv, **env = NULL;
  int err;

  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  memset(&po, 0, sizeof po);

  /* argv and env live in userdata: nothing to free if a check raises. */
  nargs = (lua_Integer)lua_rawlen(L, 2);
  argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nargs + 2), 0);
  argv[0] = (char *)file;
  for (i = 1; i <= nargs; i++) {
    lua_rawgeti(L, 2, i);
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
      return luaL_error(L, "args[%d]: expected a string", (int)i);
    argv[i] = (char *)lua_tostring(L, -1);
    lua_rawseti(L, 2, i); /* keeps a converted number alive */
  }
  argv[nargs + 1] = NULL;
  po.file = file;
  po.args = argv;

  lua_getfield(L, 3, "env"); /* array of "K=V", built by the facade */
  if (lua_istable(L, -1)) {
    nenv = (lua_Integer)lua_rawlen(L, -1);
    env = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nenv + 1), 0);
    for (i = 1; i <= nenv; i++) {
      lua_rawgeti(L, -2, i);
      if (lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "env[%d]: expected a string", (int)i);
      env[i - 1] = (char *)lua_tostring(L, -1);
      lua_pop(L, 1); /* still referenced by the env table */
    }
    env[nenv] = NULL;
  }
  /* The env table and the array stay on the stack until the spawn is done:
   * a collection step (any allocation below) must not free what the core
   * reads. */
  po.env = env;

  lua_getfield(L, 3, "cwd");
  po.cwd = lua_tostring(L, -1);
  lua_getfield(L, 3, "stdin");
  po.stdio[0] = stdio_mode(L, -1, &po.stdio_path[0]);
  lua_getfield(L, 3, "stdout");
  po.stdio[1] = stdio_mode(L, -1, &po.stdio_path[1]);
  lua_getfield(L, 3, "stderr");
  po.stdio[2] = stdio_mode(L, -1, &po.stdio_path[2]);
  lua_getfield(L, 3, "detached");
  po.detached = lua_toboolean(L, -1);
  lua_getfield(L, 3, "channel");
  po.channel = lua_isnil(L, -1) || lua_toboolean(L, -1);
  po.channel_options.max_message = opt_size(L, 3, "max_message");
  po.channel_options.high_water = opt_size(L, 3, "high_water");
  lua_getfield(L, 3, "flush_timeout"); /* ms; 0: do not wait; huge: for ever */
  if (!lua_isnil(L, -1)) {
    lua_Number t = luaL_checknumber(L, -1);
    po.channel_options.flush_timeout_ms =
        t >= 2147483647.0 ? -1 : t < 1 ? 1 : (int64_t)t;
  }
  lua_pop(L, 1);
  lua_getfield(L, 3, "json");
  po.channel_options.lines = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 3, "zygote");
  po.zygote = tt_lua_zygote(L, -1); /* (the table holds it during the spawn) */
  lua_pop(L, 1);
  lua_getfield(L, 3, "close_fds");
  po.keep_fds = lua_isboolean(L, -1) && !lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 3, "pass_fds"); /* stays on the stack, as the array does */
  if (lua_istable(L, -1)) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    int *fds = lua_newuserdatauv(L, sizeof(int) * (size_t)(n + 1), 0);
    for (i = 1; i <= n; i++) {
      lua_Integer fd;
      int isint;
      lua_rawgeti(L, -2, i);
      fd = lua_tointegerx(L, -1, &isint);
      if (!isint || fd < 0 || fd > 65535)
        return luaL_error(L, "pass_fds[%d]: expected a file descriptor number", (int)i);
      fds[i - 1] = (int)fd;
      lua_pop(L, 1);
    }
    po.pass_fds = fds;
    po.pass_fds_count = (size_t)n;
  }

  c = calloc(1, sizeof *c);
  if (c == NULL) return tt_lua_fail(L, UV_ENOMEM, NULL);
  tt_lobj_new_box(L, &c->o, TT_CHILD_MT, 4, teardown);
  err = tt_process_spawn(&c->o.st->loop, &c->p, &po);
  if (err != 0) {
    c->o.closing = 1;
    tt_process_close(&c->p, on_process_closed);
    return spawn_failed(L, err, &po);
  }
  c->p.on_exit = on_exit_cb;
  c->p.on_disconnect = on_disconnect;
  c->p.on_closed = on_closed;
  c->p.on_data = on_data;
  c->p.on_stdin_drain = on_stdin_drain;
  c->o.json = po.channel_options.lines;
  if (c->p.channel != NULL) {
    c->o.ch = c->p.channel;
    c->p.channel->data = &c->o;
    c->p.channel->on_frame = tt_lua_on_frame;
    c->p.channel->on_error = tt_lua_on_channel_error;
    c->p.channel->on_drain = tt_lua_on_drain;
    tt_rpc_init(&c->o.st->loop, &c->rpc, c->p.channel);
    c->rpc.data = &c->o;
    c->o.rpc = &c->rpc;
  }
  return 1;
}

/* ---- methods --------------------------------------------------------------- */

static tt_lchild_t *check(lua_State *L) {
  return (tt_lchild_t *)tt_lobj_check(L, 1, TT_CHILD_MT);
}

static tt_channel_t *live_channel(tt_lchild_t *c) {
  if (c == NULL || c->p.channel == NULL) return NULL;
  return c->p.channel;
}

static int m_send(lua_State *L) {
  tt_lchild_t *c = check(L);
  return tt_lua_send_method(L, c ? &c->o : NULL, live_channel(c));
}

static int m_set_listener(lua_State *L) {
  tt_lchild_t *c = check(L);
  return tt_lua_set_listener_method(L, c ? &c->o : NULL);
}

static int m_take_handle(lua_State *L) {
  return tt_lua_take_handle(L, live_channel(check(L)));
}

static int m_disconnect(lua_State *L) {
  tt_lchild_t *c = check(L);
  tt_channel_t *ch = live_channel(c);
  int err;
  if (c != NULL && c->p.channel == NULL)
    return tt_lua_fail(L, TT_ERR_NO_CHANNEL, NULL);
  err = ch ? tt_channel_disconnect(ch) : TT_ERR_IPC_DISCONNECTED;
  if (err != 0) return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_connected(lua_State *L) {
  tt_channel_t *ch = live_channel(check(L));
  lua_pushboolean(L, ch != NULL && tt_channel_is_connected(ch));
  return 1;
}

/* ref(on): whether the child's exit keeps the loop running */
static int m_ref(lua_State *L) {
  tt_lchild_t *c = check(L);
  if (c != NULL) tt_process_ref(&c->p, lua_toboolean(L, 2));
  return 0;
}

static int m_kill(lua_State *L) {
  tt_lchild_t *c = check(L);
  int sig, err;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    sig = (int)luaL_checkinteger(L, 2);
  } else {
    const char *name = luaL_optstring(L, 2, "SIGTERM");
    sig = tt_signal_number(name);
    if (sig == 0) return luaL_argerror(L, 2, "unknown signal name");
  }
  if (c == NULL) return tt_lua_fail(L, UV_ESRCH, NULL);
  if ((err = tt_process_kill(&c->p, sig)) != 0)
    return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* Still answers after close: the counters outlive the channel. */
static int m_stats(lua_State *L) {
  tt_box_t *box = luaL_checkudata(L, 1, TT_CHILD_MT);
  tt_lchild_t *c = (tt_lchild_t *)box->o;
  tt_channel_t *ch = c ? c->p.channel : NULL;
  return tt_lua_stats(L, ch, c ? c->o.rpc : NULL);
}

static int m_call(lua_State *L) {
  tt_lchild_t *c = check(L);
  return tt_lua_call_method(L, c ? &c->o : NULL);
}

static int m_answer(lua_State *L) {
  tt_lchild_t *c = check(L);
  return tt_lua_answer_method(L, c ? &c->o : NULL);
}

static int m_pid(lua_State *L) {
  tt_box_t *box = luaL_checkudata(L, 1, TT_CHILD_MT);
  tt_lchild_t *c = (tt_lchild_t *)box->o;
  if (c == NULL) return 0;
  lua_pushinteger(L, c->p.pid);
  return 1;
}

static int m_write(lua_State *L) {
  tt_lchild_t *c = check(L);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  int rc = c ? tt_process_stdin_write(&c->p, s, len) : UV_EPIPE;
  if (rc < 0) return tt_lua_fail(L, rc, NULL);
  lua_pushboolean(L, rc == 1); /* false: over the high-water mark */
  return 1;
}

static int m_end(lua_State *L) {
  tt_lchild_t *c = check(L);
  int err = c ? tt_process_stdin_end(&c->p) : UV_EPIPE;
  if (err != 0) return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_tostring(lua_State *L) {
  tt_box_t *box = luaL_checkudata(L, 1, TT_CHILD_MT);
  tt_lchild_t *c = (tt_lchild_t *)box->o;
  if (c == NULL || c->o.closed)
    lua_pushliteral(L, "tether.child (closed)");
  else
    lua_pushfstring(L, "tether.child (pid %d, %s)", c->p.pid,
                    tt_process_has_exited(&c->p) ? "exited" : "running");
  return 1;
}

void tt_open_child(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"send", m_send},           {"disconnect", m_disconnect},
      {"take_handle", m_take_handle}, {"set_listener", m_set_listener},
      {"connected", m_connected}, {"kill", m_kill}, {"ref", m_ref},
      {"stats", m_stats},         {"pid", m_pid},
      {"write", m_write},         {"end_input", m_end},
      {"call", m_call},           {"answer", m_answer},
      {NULL, NULL}};
  tt_lobj_class(L, TT_CHILD_MT, methods, m_tostring);
  lua_pushcfunction(L, l_spawn);
  lua_setfield(L, -2, "spawn");
}
