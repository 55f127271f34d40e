/*
 * tether.supervisor: the core supervisor (core/tt_supervisor.h) seen from
 * Lua.  The facade (tether.lua) validates the spec and turns handler calls
 * into events; this file converts options, decodes worker messages and
 * exposes the operations.
 *
 * The box is pinned from start until the supervisor has stopped and closed
 * (after the "stopped" event), so a running supervisor is never collected.
 * The option table the facade built is referenced for as long: the core
 * keeps pointers to its strings (argv, env, cwd, log paths).
 */
#include <stdlib.h>
#include <string.h>

#include "binding.h"
#include "tt_error.h"
#include "tt_supervisor.h"

typedef struct {
  tt_lobj_t o;
  tt_supervisor_t s;
  tt_lworkers_t w;
  tt_channel_t *frame_ch; /* during on_frame: the channel it came on */
} tt_lsup_t;

static tt_lsup_t *of(tt_supervisor_t *s) { return s->data; }

static void on_sup_closed(tt_supervisor_t *s) {
  tt_lua_workers_closed(&of(s)->o, &of(s)->w);
}

int tt_lua_start_failed(lua_State *L, int err,
                        const tt_supervisor_options_t *so, int log) {
  if (log == 1 || log == 2) /* name the option and the path */
    lua_pushfstring(L, "%s log '%s': %s", log == 1 ? "stdout" : "stderr",
                    so->log_path[log], uv_strerror(err));
  else
    lua_pushstring(L, tt_strerror(err));
  return tt_lua_fail(L, err, lua_tostring(L, -1));
}

void tt_lua_workers_free(tt_lworkers_t *w) {
  free(w->argv);
  free(w->env);
  w->argv = w->env = NULL;
  for (unsigned i = 0; i < w->nslots; i++) free(w->slots[i].fds);
  free(w->slots);
  w->slots = NULL;
  w->nslots = 0;
}

static const char *str_field(lua_State *L, int t, const char *k);

/* What differs per slot: a cluster's listening sockets and the handshake
 * variable that names them. */
static void on_spawn(tt_supervisor_t *s, unsigned id, tt_process_options_t *po) {
  tt_lworkers_t *w = &of(s)->w;
  if (id < 1 || id > w->nslots) return;
  po->pass_fds = w->slots[id - 1].fds;
  po->pass_fds_count = w->slots[id - 1].nfds;
  po->handshake = w->slots[id - 1].handshake;
}

/* One slot's {fds = {n, ...}, handshake = "K=V"} at the top of the stack
 * (the string kept alive by the option table): 0, or -1 out of memory. */
