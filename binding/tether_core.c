/*
 * tether.core: the module entry point, the loop, and the one place every Lua
 * callback is run from (tt_call).
 *
 * The loop lives in a userdata kept in the registry; its __gc tears every
 * live object down and runs the loop until libuv has closed them all, so a
 * Lua state can be closed at any moment without leaks or dangling handles.
 * No callback runs into Lua once that has begun.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "tt_handshake.h"
#include "binding.h"
#include "tt_error.h"
#include "tt_notify.h"
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
  /* no ref yet: a raise below leaves nothing to release by mistake */
  o->self_ref = o->handler_ref = o->listener_ref = o->request_ref = LUA_NOREF;
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
  tt_box_t *box;
  /* A method (tt_lobj_class) holds its class's metatable as upvalue 1:
   * comparing with it spares luaL_checkudata's lookup by name, on every
   * send.  Anything else takes the full check, and its error. */
  if ((box = lua_touserdata(L, idx)) != NULL && lua_getmetatable(L, idx)) {
    int mine = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (mine) return box->o == NULL || box->o->closing ? NULL : box->o;
  }
  box = luaL_checkudata(L, idx, mt);
  if (box->o == NULL || box->o->closing) return NULL;
  return box->o;
}

int tt_lobj_close_method(lua_State *L, const char *mt) {
  tt_lobj_t *o = tt_lobj_check(L, 1, mt);
  if (o != NULL) {
    o->closing = 1;
    o->teardown(o);
  }
  return 0;
}

void tt_lobj_release(tt_lobj_t *o) {
  /* The state may be closing: its registry is still valid until the state
   * userdata's __gc has finished, which is what calls us then. */
  lua_State *L = o->st->L;
  luaL_unref(L, LUA_REGISTRYINDEX, o->handler_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, o->self_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, o->listener_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, o->request_ref);
  o->handler_ref = o->self_ref = o->listener_ref = o->request_ref = LUA_NOREF;
}

void tt_lobj_closed(tt_lobj_t *o) {
  o->closed = 1;
  if (!o->st->closing) tt_lobj_release(o);
  o->prev->next = o->next;
  o->next->prev = o->prev;
  o->next = o->prev = o;
  if (o->box_gone) free(o);
}

/* Boxes are pinned while active, so an active box is collected only when
 * the Lua state closes (the end of a script, os.exit(code, true)): what
 * every channel still has queued is delivered first, all in parallel,
 * before the first object goes. */
static void flush_at_exit(tt_state_t *st) {
  size_t left;
  if (st->exit_flushed) return;
  st->exit_flushed = 1;
  /* what is left is told, as os.exit and tether.exit tell it: never
   * dropped silently */
  if ((left = tt_flush_all(st)) > 0)
    fprintf(stderr,
            "tether: exiting with %zu bytes of queued messages not delivered "
            "(a peer did not read them within the flush timeout)\n",
            left);
}

