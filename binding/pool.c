/*
 * tether.pool: the core worker pool (core/tt_pool.h) seen from Lua.  Tasks
 * are encoded here, their answers decoded and handed to the task's Lua
 * callback; the facade (lua/tether/pool.lua) adds run/map, progress and
 * the error routing.
 *
 * The box is pinned from start until the pool has stopped and closed; the
 * facade's option table is referenced as long (the core points into it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tt_peer.h"
#include "binding.h"
#include "tt_error.h"
#include "tt_pool.h"

typedef struct {
  tt_lobj_t o;
  tt_pool_t p;
  tt_lworkers_t w;
  tt_channel_t *frame_ch; /* during on_frame: the channel it came on */
} tt_lpool_t;

static tt_lpool_t *of(tt_pool_t *p) { return p->data; }

static void on_freed(tt_pool_t *p) {
  tt_lua_workers_closed(&of(p)->o, &of(p)->w);
}

static void teardown(tt_lobj_t *o) {
  tt_lpool_t *c = (tt_lpool_t *)o;
  if (o->st->closing) /* the loop goes away with the Lua state */
    tt_pool_abandon(&c->p, on_freed);
  else
    tt_pool_close(&c->p, on_freed);
}

/* ---- events -------------------------------------------------------------- */

/* A worker's request: the pool answers none (ERR_NO_HANDLER), on its
 * own, so not if the worker never reads. */
static void refuse_request(tt_lpool_t *c, tt_channel_t *ch, uint32_t id) {
  lua_State *L = c->o.st->L;
  lua_createtable(L, 0, 2);
  lua_pushliteral(L, "ERR_NO_HANDLER");
  lua_setfield(L, -2, "code");
  lua_pushliteral(L, "the pool has no request handler");
  lua_setfield(L, -2, "message");
  if (tt_lua_encode(L, c->o.st, -1, c->o.json) == 0) {
    tt_peer_answer(ch, id, TT_ANSWER_REFUSAL,
                   c->o.st->wbuf.data + TT_FRAME_HEADER_SIZE,
                   c->o.st->wbuf.len - TT_FRAME_HEADER_SIZE);
    tt_lua_encode_done(c->o.st);
    lua_pop(L, 1);
  } else {
    lua_pop(L, 3); /* value, nil, err */
  }
}

static void on_frame(tt_pool_t *p, unsigned id, tt_channel_t *ch,
                     const tt_frame_header_t *h, const char *payload) {
  tt_lpool_t *c = of(p);
  const char *event =
      h->kind == TT_FRAME_MESSAGE ? "message"
      : h->kind == TT_FRAME_CONTROL ? "control" : NULL;
  lua_State *L;
  int rc;
  if (h->kind == TT_FRAME_REQUEST) {
    if (!c->o.st->closing && !c->o.collected) refuse_request(c, ch, h->id);
    return;
  }
  if (event == NULL || (L = tt_lobj_begin(&c->o, event)) == NULL) return;
  c->frame_ch = ch;
  lua_pushinteger(L, id);
  if ((rc = tt_lua_decode_from(
           L, c->o.st, payload, h->len, c->o.json, tt_channel_max_message(ch),
           h->kind == TT_FRAME_MESSAGE && !tt_channel_is_lines(ch) ? ch
                                                                   : NULL)) != 1) {
    /* as for any peer: a frame that does not decode ends that worker's
     * channel with ERR_IPC_PROTOCOL ("error" event), and the pool
     * replaces the worker */
    char why[256];
    snprintf(why, sizeof why, "%s", lua_tostring(L, -1));
    lua_pop(L, 4); /* handler, event, id, why */
    c->frame_ch = NULL;
    if (rc != -2)
      tt_channel_fail(ch, rc == 0 ? TT_ERR_IPC_PROTOCOL : UV_ENOMEM, why);
    return;
  }
  tt_call(c->o.st, L, 3);
  c->frame_ch = NULL;
}

static void on_error(tt_pool_t *p, unsigned id, int err, const char *why) {
  lua_State *L = tt_lobj_begin(&of(p)->o, "error");
  if (L == NULL) return;
  lua_pushinteger(L, id);
  tt_lua_push_error(L, err, why);
  tt_call(of(p)->o.st, L, 3);
}