static int slot_option(lua_State *L, tt_lslot_t *sl) {
  lua_Integer k, nf;
  int *fds = NULL;
  lua_getfield(L, -1, "fds");
  nf = lua_istable(L, -1) ? (lua_Integer)lua_rawlen(L, -1) : 0;
  if (nf > 0 && (fds = calloc((size_t)nf, sizeof(int))) == NULL) {
    lua_pop(L, 1);
    return -1;
  }
  for (k = 1; k <= nf; k++) {
    lua_rawgeti(L, -1, k);
    fds[k - 1] = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  free(sl->fds);
  sl->fds = fds;
  sl->nfds = (size_t)nf;
  sl->handshake[0] = (char *)str_field(L, lua_gettop(L), "handshake");
  return 0;
}

/* opts.slots = { {fds = {n, ...}, handshake = "K=V"}, ... } (one per slot,
 * the strings kept alive by the option table): 0, or -1 out of memory. */
static int slot_options(lua_State *L, int idx, tt_lworkers_t *w) {
  lua_Integer n;
  lua_getfield(L, idx, "slots");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  n = (lua_Integer)lua_rawlen(L, -1);
  if (n < 1 || (w->slots = calloc((size_t)n, sizeof *w->slots)) == NULL) {
    lua_pop(L, 1);
    return n < 1 ? 0 : -1;
  }
  w->nslots = (unsigned)n;
  for (lua_Integer i = 1; i <= n; i++) {
    int bad;
    if (lua_rawgeti(L, -1, i) != LUA_TTABLE) { /* built by the facade */
      lua_pop(L, 1);
      continue;
    }
    bad = slot_option(L, &w->slots[i - 1]);
    lua_pop(L, 1);
    if (bad) {
      lua_pop(L, 1);
      return -1;
    }
  }
  lua_pop(L, 1);
  return 0;
}

void tt_lua_workers_closed(tt_lobj_t *o, tt_lworkers_t *w) {
  lua_State *L = tt_lobj_begin(o, "close");
  if (L != NULL) tt_call(o->st, L, 1);
  tt_lua_workers_free(w);
  luaL_unref(o->st->L, LUA_REGISTRYINDEX, w->opts_ref);
  w->opts_ref = LUA_NOREF;
  tt_lobj_closed(o);
}

static void teardown(tt_lobj_t *o) {
  tt_lsup_t *c = (tt_lsup_t *)o;
  if (o->st->closing) /* the loop goes away with the Lua state */
    tt_supervisor_abandon(&c->s, on_sup_closed);
  else
    tt_supervisor_close(&c->s, on_sup_closed);
}

/* ---- events ------------------------------------------------------------- */

static void on_start(tt_supervisor_t *s, unsigned id, uint64_t serial) {
  lua_State *L = tt_lobj_begin(&of(s)->o, "start");
  if (L == NULL) return;
  lua_pushinteger(L, id);
  lua_pushinteger(L, tt_supervisor_worker_pid(s, serial));
  tt_call(of(s)->o.st, L, 3);
}

static void push_signal(lua_State *L, int sig) {
  const char *name = tt_signal_name(sig);
  if (sig == 0)
    lua_pushnil(L);
  else if (name != NULL)
    lua_pushstring(L, name);
  else
    lua_pushinteger(L, sig);
}

static void on_exit_cb(tt_supervisor_t *s, unsigned id, uint64_t serial,
                       int64_t status, int sig, tt_exit_reason_t reason) {
  lua_State *L = tt_lobj_begin(&of(s)->o, "exit");
  if (L == NULL) return;
  lua_pushinteger(L, id);
  if (sig != 0)
    lua_pushnil(L);
  else
    lua_pushinteger(L, (lua_Integer)status);
  push_signal(L, sig);
  lua_pushstring(L, tt_exit_reason_name(reason));
  lua_pushinteger(L, tt_supervisor_worker_pid(s, serial));
  tt_call(of(s)->o.st, L, 6);
}

static void on_restart(tt_supervisor_t *s, unsigned id, tt_exit_reason_t r,
                       int pid) {
  lua_State *L = tt_lobj_begin(&of(s)->o, "restart");
  if (L == NULL) return;
  lua_pushinteger(L, id);
  lua_pushstring(L, tt_exit_reason_name(r));
  lua_pushinteger(L, pid);
  tt_call(of(s)->o.st, L, 4);
}

static void on_give_up(tt_supervisor_t *s, const char *why) {
  lua_State *L = tt_lobj_begin(&of(s)->o, "give_up");
  if (L == NULL) return;
  lua_pushstring(L, why);
  tt_call(of(s)->o.st, L, 2);
}

static void on_frame(tt_supervisor_t *s, unsigned id, uint64_t serial,
                     tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload) {
  tt_lsup_t *c = of(s);
  const char *event;
  lua_State *L;
  int rc;
  switch (h->kind) {
  case TT_FRAME_MESSAGE:
    event = "message";
    break;
  case TT_FRAME_REQUEST:
    event = "request";
    break;
  case TT_FRAME_CONTROL:
    event = "control";
    break;
  default:
    return; /* replies: we make no calls to supervised workers */
  }
  if ((L = tt_lobj_begin(&c->o, event)) == NULL) return;
  c->frame_ch = ch;
  lua_pushinteger(L, id);
  /* a worker's message or request may carry a buffer (its
   * tether.parent:send or :call) */
  rc = tt_lua_decode_from(
      L, c->o.st, payload, h->len, c->o.json, tt_channel_max_message(ch),
      h->kind != TT_FRAME_CONTROL && !tt_channel_is_lines(ch) ? ch : NULL);
  if (rc != 1) {
    char why[256];
    snprintf(why, sizeof why, "%s", lua_tostring(L, -1));
    lua_pop(L, 4); /* handler, event, id, why */
    c->frame_ch = NULL;
    tt_channel_fail(ch, rc == 0 ? TT_ERR_IPC_PROTOCOL : UV_ENOMEM, why);
    return;
  }
  if (h->kind == TT_FRAME_REQUEST) {
    lua_pushinteger(L, (lua_Integer)h->id);
    lua_pushinteger(L, (lua_Integer)serial); /* answered on its channel */
    tt_call(c->o.st, L, 5);
  } else if (h->kind == TT_FRAME_CONTROL) {
    /* (id, value, handle or nil, pid): the pid of the process that sent
     * it, as we spawned it (a cluster tells incarnations apart by it) */
    int fd = tt_lua_frame_fd(ch, h);
    if (fd >= 0)
      tt_lua_push_handle(L, fd);
    else
      lua_pushnil(L);
    lua_pushinteger(L, tt_supervisor_worker_pid(s, serial));
    tt_call(c->o.st, L, 5);
  } else {
    int fd = tt_lua_frame_fd(ch, h);
    if (fd >= 0) tt_lua_push_handle(L, fd); /* the handler's now */
    tt_call(c->o.st, L, fd >= 0 ? 4 : 3);
  }
  c->frame_ch = NULL;
}

static void on_error(tt_supervisor_t *s, unsigned id, int err,
                     const char *why) {
  lua_State *L = tt_lobj_begin(&of(s)->o, "error");
  if (L == NULL) return;
  lua_pushinteger(L, id);
  tt_lua_push_error(L, err, why);
  tt_call(of(s)->o.st, L, 3);
}

static void on_reload(tt_supervisor_t *s, int status) {
  lua_State *L = tt_lobj_begin(&of(s)->o, "reload");
  if (L == NULL) return;
  if (status == 0)
    lua_pushnil(L);
  else
    tt_lua_push_error(L, status, NULL);
  tt_call(of(s)->o.st, L, 2);
}

static void on_scale(tt_supervisor_t *s, int status) {
  lua_State *L = tt_lobj_begin(&of(s)->o, "scale");
  if (L == NULL) return;
  if (status == 0)
    lua_pushnil(L);
  else
    tt_lua_push_error(L, status, status == TT_ERR_WORKER_INIT
                                     ? "a new worker failed to start"
                                     : NULL);
  tt_call(of(s)->o.st, L, 2);
}

static void on_stopped(tt_supervisor_t *s) {
  tt_lsup_t *c = of(s);
  lua_State *L = tt_lobj_begin(&c->o, "stopped");
  if (L != NULL) tt_call(c->o.st, L, 1);
  if (!c->o.closing) {
    c->o.closing = 1;
    tt_supervisor_close(&c->s, on_sup_closed);
  }
}

/* ---- start -------------------------------------------------------------- */

static double num_field(lua_State *L, int t, const char *k, double def) {
  double v;
  int isnum;
  lua_getfield(L, t, k);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return def;
  }
  v = lua_tonumberx(L, -1, &isnum);
  if (!isnum || !(v >= 0) || v > 9e15)
    luaL_error(L, "%s: expected a non-negative number", k);
  lua_pop(L, 1);
  return v;
}