static int lobj_gone(lua_State *L, int closing_scope) {
  tt_box_t *box = lua_touserdata(L, 1);
  tt_lobj_t *o = box ? box->o : NULL;
  if (o == NULL) return 0;
  if (!o->closing) {
    if (!closing_scope)
      flush_at_exit(o->st);
    else if (o->ch != NULL && tt_channel_queued(o->ch) > 0) /* <close> */
      tt_channel_flush_sync(o->ch, (int)tt_channel_flush_timeout(o->ch));
  }
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

int tt_lobj_gc(lua_State *L) { return lobj_gone(L, 0); }

static int lobj_close(lua_State *L) { return lobj_gone(L, 1); }

void tt_lobj_class(lua_State *L, const char *mt, const luaL_Reg *methods,
                   lua_CFunction tostring) {
  luaL_newmetatable(L, mt);
  lua_newtable(L);
  lua_pushvalue(L, -2); /* each method's upvalue 1 (tt_lobj_check) */
  luaL_setfuncs(L, methods, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, tt_lobj_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, lobj_close);
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

/* Message handler: keeps the error value as it was raised (a number stays
 * a number) and adds a traceback beside it. */
static int msgh(lua_State *L) {
  const char *msg = NULL;
  if (lua_type(L, 1) == LUA_TSTRING)
    msg = lua_tostring(L, 1);
  else if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
    msg = lua_tostring(L, -1);
  else if (lua_type(L, 1) == LUA_TNUMBER)
    msg = luaL_tolstring(L, 1, NULL); /* a copy: the value itself stays */
  else
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
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

/* The errors raised by callbacks wait in a queue (a registry table) for
 * run() to raise them, one per call, in order: none is dropped, however
 * many callbacks of one iteration raised. */
static void stash_error(tt_state_t *st, lua_State *L, int first) {
  if (st->errors_ref == LUA_NOREF) {
    lua_newtable(L);
    st->errors_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, st->errors_ref);
  lua_insert(L, -2);
  if (first) { /* an interrupt overtakes what is waiting */
    lua_rawseti(L, -2, --st->errors_head);
  } else {
    lua_rawseti(L, -2, ++st->errors_tail);
  }
  lua_pop(L, 1);
  uv_stop(&st->loop);
}

/* Pops the oldest stashed {err, traceback} onto the stack: 1, or 0 when
 * none waits. */
static int pop_error(tt_state_t *st, lua_State *L) {
  if (st->errors_head > st->errors_tail) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, st->errors_ref);
  lua_rawgeti(L, -1, st->errors_head);
  lua_pushnil(L);
  lua_rawseti(L, -3, st->errors_head++);
  lua_remove(L, -2);
  if (st->errors_head > st->errors_tail) st->errors_head = 1, st->errors_tail = 0;
  return 1;
}

/* ---- Ctrl-C ---------------------------------------------------------------
 * lua5.4 catches SIGINT with a hook that raises "interrupted!" in whatever
 * Lua code runs next: inside run() that may be a decoder or a callback,
 * where it would pass for a protocol error or be caught by an "uncaught"
 * handler.  While the loop runs, tether takes SIGINT over instead (unless
 * the program handles it with tether.on_signal, or it is ignored or left to
 * its default): the signal raises "interrupted!" the same way, but wherever
 * it surfaces it is recognised and ends run() with that error, as a Lua
 * script ends on Ctrl-C.  A second Ctrl-C kills the process, as under
 * lua.c. */

static tt_state_t *volatile sigint_target;

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

static void on_sigint(int sig) {
  tt_state_t *st = sigint_target;
  struct sigaction dfl;
  (void)sig;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGINT, &dfl, NULL);
  if (st == NULL) return;
  st->interrupted = 1;
  lua_sethook(st->L, interrupt_hook,
              LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  uv_async_send(&st->interrupt_async); /* async-signal-safe */
}

int tt_interrupted(tt_state_t *st) {
  lua_State *L = st->L;
  if (!st->interrupted) return 0;
  if (!st->interrupt_stashed) {
    st->interrupt_stashed = 1;
    if (lua_gethook(L) == interrupt_hook) lua_sethook(L, NULL, 0, 0);
    lua_createtable(L, 2, 0);
    lua_pushliteral(L, "interrupted!");
    lua_rawseti(L, -2, 1);
    /* as under lua5.4: the message alone (lua.c adds where run() was) */
    lua_pushliteral(L, "interrupted!");
    lua_rawseti(L, -2, 2);
    stash_error(st, L, 1);
  }
  return 1;
}

static void on_interrupt_async(uv_async_t *h) { tt_interrupted(h->data); }

static int interrupt_install(tt_state_t *st) {
  struct sigaction cur, ours;
  if (st->sigint_watchers > 0 || sigint_target != NULL) return 0;
  if (sigaction(SIGINT, NULL, &cur) != 0) return 0;
  if (!(cur.sa_flags & SA_SIGINFO) &&
      (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN))
    return 0;
  st->sigint_saved = cur;
  memset(&ours, 0, sizeof ours);
  ours.sa_handler = on_sigint;
  sigemptyset(&ours.sa_mask);
  sigint_target = st;
  sigaction(SIGINT, &ours, NULL);
  return 1;
}

static void interrupt_uninstall(tt_state_t *st, int installed) {
  struct sigaction cur;
  if (!installed) return;
  sigint_target = NULL;
  /* put lua.c's handler back, unless the program took SIGINT meanwhile */
  if (sigaction(SIGINT, NULL, &cur) == 0 && !(cur.sa_flags & SA_SIGINFO) &&
      (cur.sa_handler == on_sigint ||
       (st->interrupted && cur.sa_handler == SIG_DFL)))
    sigaction(SIGINT, &st->sigint_saved, NULL);
  if (lua_gethook(st->L) == interrupt_hook) lua_sethook(st->L, NULL, 0, 0);
}

static void route_error(tt_state_t *st, lua_State *L) {
  /* Ctrl-C: not the program's error, and not for an "uncaught" handler */
  if (st->interrupted) {
    lua_rawgeti(L, -1, 1);
    if (lua_type(L, -1) == LUA_TSTRING &&
        strcmp(lua_tostring(L, -1), "interrupted!") == 0) {
      lua_pop(L, 2);
      tt_interrupted(st);
      return;
    }
    lua_pop(L, 1);
  }
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
  stash_error(st, L, 0);
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

/* box(v) -> {v, tostring(v)}: for an error msgh did not see */
static int box_error(lua_State *L) {
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  luaL_tolstring(L, 1, NULL);
  lua_rawseti(L, -3, 2);
  lua_pop(L, 1);
  return 1;
}

int tt_pcall(tt_state_t *st, lua_State *L, int nargs) {
  int base = lua_gettop(L) - nargs; /* the function */
  int rc;
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  rc = lua_pcall(L, nargs, 0, base);
  if (rc == LUA_OK) {
    lua_remove(L, base);
    return rc;
  }
  /* Lua calls no message handler for a memory error (and an error in the
   * handler is a string too): the {err, traceback} box everyone after
   * expects is made here, or is the one made at start */
  if (lua_type(L, -1) != LUA_TTABLE) {
    if (rc == LUA_ERRMEM) {
      lua_pop(L, 1);
      lua_rawgeti(L, LUA_REGISTRYINDEX, st->nomem_ref);
    } else {
      lua_pushcfunction(L, box_error);
      lua_insert(L, -2);
      if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        lua_pop(L, 1);
        lua_rawgeti(L, LUA_REGISTRYINDEX, st->nomem_ref);
      }
    }
  }
  lua_replace(L, base); /* the box goes where msgh was */
  return rc;
}

void tt_route_error(tt_state_t *st, lua_State *L) { route_error(st, L); }

int tt_call(tt_state_t *st, lua_State *L, int nargs) {
  int rc = tt_pcall(st, L, nargs);
  if (rc != LUA_OK) route_error(st, L);
  return rc;
}

/* ---- loop ---------------------------------------------------------------- */

/* The callback's part of a traceback: "msg\nstack traceback:\n\tf1\n\t..."
 * becomes "msg\n\tf1\n\t..." without the frames from run() outwards,
 * which whoever catches the error (lua.c's handler) adds itself: one
 * traceback, printed once. */
static void push_callback_traceback(lua_State *L, const char *tb) {
  const char *frames = strstr(tb, "\nstack traceback:\n");
  const char *end;
  luaL_Buffer b;
  if (frames == NULL) {
    lua_pushstring(L, tb);
    return;
  }
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, tb, (size_t)(frames - tb));
  frames += strlen("\nstack traceback:");
  /* up to the loop's entry: [C]: in function 'tether.run' (or core.run) */
  end = strstr(frames, "\n\t[C]: in function 'tether.");
  if (end == NULL) end = frames + strlen(frames);
  luaL_addlstring(&b, frames, (size_t)(end - frames));
  luaL_pushresult(&b);
}

/* Raises the {err, traceback} box on the stack top as run() reports a
 * callback's error. */
static int raise_stashed(lua_State *L) {
  lua_rawgeti(L, -1, 1);
  if (lua_type(L, -1) == LUA_TSTRING) {
    lua_rawgeti(L, -2, 2);
    push_callback_traceback(L, lua_tostring(L, -1));
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

static int l_run(lua_State *L) {
  static const char *const modes[] = {"default", "once", "nowait", NULL};
  static const uv_run_mode uvmodes[] = {UV_RUN_DEFAULT, UV_RUN_ONCE,
                                        UV_RUN_NOWAIT};
  tt_state_t *st = tt_state(L);
  int mode = luaL_checkoption(L, 1, "default", modes);
  lua_State *prev = st->L;
  int more, sigint;
  if (st->running) return luaL_error(L, "tether.run: the loop is already running");
  /* errors raised in an earlier iteration come out first, one per run() */
  if (pop_error(st, L)) return raise_stashed(L);
  st->running = 1;
  st->L = L;
  sigint = interrupt_install(st);
  more = uv_run(&st->loop, uvmodes[mode]);
  interrupt_uninstall(st, sigint);
  st->L = prev;
  st->running = 0;
  if (st->interrupted && !st->interrupt_stashed) tt_interrupted(st);
  if (pop_error(st, L)) {
    if (is_exit_request(L) && st->exit_ref != LUA_NOREF) {
      /* tether.exit() in a callback: the loop is unwound, now end */
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, LUA_REGISTRYINDEX, st->exit_ref);
      lua_getfield(L, -2, "code");
      lua_call(L, 1, 0); /* does not return */
      lua_pop(L, 1);
    }
    lua_rawgeti(L, -1, 1);
    if (st->interrupt_stashed && lua_type(L, -1) == LUA_TSTRING &&
        strcmp(lua_tostring(L, -1), "interrupted!") == 0)
      st->interrupted = st->interrupt_stashed = 0;
    lua_pop(L, 1);
    return raise_stashed(L);
  }
  if (mode == 0) return 0; /* run(): nothing, once no work is left */
  /* uv_run counts a handle still closing (a timer that just fired its last
   * time) as work; the program asks whether its own work is left */
  more = more && (st->loop.active_handles > 0 ||
                  st->loop.active_reqs.count > 0);
  lua_pushboolean(L, more);
  return 1;
}

/* set_exit(fn): fn(code) ends the process (the facade's exit) */
static int l_set_exit(lua_State *L) {
  tt_state_t *st = tt_state(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, st->exit_ref);
  lua_pushvalue(L, 1);
  st->exit_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static int l_stop(lua_State *L) {
  uv_stop(&tt_state(L)->loop);
  return 0;
}

/* The loop's clock (ms), brought up to date: it agrees with the deadlines
 * of timers armed from now on, and moves during long synchronous work. */
static int l_now(lua_State *L) {
  uv_loop_t *loop = &tt_state(L)->loop;
  uv_update_time(loop);
  lua_pushinteger(L, (lua_Integer)uv_now(loop));
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

static void min_due(uv_handle_t *h, void *arg) {
  int64_t *best = arg;
  if (h->type == UV_TIMER && uv_is_active(h) && !uv_is_closing(h)) {
    uint64_t due = uv_timer_get_due_in((uv_timer_t *)h);
    int64_t d = due > INT32_MAX ? INT32_MAX : (int64_t)due;
    if (*best < 0 || d < *best) *best = d;
  }
}

/* ms until tether has something to do (-1: nothing at all, 0: now): what
 * an embedding loop waits at most, polling tether.fd(), before it calls
 * run("nowait").  libuv's own answer is 0 whenever no handle keeps the
 * loop alive, which would make an embedding spin. */
static int l_timeout(lua_State *L) {
  uv_loop_t *loop = &tt_state(L)->loop;
  int64_t t = uv_backend_timeout(loop);
  if (t == 0 && !uv_loop_alive(loop)) {
    /* only unreferenced timers can be due */
    t = -1;
    uv_update_time(loop);
    uv_walk(loop, min_due, &t);
  }
  lua_pushinteger(L, (lua_Integer)t);
  return 1;
}

/* handshake() -> {channel = bool, json = bool, max_message = n,
 * concurrency = n, detached = bool, parent_pid = n, cluster = s}: what the parent told
 * us through the environment (tt_handshake.h), read once by the core. */
static int l_handshake(lua_State *L) {
  const tt_handshake_t *h = tt_handshake();
  lua_createtable(L, 0, 6);
  lua_pushboolean(L, h->named);
  lua_setfield(L, -2, "channel");
  lua_pushboolean(L, h->lines);
  lua_setfield(L, -2, "json");
  lua_pushinteger(L, (lua_Integer)h->max_message);
  lua_setfield(L, -2, "max_message");
  lua_pushinteger(L, (lua_Integer)h->concurrency);
  lua_setfield(L, -2, "concurrency");
  lua_pushboolean(L, h->detached);
  lua_setfield(L, -2, "detached");
  lua_pushinteger(L, (lua_Integer)h->parent_pid);
  lua_setfield(L, -2, "parent_pid");
  if (h->cluster != NULL) {
    lua_pushstring(L, h->cluster);
    lua_setfield(L, -2, "cluster");
  }
  return 1;
}

static int l_pid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)uv_os_getpid());
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
  /* refused, not clamped: a limit set is the limit in force */
  if (d < 1 || d > TT_CODEC_DEPTH_CAP)
    return luaL_argerror(L, 1, lua_pushfstring(L, "depth must be 1 to %d",
                                               TT_CODEC_DEPTH_CAP));
  st->max_depth = (int)d;
  return 0;
}

/* ---- exit ------------------------------------------------------------------ */

static uint64_t ms_now(void) { return uv_hrtime() / 1000000u; }

size_t tt_flush_all(tt_state_t *st) {
  uint64_t start = ms_now(), deadline = start;
  size_t left;
  for (tt_lobj_t *o = st->objects.next; o != &st->objects; o = o->next) {
    int64_t t;
    if (o->ch == NULL || tt_channel_queued(o->ch) == 0) continue;
    t = tt_channel_flush_timeout(o->ch);
    if (t < 0) t = INT32_MAX; /* "no limit": a day is plenty */
    if (start + (uint64_t)t > deadline) deadline = start + (uint64_t)t;
  }
  for (;;) {
    struct pollfd fds[64];
    nfds_t n = 0;
    uint64_t now;
    left = 0;
    for (tt_lobj_t *o = st->objects.next; o != &st->objects; o = o->next) {
      if (o->ch == NULL || tt_channel_queued(o->ch) == 0) continue;
      if (tt_channel_flush_sync(o->ch, 0) != UV_ETIMEDOUT) continue;
      left += tt_channel_queued(o->ch);
      if (n < sizeof fds / sizeof fds[0]) {
        fds[n].fd = tt_channel_fd(o->ch);
        fds[n].events = POLLOUT;
        fds[n].revents = 0;
        n++;
      }
    }
    now = ms_now();
    if (left == 0 || now >= deadline) break;
    if (poll(fds, n, (int)(deadline - now > 100 ? 100 : deadline - now)) < 0 &&
        errno != EINTR)
      break;
  }
  return left;
}

/* default_sigint(): a forked worker's Ctrl-C is the default one, as an
 * exec'd program's and a zygote's worker's: the signal ends the process,
 * and its parent sees it die of SIGINT.  Under lua5.4 the runner runs
 * inside lua.c's handler, which would make it an "interrupted!" error,
 * reported to the parent as the worker's own failure.  (Ignored stays
 * ignored; tether.on_signal("SIGINT") still takes it over.) */
static int l_default_sigint(lua_State *L) {
  struct sigaction cur, dfl;
  (void)L;
  if (sigaction(SIGINT, NULL, &cur) != 0) return 0;
  if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_IGN) return 0;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGINT, &dfl, NULL);
  return 0;
}

