/*
 * tether.timer and tether.signal handles: a Lua function run after a delay,
 * periodically, or on a signal.  stop() is idempotent; a one-shot timer is
 * closed as it fires, so its callback may call stop() harmlessly.
 */
#include <signal.h>
#include <stdlib.h>

#include "binding.h"
#include "tt_error.h"
#include "tt_process.h"

typedef struct {
  tt_lobj_t o;
  union {
    uv_handle_t handle;
    uv_timer_t timer;
    uv_signal_t signal;
  } h;
  int oneshot;
  int sigint; /* a SIGINT watcher: counted in st->sigint_watchers */
} tt_ltimer_t;

static void on_closed(uv_handle_t *h) { tt_lobj_closed(h->data); }

static void teardown(tt_lobj_t *o) {
  tt_ltimer_t *t = (tt_ltimer_t *)o;
  if (t->sigint) {
    t->sigint = 0;
    o->st->sigint_watchers--;
  }
  if (!uv_is_closing(&t->h.handle)) uv_close(&t->h.handle, on_closed);
}

static void fire(tt_ltimer_t *t, int arg) {
  lua_State *L = tt_lobj_begin(&t->o, NULL);
  if (L == NULL) return;
  if (t->oneshot) {
    t->o.closing = 1;
    teardown(&t->o);
  }
  if (arg) {
    lua_pushstring(L, tt_signal_name(arg));
    tt_call(t->o.st, L, 1);
  } else {
    tt_call(t->o.st, L, 0);
  }
}

static void on_timer(uv_timer_t *h) { fire(h->data, 0); }
static void on_signal(uv_signal_t *h, int signum) { fire(h->data, signum); }

static tt_ltimer_t *new_handle(lua_State *L, const char *mt, int fn_idx) {
  tt_ltimer_t *t;
  luaL_checktype(L, fn_idx, LUA_TFUNCTION);
  t = calloc(1, sizeof *t);
  if (t == NULL) luaL_error(L, "out of memory");
  t->h.handle.data = t;
  tt_lobj_new_box(L, &t->o, mt, fn_idx, teardown);
  return t;
}

/* timer(ms, repeat_ms, fn): repeat_ms 0 for a one-shot timer. */
static int l_timer(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  lua_Integer rep = luaL_optinteger(L, 2, 0);
  tt_ltimer_t *t;
  luaL_argcheck(L, ms >= 0, 1, "negative delay");
  luaL_argcheck(L, rep >= 0, 2, "negative interval");
  t = new_handle(L, TT_TIMER_MT, 3);
  uv_timer_init(&t->o.st->loop, &t->h.timer);
  t->oneshot = rep == 0;
  /* the delay counts from now, even after long synchronous work */
  uv_update_time(&t->o.st->loop);
  uv_timer_start(&t->h.timer, on_timer, (uint64_t)ms, (uint64_t)rep);
  return 1;
}

static int l_signal(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  int signum = tt_signal_number(name);
  tt_ltimer_t *t;
  int err;
  if (signum == 0) return luaL_argerror(L, 1, "unknown signal name");
  t = new_handle(L, TT_SIGNAL_MT, 2);
  uv_signal_init(&t->o.st->loop, &t->h.signal);
  if ((err = uv_signal_start(&t->h.signal, on_signal, signum)) != 0) {
    t->o.closing = 1;
    teardown(&t->o);
    return tt_lua_fail(L, err, NULL);
  }
  if (signum == SIGINT) { /* the program handles Ctrl-C itself */
    t->sigint = 1;
    t->o.st->sigint_watchers++;
  }
  return 1;
}

static int timer_stop(lua_State *L) {
  return tt_lobj_close_method(L, TT_TIMER_MT);
}
static int signal_stop(lua_State *L) {
  return tt_lobj_close_method(L, TT_SIGNAL_MT);
}

static int unref(lua_State *L, const char *mt) {
  tt_ltimer_t *t = (tt_ltimer_t *)tt_lobj_check(L, 1, mt);
  if (t != NULL) uv_unref(&t->h.handle);
  lua_settop(L, 1);
  return 1;
}

static int timer_unref(lua_State *L) { return unref(L, TT_TIMER_MT); }
static int signal_unref(lua_State *L) { return unref(L, TT_SIGNAL_MT); }

static int active(lua_State *L, const char *mt) {
  lua_pushboolean(L, tt_lobj_check(L, 1, mt) != NULL);
  return 1;
}

static int timer_active(lua_State *L) { return active(L, TT_TIMER_MT); }
static int signal_active(lua_State *L) { return active(L, TT_SIGNAL_MT); }

static int tostring(lua_State *L) {
  tt_box_t *box = lua_touserdata(L, 1);
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "__name");
  lua_pushfstring(L, "%s (%s)", lua_tostring(L, -1),
                  box->o && !box->o->closing ? "active" : "stopped");
  return 1;
}

static void new_class(lua_State *L, const char *mt, lua_CFunction stopf,
                      lua_CFunction unreff, lua_CFunction activef) {
  const luaL_Reg methods[] = {{"stop", stopf},
                              {"unref", unreff},
                              {"active", activef},
                              {NULL, NULL}};
  tt_lobj_class(L, mt, methods, tostring);
}

void tt_open_timer(lua_State *L) {
  new_class(L, TT_TIMER_MT, timer_stop, timer_unref, timer_active);
  new_class(L, TT_SIGNAL_MT, signal_stop, signal_unref, signal_active);
  lua_pushcfunction(L, l_timer);
  lua_setfield(L, -2, "timer");
  lua_pushcfunction(L, l_signal);
  lua_setfield(L, -2, "signal");
}
