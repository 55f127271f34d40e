/*
 * A Redis connection (core/tt_redis.h) seen from Lua, for the distributed
 * pools (lua/tether/broker.lua).
 *
 * core.redis(address, {connect_timeout=, reply_timeout=}, fn) -> conn |
 * nil, err.  fn("state", up, err) on every connection change; commands:
 * conn:command({"XADD", key, ...}, block_ms, cb) -> true | nil, err, with
 * cb(err, reply): reply a string, an integer, nil, true ("OK" and other
 * status replies), or an array of those; a Redis error reply is err
 * (ERR_BROKER, Redis's message); ERR_BROKER_DOWN, ERR_TIMEOUT, ERR_CLOSED
 * when no reply came.  conn:close().
 */
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

#include "binding.h"
#include "tt_error.h"
#include "tt_redis.h"

#define TT_REDIS_MT "tether.redis"
#define MAX_ARGS 4096

typedef struct {
  tt_lobj_t o;
  tt_redis_t r;
} tt_lredis_t;

typedef struct {
  tt_lredis_t *c;
  int ref; /* the callback */
} cmd_t;

static void on_closed(tt_redis_t *r) { tt_lobj_closed(&((tt_lredis_t *)r->data)->o); }

static void teardown(tt_lobj_t *o) {
  tt_redis_close(&((tt_lredis_t *)o)->r, on_closed);
}

static void on_state(tt_redis_t *r, int up, int err) {
  tt_lredis_t *c = r->data;
  lua_State *L = tt_lobj_begin(&c->o, "state");
  if (L == NULL) return;
  lua_pushboolean(L, up);
  if (err != 0)
    tt_lua_push_error(L, err, NULL);
  else
    lua_pushnil(L);
  tt_call(c->o.st, L, 3);
}

/* Pushes a reply as a Lua value (depth-limited by Redis itself: replies of
 * the commands we send nest at most 4 deep; guard anyway). */
static void push_reply(lua_State *L, const redisReply *x, int depth) {
  if (depth > 16 || !lua_checkstack(L, 4)) {
    lua_pushnil(L);
    return;
  }
  switch (x->type) {
  case REDIS_REPLY_STRING:
    lua_pushlstring(L, x->str, x->len);
    break;
  case REDIS_REPLY_STATUS:
    lua_pushboolean(L, 1);
    break;
  case REDIS_REPLY_INTEGER:
    lua_pushinteger(L, (lua_Integer)x->integer);
    break;
  case REDIS_REPLY_ARRAY:
    lua_createtable(L, (int)x->elements, 0);
    for (size_t i = 0; i < x->elements; i++) {
      push_reply(L, x->element[i], depth + 1);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  case REDIS_REPLY_ERROR: /* nested (EXEC): as a string */
    lua_pushlstring(L, x->str, x->len);
    break;
  default: /* NIL */
    lua_pushnil(L);
  }
}

static void on_reply(tt_redis_t *r, redisReply *reply, int err, void *arg) {
  cmd_t *k = arg;
  tt_lredis_t *c = k->c;
  tt_state_t *st = c->o.st;
  lua_State *L = st->L;
  int ref = k->ref;
  free(k);
  (void)r;
  if (st->closing || c->o.collected || c->o.closing) {
    /* closed by its owner (or collected): nobody waits for an answer */
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  if (err != 0) {
    tt_lua_push_error(L, err, NULL);
    lua_pushnil(L);
  } else if (reply->type == REDIS_REPLY_ERROR) {
    lua_pushlstring(L, reply->str, reply->len);
    tt_lua_push_error(L, TT_ERR_BROKER, lua_tostring(L, -1));
    lua_remove(L, -2);
    lua_pushnil(L);
  } else {
    lua_pushnil(L);
    push_reply(L, reply, 0);
  }
  tt_call(st, L, 2);
}

static int l_redis(lua_State *L) {
  const char *address = luaL_checkstring(L, 1);
  tt_redis_options_t o;
  tt_lredis_t *c;
  int err;
  memset(&o, 0, sizeof o);
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "connect_timeout");
    o.connect_timeout_ms = (uint64_t)luaL_optinteger(L, -1, 0);
    lua_getfield(L, 2, "reply_timeout");
    o.reply_timeout_ms = (uint64_t)luaL_optinteger(L, -1, 0);
    lua_pop(L, 2);
  }
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if ((c = calloc(1, sizeof *c)) == NULL) return tt_lua_fail(L, UV_ENOMEM, NULL);
  c->r.data = c;
  c->r.on_state = on_state;
  if ((err = tt_redis_start(&tt_state(L)->loop, &c->r, address, &o)) != 0) {
    free(c);
    if (err == UV_EINVAL) {
      lua_pushfstring(L, "bad broker address '%s' (expected redis://HOST:PORT[/DB] "
                         "or unix:PATH[?db=N])", address);
      return tt_lua_fail(L, err, lua_tostring(L, -1));
    }
    return tt_lua_fail(L, err, NULL);
  }
  tt_lobj_new_box(L, &c->o, TT_REDIS_MT, 3, teardown);
  return 1;
}

/* command({arg, ...}, block_ms, cb) -> true | nil, err */
static int m_command(lua_State *L) {
  tt_lredis_t *c = (tt_lredis_t *)tt_lobj_check(L, 1, TT_REDIS_MT);
  const char *argv[MAX_ARGS];
  size_t len[MAX_ARGS];
  lua_Integer n, block;
  cmd_t *k;
  int err;
  luaL_checktype(L, 2, LUA_TTABLE);
  block = luaL_optinteger(L, 3, 0);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  if (c == NULL) return tt_lua_fail(L, TT_ERR_CLOSED, NULL);
  n = (lua_Integer)lua_rawlen(L, 2);
  luaL_argcheck(L, n >= 1 && n <= MAX_ARGS, 2, "1 to 4096 arguments expected");
  luaL_argcheck(L, block >= 0, 3, "negative block time");
  lua_settop(L, 4);
  luaL_checkstack(L, (int)n + 4, "too many arguments");
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i); /* stays on the stack: the strings live */
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
      return luaL_argerror(L, 2, "strings and numbers expected");
    argv[i - 1] = lua_tolstring(L, -1, &len[i - 1]);
  }
  if ((k = malloc(sizeof *k)) == NULL) return tt_lua_fail(L, UV_ENOMEM, NULL);
  k->c = c;
  lua_pushvalue(L, 4);
  k->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if ((err = tt_redis_command(&c->r, (int)n, argv, len, (uint64_t)block,
                              on_reply, k)) != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, k->ref);
    free(k);
    return tt_lua_fail(L, err, NULL);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int m_connected(lua_State *L) {
  tt_lredis_t *c = (tt_lredis_t *)tt_lobj_check(L, 1, TT_REDIS_MT);
  lua_pushboolean(L, c != NULL && tt_redis_connected(&c->r));
  return 1;
}

static int m_close(lua_State *L) {
  return tt_lobj_close_method(L, TT_REDIS_MT);
}

static int m_tostring(lua_State *L) {
  tt_box_t *box = lua_touserdata(L, 1);
  lua_pushfstring(L, "tether.redis (%s)",
                  box->o && !box->o->closing ? "open" : "closed");
  return 1;
}

void tt_open_redis(lua_State *L) {
  static const luaL_Reg methods[] = {{"command", m_command},
                                     {"connected", m_connected},
                                     {"close", m_close},
                                     {NULL, NULL}};
  tt_lobj_class(L, TT_REDIS_MT, methods, m_tostring);
  lua_pushcfunction(L, l_redis);
  lua_setfield(L, -2, "redis");
}