static void on_give_up(tt_pool_t *p, const char *why) {
  lua_State *L = tt_lobj_begin(&of(p)->o, "give_up");
  if (L == NULL) return;
  lua_pushstring(L, why);
  tt_call(of(p)->o.st, L, 2);
}

static void on_stopped(tt_pool_t *p) {
  tt_lpool_t *c = of(p);
  lua_State *L = tt_lobj_begin(&c->o, "stopped");
  if (L != NULL) tt_call(c->o.st, L, 1);
  if (!c->o.closing) {
    c->o.closing = 1;
    tt_pool_close(&c->p, on_freed);
  }
}

/* ---- tasks --------------------------------------------------------------- */

/* A task's answer: fn(nil, result) or fn(err). */
static void on_task_done(void *arg, int status, unsigned kind,
                         const char *payload, size_t len, tt_channel_t *ch) {
  tt_send_req_t *req = arg;
  tt_state_t *st = req->o->st;
  int json = req->o->json, gone = st->closing || req->o->collected;
  lua_State *L = st->L;
  int top = lua_gettop(L), rc;
  lua_rawgeti(L, LUA_REGISTRYINDEX, req->ref);
  luaL_unref(L, LUA_REGISTRYINDEX, req->ref);
  free(req);
  if (gone) { /* no Lua runs for a collected pool, nor in a closing state */
    lua_settop(L, top);
    return;
  }
  if (status != 0) {
    if (payload != NULL) { /* why, in words */
      tt_lua_push_error(L, status, lua_pushlstring(L, payload, len));
      lua_replace(L, top + 2);
      lua_settop(L, top + 2);
    } else {
      tt_lua_push_error(L, status, NULL);
    }
    tt_call(st, L, 1);
    return;
  }
  /* a result may carry a buffer: the answer's frame is being delivered,
   * its descriptor is the channel's current one */
  if ((rc = tt_lua_decode_from(
           L, st, payload, len, json, ch ? tt_channel_max_message(ch) : 0,
           ch != NULL && kind == TT_FRAME_REPLY && !tt_channel_is_lines(ch)
               ? ch
               : NULL)) != 1) {
    if (rc == -2) { /* Ctrl-C: run() ends */
      lua_settop(L, top);
      return;
    }
    /* an answer that does not decode: the task failed, the worker is
     * broken; say so rather than drop it, and end that worker's channel as
     * for any peer (it is replaced) */
    const char *why = lua_pushfstring(L, "worker answer: %s", lua_tostring(L, -1));
    tt_lua_push_error(L, TT_ERR_IPC_PROTOCOL, why);
    if (ch != NULL) tt_channel_fail(ch, TT_ERR_IPC_PROTOCOL, why);
    lua_replace(L, top + 2);
    lua_settop(L, top + 2);
    tt_call(st, L, 1);
    return;
  }
  if (kind == TT_FRAME_FAULT) {
    tt_lua_fault_error(L);
    tt_call(st, L, 1);
    return;
  }
  lua_pushnil(L);
  lua_insert(L, -2);
  tt_call(st, L, 2);
}

/* ---- start --------------------------------------------------------------- */

static uint64_t opt_u64(lua_State *L, int t, const char *k) {
  lua_Number v;
  int isnum;
  lua_getfield(L, t, k);
  v = lua_isnil(L, -1) ? 0 : lua_tonumberx(L, -1, &isnum);
  if (!lua_isnil(L, -1) && (!isnum || !(v >= 0) || v > 9e15))
    luaL_error(L, "%s: expected a non-negative number", k);
  lua_pop(L, 1);
  return (uint64_t)(v + 0.5);
}

/* pool(opts, handler) -> pool | nil, err.  opts: the worker options of
 * supervise() (instances = size) plus max_queue, timeout, retries,
 * max_tasks_per_worker, max_memory, memory_interval, concurrency. */