static uint64_t ms_field(lua_State *L, int t, const char *k, uint64_t def) {
  return (uint64_t)(num_field(L, t, k, (double)def) + 0.5);
}

static const char *str_field(lua_State *L, int t, const char *k) {
  const char *s;
  lua_getfield(L, t, k);
  s = lua_tostring(L, -1); /* still referenced by the table */
  lua_pop(L, 1);
  return s;
}

static char **string_array(lua_State *L, int t, const char *k, int first,
                           const char *zeroth) {
  lua_Integer n, i;
  char **a;
  lua_getfield(L, t, k);
  n = lua_istable(L, -1) ? (lua_Integer)lua_rawlen(L, -1) : 0;
  a = calloc((size_t)(n + 2), sizeof *a);
  if (a == NULL) {
    lua_pop(L, 1);
    return NULL;
  }
  if (first) a[0] = (char *)zeroth;
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    a[first + i - 1] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1);
    if (a[first + i - 1] == NULL) {
      free(a);
      lua_pop(L, 1);
      luaL_error(L, "%s[%d]: expected a string", k, (int)i);
    }
  }
  lua_pop(L, 1);
  return a;
}

static tt_stdio_mode_t stdio_field(lua_State *L, int t, const char *k) {
  const char *s = str_field(L, t, k);
  if (s == NULL || strcmp(s, "inherit") == 0) return TT_STDIO_INHERIT;
  if (strcmp(s, "ignore") == 0) return TT_STDIO_IGNORE;
  return luaL_error(L, "%s: expected \"inherit\" or \"ignore\"", k), 0;
}