/* flush_all() -> bytes that could not be written in time */
static int l_flush_all(lua_State *L) {
  tt_state_t *st = tt_state(L);
  st->exit_flushed = 1; /* the process exits next: once is enough */
  lua_pushinteger(L, (lua_Integer)tt_flush_all(st));
  return 1;
}

/* ---- state teardown ------------------------------------------------------ */

static void close_stray(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static int state_gc(lua_State *L) {
  tt_state_t *st = lua_touserdata(L, 1);
  if (st->closing) return 0;
  /* Ending anyway: the parent's death must not signal us midway. */
  tt_process_watch_parent(0, 0);
  /* What the program sent before it ended is delivered first (bounded by
   * the channels' flush timeouts), also when it never ran the loop. */
  flush_at_exit(st);
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

static void on_prime(uv_timer_t *t) { (void)t; }

/* libuv registers its internal watchers (signals, child exits) with the
 * backend on the first iteration; until then uv_backend_timeout() says 0.
 * One empty iteration now makes tether.fd()/timeout() exact from the start
 * for an embedding loop.  No Lua runs here. */
static void prime_loop(uv_loop_t *loop) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, on_prime, 0, 0);
  uv_run(loop, UV_RUN_NOWAIT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
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

/* sd_notify(state) -> true (sent) | false (NOTIFY_SOCKET unset: not under
 * a service manager) | nil, err (core/tt_notify.h) */
static int l_sd_notify(lua_State *L) {
  int r = tt_sd_notify(luaL_checkstring(L, 1));
  if (r < 0) return tt_lua_fail(L, r, NULL);
  lua_pushboolean(L, r);
  return 1;
}

static const luaL_Reg funcs[] = {
    {"parallelism", l_parallelism},
    {"sd_notify", l_sd_notify},
    {"set_json", l_set_json},
    {"run", l_run},
    {"stop", l_stop},
    {"now", l_now},
    {"update_time", l_update_time},
    {"hrtime", l_hrtime},
    {"fd", l_fd},
    {"running", l_running},
    {"pid", l_pid},
    {"handshake", l_handshake},
    {"timeout", l_timeout},
    {"uncaught", l_uncaught},
    {"set_uncaught", l_set_uncaught},
    {"error", l_error},
    {"signal_number", l_signal_number},
    {"signal_name", l_signal_name},
    {"watch_parent", l_watch_parent},
    {"parent_alive", l_parent_alive},
    {"set_max_depth", l_set_max_depth},
    {"flush_all", l_flush_all},
    {"default_sigint", l_default_sigint},
    {"set_exit", l_set_exit},
    {NULL, NULL}};

__attribute__((visibility("default"))) int luaopen_tether_core(lua_State *L) {
  tt_state_t *st;
  /* read the handshake now: a Node.js parent does not say who it is, so
   * it is whoever is our parent when we start */
  (void)tt_handshake();
  lua_rawgetp(L, LUA_REGISTRYINDEX, &state_key);
  if (lua_isnil(L, -1)) {
    int err;
    lua_pop(L, 1);
    st = lua_newuserdatauv(L, sizeof *st, 0);
    memset(st, 0, sizeof *st);
    if ((err = uv_loop_init(&st->loop)) != 0)
      return luaL_error(L, "tether: cannot create the loop: %s",
                        uv_strerror(err));
    st->uncaught_ref = st->errors_ref = st->exit_ref = LUA_NOREF;
    st->errors_head = 1;
    st->errors_tail = 0;
    st->json_encode_ref = st->json_decode_ref = LUA_NOREF;
    st->max_depth = TT_CODEC_DEFAULT_MAX_DEPTH;
    lua_createtable(L, 2, 0);
    lua_pushliteral(L, "not enough memory");
    lua_rawseti(L, -2, 1);
    lua_pushliteral(L, "not enough memory");
    lua_rawseti(L, -2, 2);
    st->nomem_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    st->objects.next = st->objects.prev = &st->objects;
    uv_async_init(&st->loop, &st->interrupt_async, on_interrupt_async);
    st->interrupt_async.data = st;
    uv_unref((uv_handle_t *)&st->interrupt_async);
    prime_loop(&st->loop);
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
  tt_open_handle(L);
  tt_open_acceptor(L);
  tt_open_redis(L);
  tt_open_fs(L);
  tt_open_zygote(L);
  tt_open_buffer(L);
  return 1;
}