static int l_pool(lua_State *L) {
  tt_pool_options_t po;
  tt_state_t *st = tt_state(L);
  tt_lpool_t *c;
  tt_lworkers_t w;
  int err, encoded;

  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  memset(&po, 0, sizeof po);
  if ((err = tt_lua_worker_options(L, 1, &po.workers, &w, &encoded)) != 0)
    return err;
  po.max_queue = (size_t)opt_u64(L, 1, "max_queue");
  po.timeout_ms = opt_u64(L, 1, "timeout");
  po.retries = (unsigned)opt_u64(L, 1, "retries");
  po.max_tasks_per_worker = (unsigned)opt_u64(L, 1, "max_tasks_per_worker");
  po.max_memory = opt_u64(L, 1, "max_memory");
  po.memory_interval_ms = opt_u64(L, 1, "memory_interval");
  po.concurrency = (unsigned)opt_u64(L, 1, "concurrency");
  po.prefetch = (unsigned)opt_u64(L, 1, "prefetch");
  c = calloc(1, sizeof *c);
  if (c == NULL) {
    if (encoded) tt_lua_encode_done(st);
    tt_lua_workers_free(&w);
    return tt_lua_fail(L, UV_ENOMEM, NULL);
  }
  c->w = w;
  c->p.data = c;
  c->p.on_frame = on_frame;
  c->p.on_error = on_error;
  c->p.on_give_up = on_give_up;
  c->p.on_stopped = on_stopped;
  err = tt_pool_start(&st->loop, &c->p, &po);
  if (encoded) tt_lua_encode_done(st);
  if (err != 0) {
    int which = c->p.sup.log_error;
    tt_lua_workers_free(&c->w);
    free(c);
    return tt_lua_start_failed(L, err, &po.workers, which);
  }
  tt_lobj_new_box(L, &c->o, TT_POOL_MT, 2, teardown);
  c->o.json = po.workers.process.channel_options.lines;
  lua_pushvalue(L, 1);
  c->w.opts_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

/* ---- methods ------------------------------------------------------------- */

static tt_lpool_t *check(lua_State *L) {
  return (tt_lpool_t *)tt_lobj_check(L, 1, TT_POOL_MT);
}

/* submit(value, fn) -> true | nil, err; fn(err, result) runs once. */
static int m_submit(lua_State *L) {
  tt_lpool_t *c = check(L);
  tt_send_req_t *req;
  tt_state_t *st;
  tt_carried_t cr;
  size_t len;
  int err;
  luaL_checkany(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (c == NULL) return tt_lua_fail(L, TT_ERR_CLOSED, "pool is closed");
  st = c->o.st;
  if ((err = tt_lua_encode_frame(L, st, 2, c->o.json, TT_FRAME_REQUEST,
                                 tt_pool_max_message(&c->p), &cr)) != 0)
    return err;
  len = st->wbuf.len - TT_FRAME_HEADER_SIZE;
  /* a task refused (too large, a full queue, a closed pool) leaves its
   * buffers writable: the refusals come before the freeze */
  if (cr.nbufs > 0 && (err = tt_pool_check_submit(&c->p, len, cr.nbufs)) != 0)
    goto refused;
  if ((err = tt_lua_freeze_carried(L, st, &cr)) != 0) return err;
  if ((req = malloc(sizeof *req)) == NULL) {
    tt_lua_encode_done(st);
    return tt_lua_fail(L, UV_ENOMEM, NULL);
  }
  req->o = &c->o;
  lua_pushvalue(L, 3);
  req->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  err = tt_pool_submit_fds(&c->p, st->wbuf.data + TT_FRAME_HEADER_SIZE, len,
                           cr.fds, cr.nfds, on_task_done, req);
  if (err != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, req->ref);
    free(req);
  }
refused:
  tt_lua_encode_done(st);
  if (err != 0) {
    if (err == TT_ERR_SERIALIZE)
      return tt_lua_too_large(L, "task", len, tt_pool_max_message(&c->p));
    return tt_lua_fail(L, err, err == TT_ERR_CLOSED ? "pool is closed" : NULL);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* send(id, value) -> true | nil, err: a message to one worker */
static int m_send(lua_State *L) {
  tt_lpool_t *c = check(L);
  lua_Integer id = luaL_checkinteger(L, 2);
  tt_state_t *st;
  tt_carried_t cr;
  size_t len;
  int err;
  luaL_checkany(L, 3);
  luaL_argcheck(L, id >= 1 && id <= UINT32_MAX, 2, "bad worker id");
  if (c == NULL) return tt_lua_fail(L, TT_ERR_CLOSED, NULL);
  st = c->o.st;
  if ((err = tt_lua_encode_frame(L, st, 3, c->o.json, TT_FRAME_MESSAGE,
                                 tt_pool_max_message(&c->p), &cr)) != 0)
    return err;
  len = st->wbuf.len - TT_FRAME_HEADER_SIZE;
  /* (refusals before the buffers are frozen) */
  if (cr.nbufs == 0 ||
      (err = tt_pool_check_send(&c->p, (unsigned)id, len, cr.nbufs)) == 0) {
    if ((err = tt_lua_freeze_carried(L, st, &cr)) != 0) return err;
    err = tt_pool_send_fds(&c->p, (unsigned)id,
                           st->wbuf.data + TT_FRAME_HEADER_SIZE, len, cr.fds,
                           cr.nfds);
  }
  tt_lua_encode_done(st);
  if (err == TT_ERR_SERIALIZE)
    return tt_lua_too_large(L, "message", len, tt_pool_max_message(&c->p));
  if (err != 0) return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* give_up(why) -> true | nil, err */
static int m_give_up(lua_State *L) {
  tt_lpool_t *c = check(L);
  const char *why = luaL_checkstring(L, 2);
  int err = c ? tt_pool_give_up(&c->p, why) : TT_ERR_CLOSED;
  if (err != 0) return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_close(lua_State *L) {
  tt_lpool_t *c = check(L);
  if (c != NULL) tt_pool_drain(&c->p);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_terminate(lua_State *L) {
  tt_lpool_t *c = check(L);
  if (c != NULL) tt_pool_terminate(&c->p);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_stats(lua_State *L) {
  tt_lpool_t *c = check(L);
  tt_pool_stats_t s;
  if (c == NULL) return tt_lua_fail(L, TT_ERR_CLOSED, NULL);
  tt_pool_stats(&c->p, &s);
  lua_createtable(L, 0, 12);
#define F(name)                                                               \
  lua_pushinteger(L, (lua_Integer)s.name);                                    \
  lua_setfield(L, -2, #name);
  F(queued)
  F(running)
  F(submitted)
  F(done)
  F(failed)
  F(retried)
  F(timeouts)
  F(crashes)
  F(recycled)
  F(late)
  F(workers)
#undef F
  return 1;
}

/* info(id) -> {pid, state, restarts, uptime, rss} | nil, err */
static int m_info(lua_State *L) {
  tt_lpool_t *c = check(L);
  lua_Integer id = luaL_checkinteger(L, 2);
  tt_worker_info_t in;
  int err;
  if (c == NULL) return tt_lua_fail(L, TT_ERR_CLOSED, NULL);
  luaL_argcheck(L, id >= 1 && id <= UINT32_MAX, 2, "bad worker id");
  if ((err = tt_pool_info(&c->p, (unsigned)id, &in)) != 0)
    return tt_lua_fail(L, err, NULL);
  tt_lua_push_worker_info(L, &in);
  return 1;
}

/* take_handle(): during a "message" event from a JSON worker, the
 * descriptor its NODE_HANDLE line came with (the facade closes it: pools
 * take no handles), or nil. */
static int m_take_handle(lua_State *L) {
  tt_lpool_t *c = check(L);
  return tt_lua_take_handle(L, c ? c->frame_ch : NULL);
}

static int m_tostring(lua_State *L) {
  tt_box_t *box = luaL_checkudata(L, 1, TT_POOL_MT);
  tt_lpool_t *c = (tt_lpool_t *)box->o;
  if (c == NULL || c->o.closing)
    lua_pushliteral(L, "tether.pool (closed)");
  else
    lua_pushfstring(L, "tether.pool (%d workers)",
                    (int)tt_pool_size(&c->p));
  return 1;
}

void tt_open_pool(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"submit", m_submit}, {"close", m_close}, {"terminate", m_terminate},
      {"send", m_send},     {"give_up", m_give_up},
      {"take_handle", m_take_handle},
      {"stats", m_stats},   {"info", m_info},   {NULL, NULL}};
  tt_lobj_class(L, TT_POOL_MT, methods, m_tostring);
  lua_pushcfunction(L, l_pool);
  lua_setfield(L, -2, "pool");
}