/* supervise(opts, handler) -> sup | nil, err.  `opts` is the facade's
 * private table: file, args, env ("K=V" array), cwd, stdout_mode,
 * stderr_mode, stdout_log, stderr_log, instances, restart, max_restarts,
 * within_ms, backoff {initial,max,factor,jitter}, min_uptime,
 * max_memory, memory_interval, heartbeat_interval, heartbeat_timeout,
 * start_timeout, wait_ready, shutdown_message (any value; field
 * has_shutdown_message), shutdown_timeout, kill_timeout, queue_limit,
 * max_message, log_max_size, log_keep. */
int tt_lua_worker_options(lua_State *L, int idx, tt_supervisor_options_t *so,
                          tt_lworkers_t *w, int *encoded) {
  tt_state_t *st = tt_state(L);
  const char *restart;
  int err;

  w->argv = w->env = NULL;
  w->slots = NULL;
  w->nslots = 0;
  w->opts_ref = LUA_NOREF;
  *encoded = 0;
  tt_supervisor_options_init(so);
  lua_getfield(L, idx, "file");
  so->process.file = luaL_checkstring(L, -1);
  lua_pop(L, 1);
  so->process.cwd = str_field(L, idx, "cwd");
  so->process.channel = 1;
  /* Own session: a terminal's Ctrl-C reaches the supervisor only, which
   * ends workers by its shutdown protocol (they still die with it: the
   * runner's parent-death watch), unless the spec says detached. */
  so->process.new_session = 1;
  lua_getfield(L, idx, "detached");
  so->process.detached = lua_toboolean(L, -1);
  lua_pop(L, 1);
  /* (the options table, held by opts_ref, keeps it alive) */
  lua_getfield(L, idx, "zygote");
  so->process.zygote = tt_lua_zygote(L, -1);
  lua_pop(L, 1);
  so->process.stdio[0] = stdio_field(L, idx, "stdin_mode");
  so->process.stdio[1] = stdio_field(L, idx, "stdout_mode");
  so->process.stdio[2] = stdio_field(L, idx, "stderr_mode");
  so->process.channel_options.max_message =
      (size_t)num_field(L, idx, "max_message", 0);
  lua_getfield(L, idx, "json");
  so->process.channel_options.lines = lua_toboolean(L, -1);
  lua_pop(L, 1);
  so->log_path[1] = str_field(L, idx, "stdout_log");
  so->log_path[2] = str_field(L, idx, "stderr_log");
  so->log_max_size = (uint64_t)num_field(L, idx, "log_max_size", 0);
  so->log_keep = (unsigned)num_field(L, idx, "log_keep", 0);
  so->instances = (unsigned)num_field(L, idx, "instances", 1);
  restart = str_field(L, idx, "restart");
  if (restart == NULL || strcmp(restart, "always") == 0)
    so->restart = TT_RESTART_ALWAYS;
  else if (strcmp(restart, "on-failure") == 0)
    so->restart = TT_RESTART_ON_FAILURE;
  else if (strcmp(restart, "never") == 0)
    so->restart = TT_RESTART_NEVER;
  else
    return luaL_error(L, "restart: expected \"always\", \"on-failure\" or "
                         "\"never\"");
  so->max_restarts =
      (unsigned)num_field(L, idx, "max_restarts", so->max_restarts);
  so->within_ms = ms_field(L, idx, "within_ms", so->within_ms);
  lua_getfield(L, idx, "backoff");
  if (lua_istable(L, -1)) {
    int b = lua_gettop(L);
    so->backoff.initial_ms =
        num_field(L, b, "initial", so->backoff.initial_ms);
    so->backoff.max_ms = num_field(L, b, "max", so->backoff.max_ms);
    so->backoff.factor = num_field(L, b, "factor", so->backoff.factor);
    so->backoff.jitter_ms =
        num_field(L, b, "jitter", so->backoff.initial_ms / 4);
  }
  lua_pop(L, 1);
  if (tt_backoff_check(&so->backoff) != 0)
    return luaL_error(L, "backoff: need initial <= max and factor >= 1");
  so->min_uptime_ms = ms_field(L, idx, "min_uptime", so->min_uptime_ms);
  so->max_memory = (uint64_t)num_field(L, idx, "max_memory", 0);
  so->memory_interval_ms =
      ms_field(L, idx, "memory_interval", so->memory_interval_ms);
  so->heartbeat_interval_ms = ms_field(L, idx, "heartbeat_interval", 0);
  so->heartbeat_timeout_ms = ms_field(L, idx, "heartbeat_timeout", 0);
  so->start_timeout_ms = ms_field(L, idx, "start_timeout", 0);
  so->shutdown_timeout_ms =
      ms_field(L, idx, "shutdown_timeout", so->shutdown_timeout_ms);
  so->kill_timeout_ms =
      ms_field(L, idx, "kill_timeout", so->kill_timeout_ms);
  so->queue_limit = (size_t)num_field(L, idx, "queue_limit", 0);
  so->shutdown_kind = (unsigned)num_field(L, idx, "shutdown_kind", 0);
  if (so->shutdown_kind != 0 && so->shutdown_kind != TT_FRAME_MESSAGE &&
      so->shutdown_kind != TT_FRAME_CONTROL)
    return luaL_error(L, "shutdown_kind: a message or control frame expected");
  lua_getfield(L, idx, "wait_ready");
  so->wait_ready = lua_toboolean(L, -1);
  lua_pop(L, 1);

  w->argv = string_array(L, idx, "args", 1, so->process.file);
  w->env = string_array(L, idx, "env", 0, NULL);
  if (w->argv == NULL || w->env == NULL || slot_options(L, idx, w) != 0) {
    tt_lua_workers_free(w);
    return tt_lua_fail(L, UV_ENOMEM, NULL);
  }
  so->process.args = w->argv;
  so->process.env = w->env;

  lua_getfield(L, idx, "has_shutdown_message");
  if (lua_toboolean(L, -1)) {
    lua_getfield(L, idx, "shutdown_message");
    lua_getfield(L, idx, "json");
    err = tt_lua_encode(L, st, lua_gettop(L) - 1, lua_toboolean(L, -1));
    if (err != 0) { /* the caller returns nil, err (which option says) */
      tt_lua_workers_free(w);
      lua_getfield(L, -1, "message");
      return tt_lua_fail(L, TT_ERR_SERIALIZE,
                         lua_pushfstring(L, "option 'shutdown.message': %s",
                                         lua_tostring(L, -1)));
    }
    lua_pop(L, 1);
    so->shutdown_message = st->wbuf.data + TT_FRAME_HEADER_SIZE;
    so->shutdown_message_len = st->wbuf.len - TT_FRAME_HEADER_SIZE;
    *encoded = 1;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 0;
}

static int l_supervise(lua_State *L) {
  tt_supervisor_options_t so;
  tt_state_t *st = tt_state(L);
  tt_lsup_t *c;
  tt_lworkers_t w;
  int err, encoded;

  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if ((err = tt_lua_worker_options(L, 1, &so, &w, &encoded)) != 0)
    return err;
  c = calloc(1, sizeof *c);
  if (c == NULL) {
    if (encoded) tt_lua_encode_done(st);
    tt_lua_workers_free(&w);
    return tt_lua_fail(L, UV_ENOMEM, NULL);
  }
  c->w = w;

  c->s.data = c;
  c->s.on_start = on_start;
  c->s.on_exit = on_exit_cb;
  c->s.on_restart = on_restart;
  c->s.on_give_up = on_give_up;
  c->s.on_frame = on_frame;
  c->s.on_error = on_error;
  c->s.on_reload = on_reload;
  c->s.on_stopped = on_stopped;
  c->s.on_spawn = on_spawn;
  c->s.on_scale = on_scale;
  err = tt_supervisor_start(&st->loop, &c->s, &so); /* copies the message */
  if (encoded) tt_lua_encode_done(st);
  if (err != 0) {
    int which = c->s.log_error;
    tt_lua_workers_free(&c->w);
    free(c);
    return tt_lua_start_failed(L, err, &so, which);
  }
  tt_lobj_new_box(L, &c->o, TT_SUPERVISOR_MT, 2, teardown);
  c->o.json = so.process.channel_options.lines;
  lua_pushvalue(L, 1);
  c->w.opts_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

/* ---- methods ------------------------------------------------------------ */

static tt_lsup_t *check(lua_State *L) {
  return (tt_lsup_t *)tt_lobj_check(L, 1, TT_SUPERVISOR_MT);
}

static unsigned check_id(lua_State *L, int idx) {
  lua_Integer id = luaL_checkinteger(L, idx);
  luaL_argcheck(L, id >= 1 && id <= UINT32_MAX, idx, "bad worker id");
  return (unsigned)id;
}

/* send(id, value, timeout_ms, cb, [kind, frame_id]) -> true | nil, err */
static int m_send(lua_State *L) {
  tt_lsup_t *c = check(L);
  unsigned id = check_id(L, 2);
  lua_Number timeout = luaL_optnumber(L, 4, 0);
  unsigned kind = (unsigned)luaL_optinteger(L, 6, TT_FRAME_MESSAGE);
  uint32_t fid = (uint32_t)luaL_optinteger(L, 7, 0);
  tt_send_req_t *req = NULL;
  tt_state_t *st;
  tt_carried_t cr;
  size_t len;
  int err, fd;
  if ((fd = tt_lua_opt_handle_fd(L, 8)) == -2)
    return tt_lua_fail(L, TT_ERR_CLOSED, "the handle is empty");
  luaL_checkany(L, 3);
  luaL_argcheck(L, timeout >= 0 && timeout < 9e15, 4, "timeout out of range");
  if (!lua_isnoneornil(L, 5)) luaL_checktype(L, 5, LUA_TFUNCTION);
  luaL_argcheck(L, kind >= 1 && kind <= TT_FRAME_CONTROL, 6, "bad kind");
  if (c == NULL) return tt_lua_fail(L, TT_ERR_CLOSED, NULL);
  st = c->o.st;
  if ((err = tt_lua_encode_frame(L, st, 3, c->o.json, kind,
                                 tt_supervisor_max_message(&c->s), &cr)) != 0 ||
      (err = tt_lua_carry_handle(L, st, &cr, fd)) != 0)
    return err;
  len = st->wbuf.len - TT_FRAME_HEADER_SIZE;
  /* a send refused (its size, a full queue, a dead slot) leaves the
   * buffers writable: the refusals come before the freeze */
  if (cr.nbufs > 0 &&
      (err = tt_supervisor_check_send(&c->s, id, kind, len,
                                      cr.nbufs + (cr.handle >= 0))) != 0)
    goto refused;
  if ((err = tt_lua_freeze_carried(L, st, &cr)) != 0) return err;
  if (!lua_isnoneornil(L, 5)) {
    if ((req = malloc(sizeof *req)) == NULL) {
      tt_lua_encode_done(st);
      return tt_lua_fail(L, UV_ENOMEM, NULL);
    }
    req->o = &c->o;
    lua_pushvalue(L, 5);
    req->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  err = tt_supervisor_send_fds(&c->s, id, kind, fid,
                               st->wbuf.data + TT_FRAME_HEADER_SIZE, len,
                               cr.fds, cr.nfds, (uint64_t)(timeout + 0.5),
                               req ? tt_lua_on_sent : NULL, req);
  if (err != 0 && req != NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, req->ref);
    free(req);
  }
refused:
  tt_lua_encode_done(st);
  if (err != 0) {
    if (err == TT_ERR_SERIALIZE)
      return tt_lua_too_large(L, "message", len, tt_supervisor_max_message(&c->s));
    if (err == UV_ENOTSUP)
      return tt_lua_fail(L, err, "a supervisor cannot send handles to JSON "
                                 "(Node) workers yet");
    return tt_lua_fail(L, err, NULL);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* running(id) -> whether slot id's worker is RUNNING (not starting,
 * stopping or down): cheap, for a cluster choosing where a connection
 * goes. */
static int m_running(lua_State *L) {
  tt_lsup_t *c = check(L);
  unsigned id = check_id(L, 2);
  lua_pushboolean(L, c != NULL &&
                         tt_supervisor_state(&c->s, id) == TT_WORKER_RUNNING);
  return 1;
}

/* answer(serial, frame_id, value, is_fault, automatic): the reply to a
 * request, on the channel of the very process that asked. */
static int m_answer(lua_State *L) {
  tt_lsup_t *c = check(L);
  lua_Integer serial = luaL_checkinteger(L, 2);
  return tt_lua_answer(
      L, c ? &c->o : NULL,
      c ? tt_supervisor_worker_channel(&c->s, (uint64_t)serial) : NULL, 3);
}

/* take_handle(): during a "message" event from a JSON worker, the
 * descriptor its NODE_HANDLE line came with, or nil. */
static int m_take_handle(lua_State *L) {
  tt_lsup_t *c = check(L);
  return tt_lua_take_handle(L, c ? c->frame_ch : NULL);
}

static int m_kill(lua_State *L) {
  tt_lsup_t *c = check(L);
  unsigned id = check_id(L, 2);
  const char *name = luaL_optstring(L, 3, "SIGTERM");
  int sig = tt_signal_number(name), err;
  if (sig == 0) return luaL_argerror(L, 3, "unknown signal name");
  if (c == NULL) return tt_lua_fail(L, TT_ERR_CLOSED, NULL);
  if ((err = tt_supervisor_kill(&c->s, id, sig)) != 0)
    return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

void tt_lua_push_worker_info(lua_State *L, const tt_worker_info_t *in) {
  lua_createtable(L, 0, 10);
  if (in->pid != 0) {
    lua_pushinteger(L, in->pid);
    lua_setfield(L, -2, "pid");
    lua_pushinteger(L, (lua_Integer)in->uptime_ms);
    lua_setfield(L, -2, "uptime");
  }
  lua_pushstring(L, tt_worker_state_name(in->state));
  lua_setfield(L, -2, "state");
  lua_pushinteger(L, in->restarts);
  lua_setfield(L, -2, "restarts");
  if (in->rss > 0) {
    lua_pushinteger(L, (lua_Integer)in->rss);
    lua_setfield(L, -2, "rss");
  }
  if (in->heap >= 0) {
    lua_pushinteger(L, (lua_Integer)in->heap);
    lua_setfield(L, -2, "lua_heap");
  }
}

/* info(id) -> {pid, state, restarts, uptime, rss, lua_heap, queued,
 * last_reason, last_code, last_signal} | nil, err */
static int m_info(lua_State *L) {
  tt_lsup_t *c = check(L);
  unsigned id = check_id(L, 2);
  tt_worker_info_t in;
  int err;
  if (c == NULL) return tt_lua_fail(L, TT_ERR_CLOSED, NULL);
  if ((err = tt_supervisor_info(&c->s, id, &in)) != 0)
    return tt_lua_fail(L, err, NULL);
  tt_lua_push_worker_info(L, &in);
  lua_pushinteger(L, (lua_Integer)in.queued);
  lua_setfield(L, -2, "queued");
  if (in.last_reason != TT_EXIT_NONE) {
    lua_pushstring(L, tt_exit_reason_name(in.last_reason));
    lua_setfield(L, -2, "last_reason");
    if (in.last_signal != 0) {
      push_signal(L, in.last_signal);
      lua_setfield(L, -2, "last_signal");
    } else {
      lua_pushinteger(L, (lua_Integer)in.last_status);
      lua_setfield(L, -2, "last_code");
    }
  }
  return 1;
}

static int result(lua_State *L, int err) {
  if (err != 0) return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_reload(lua_State *L) {
  tt_lsup_t *c = check(L);
  return result(L, c ? tt_supervisor_reload(&c->s) : TT_ERR_CLOSED);
}

static int m_restart(lua_State *L) {
  tt_lsup_t *c = check(L);
  unsigned id = check_id(L, 2);
  return result(L, c ? tt_supervisor_restart(&c->s, id) : TT_ERR_CLOSED);
}

/* Per-slot options for slots up to n: slots[id] = {fds, handshake} (a
 * cluster's sockets for the slots it adds), each table stored in the
 * option table's `slots`, which keeps its strings alive.  0 or UV_ENOMEM
 * (what was set stays: the slots are not running yet). */
static int add_slots(lua_State *L, tt_lsup_t *c, int idx, unsigned n) {
  tt_lworkers_t *w = &c->w;
  if (n > w->nslots) {
    tt_lslot_t *a = realloc(w->slots, n * sizeof *a);
    if (a == NULL) return UV_ENOMEM;
    memset(a + w->nslots, 0, (n - w->nslots) * sizeof *a);
    w->slots = a;
    w->nslots = n;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->opts_ref);
  if (lua_getfield(L, -1, "slots") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "slots");
  }
  for (unsigned id = 1; id <= n; id++) {
    if (lua_rawgeti(L, idx, id) != LUA_TTABLE) {
      lua_pop(L, 1);
      continue;
    }
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, id); /* kept: its strings are the core's now */
    if (slot_option(L, &w->slots[id - 1]) != 0) {
      lua_pop(L, 3);
      return UV_ENOMEM;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return 0;
}

/* scale(n, [slots]) -> true | nil, err; the "scale" event follows (see
 * tt_supervisor_scale). */
static int m_scale(lua_State *L) {
  tt_lsup_t *c = check(L);
  lua_Integer n = luaL_checkinteger(L, 2);
  int err;
  luaL_argcheck(L, n >= 1 && n <= TT_SUP_MAX_INSTANCES, 2,
                "worker count out of range");
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  if (c == NULL) return tt_lua_fail(L, TT_ERR_CLOSED, NULL);
  if (!lua_isnoneornil(L, 3) && (err = add_slots(L, c, 3, (unsigned)n)) != 0)
    return tt_lua_fail(L, err, NULL);
  return result(L, tt_supervisor_scale(&c->s, (unsigned)n));
}

/* instances() -> the slots that exist: the size asked for, or more while a
 * removed slot's worker is still stopping. */
static int m_instances(lua_State *L) {
  tt_lsup_t *c = check(L);
  lua_pushinteger(L, c ? (lua_Integer)tt_supervisor_instances(&c->s) : 0);
  return 1;
}

static int m_stop(lua_State *L) {
  tt_lsup_t *c = check(L);
  if (c != NULL) tt_supervisor_stop(&c->s);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_hurry(lua_State *L) {
  tt_lsup_t *c = check(L);
  return result(L, c ? tt_supervisor_hurry(&c->s) : TT_ERR_CLOSED);
}

static int m_reopen_logs(lua_State *L) {
  tt_lsup_t *c = check(L);
  return result(L, c ? tt_supervisor_reopen_logs(&c->s) : TT_ERR_CLOSED);
}

static int m_tostring(lua_State *L) {
  tt_box_t *box = luaL_checkudata(L, 1, TT_SUPERVISOR_MT);
  tt_lsup_t *c = (tt_lsup_t *)box->o;
  if (c == NULL || c->o.closing)
    lua_pushliteral(L, "tether.supervisor (stopped)");
  else
    lua_pushfstring(L, "tether.supervisor (%d workers)",
                    (int)tt_supervisor_instances(&c->s));
  return 1;
}

void tt_open_supervisor(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"send", m_send},       {"answer", m_answer},
      {"take_handle", m_take_handle},
      {"kill", m_kill},       {"info", m_info},
      {"reload", m_reload},   {"restart", m_restart},
      {"stop", m_stop},       {"reopen_logs", m_reopen_logs},
      {"hurry", m_hurry},     {"running", m_running},
      {"scale", m_scale},     {"instances", m_instances},
      {NULL, NULL}};
  tt_lobj_class(L, TT_SUPERVISOR_MT, methods, m_tostring);
  lua_pushcfunction(L, l_supervise);
  lua_setfield(L, -2, "supervise");
}
