/*
 * tether.channel: the child's end of the channel to its parent (found
 * through TETHER_CHANNEL_FD).  Unreferenced by default, as in Node: the
 * facade refs it while the script listens on it (or asked keep_alive).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tt_peer.h"
#include "tt_handshake.h"
#include "binding.h"
#include "tt_error.h"

typedef struct {
  tt_lobj_t o;
  tt_channel_t ch;
  tt_rpc_t rpc;
  int opened;
} tt_lchannel_t;

static void on_rpc_closed(tt_rpc_t *rpc) { tt_lobj_closed(rpc->data); }

static void on_closed(tt_channel_t *ch) {
  tt_lchannel_t *c = (tt_lchannel_t *)ch->data;
  tt_rpc_close(&c->rpc, on_rpc_closed);
}

static void teardown(tt_lobj_t *o) {
  tt_lchannel_t *c = (tt_lchannel_t *)o;
  /* (what the script sent was flushed before: tt_flush_all) */
  if (c->opened)
    tt_channel_close(&c->ch, on_closed);
  else
    tt_lobj_closed(o);
}

static void on_disconnect(tt_channel_t *ch) {
  tt_lchannel_t *c = (tt_lchannel_t *)ch->data;
  lua_State *L;
  tt_rpc_fail_all(&c->rpc, TT_ERR_IPC_CHANNEL_CLOSED);
  L = tt_lobj_begin(&c->o, "disconnect");
  if (L != NULL) tt_call(c->o.st, L, 1);
  c->o.closing = 1;
  tt_channel_close(ch, on_closed);
}

/* A channel on `fd` (ours from now on, closed on failure), with the
 * handler at index 1. */
static int open_on(lua_State *L, int fd, tt_channel_options_t *opts_in) {
  tt_channel_options_t opts = *opts_in;
  tt_lchannel_t *c;
  int err;
  c = calloc(1, sizeof *c);
  if (c == NULL) {
    close(fd);
    return tt_lua_fail(L, UV_ENOMEM, NULL);
  }
  tt_lobj_new_box(L, &c->o, TT_CHANNEL_MT, 1, teardown);
  if ((err = tt_channel_init(&c->o.st->loop, &c->ch, fd, &opts)) != 0) {
    close(fd);
    c->o.closing = 1;
    teardown(&c->o);
    return tt_lua_fail(L, err, NULL);
  }
  c->opened = 1;
  c->o.ch = &c->ch;
  c->o.json = opts.lines;
  c->ch.data = &c->o;
  c->ch.on_frame = tt_lua_on_frame;
  c->ch.on_error = tt_lua_on_channel_error;
  c->ch.on_drain = tt_lua_on_drain;
  c->ch.on_disconnect = on_disconnect;
  tt_rpc_init(&c->o.st->loop, &c->rpc, &c->ch);
  c->rpc.data = &c->o;
  c->o.rpc = &c->rpc;
  return 1;
}

/* open_parent(handler[, max_message]) -> channel | nil, err */
static int l_open_parent(lua_State *L) {
  tt_channel_options_t opts;
  int fd, err;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  memset(&opts, 0, sizeof opts);
  if (lua_isnoneornil(L, 2)) {
    /* the parent's limit, passed down (tt_handshake.h) */
    opts.max_message = tt_handshake()->max_message;
  } else {
    opts.max_message = (size_t)luaL_checkinteger(L, 2);
  }
  if ((err = tt_channel_inherited_fd(&fd, &opts.lines)) != 0)
    return tt_lua_fail(L, err, NULL);
  return open_on(L, fd, &opts);
}

/* open_channel(handler, handle[, max_message]) -> channel | nil, err: a
 * native channel on a connected stream socket (a duplicate of the
 * handle's descriptor: the handle stays the caller's). */
static int l_open_channel(lua_State *L) {
  tt_channel_options_t opts;
  int fd = tt_lua_handle_fd(L, 2), dup;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_argcheck(L, fd != -2, 2, "handle expected");
  if (fd < 0) return tt_lua_fail(L, UV_EBADF, "the handle is closed");
  memset(&opts, 0, sizeof opts);
  opts.max_message = (size_t)luaL_optinteger(L, 3, 0);
  if ((dup = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0)
    return tt_lua_fail(L, -errno, NULL);
  return open_on(L, dup, &opts);
}

static tt_lchannel_t *check(lua_State *L) {
  return (tt_lchannel_t *)tt_lobj_check(L, 1, TT_CHANNEL_MT);
}

static int m_send(lua_State *L) {
  tt_lchannel_t *c = check(L);
  return tt_lua_send_method(L, c ? &c->o : NULL, c ? &c->ch : NULL);
}

static int m_set_listener(lua_State *L) {
  tt_lchannel_t *c = check(L);
  return tt_lua_set_listener_method(L, c ? &c->o : NULL);
}

static int m_take_handle(lua_State *L) {
  tt_lchannel_t *c = check(L);
  return tt_lua_take_handle(L, c ? &c->ch : NULL);
}

static int m_disconnect(lua_State *L) {
  tt_lchannel_t *c = check(L);
  int err = c ? tt_channel_disconnect(&c->ch) : TT_ERR_IPC_DISCONNECTED;
  if (err != 0) return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_connected(lua_State *L) {
  tt_lchannel_t *c = check(L);
  lua_pushboolean(L, c != NULL && tt_channel_is_connected(&c->ch));
  return 1;
}

static int m_ref(lua_State *L) {
  tt_lchannel_t *c = check(L);
  if (c != NULL) tt_channel_ref(&c->ch, lua_toboolean(L, 2));
  return 0;
}

/* json() -> whether the parent speaks Node's JSON lines */
static int m_json(lua_State *L) {
  tt_lchannel_t *c = check(L);
  lua_pushboolean(L, c != NULL && c->o.json);
  return 1;
}

/* ready(): tells a supervising parent that the script's main chunk ran (a
 * PONG with id 0, carrying our heap size).  A plain parent ignores it. */
static int m_ready(lua_State *L) {
  tt_lchannel_t *c = check(L);
  int err;
  if (c == NULL || !tt_channel_is_connected(&c->ch))
    return tt_lua_fail(L, TT_ERR_IPC_CHANNEL_CLOSED, NULL);
  if ((err = tt_peer_ready(&c->ch, tt_lua_heap, L)) != 0)
    return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* flush([timeout_ms]) -> true | nil, err: blocks until the backlog is with
 * the kernel (used before the process exits). */
static int m_flush(lua_State *L) {
  tt_lchannel_t *c = check(L);
  int err;
  if (c == NULL) {
    lua_pushboolean(L, 1);
    return 1;
  }
  err = tt_channel_flush_sync(&c->ch, (int)luaL_optinteger(L, 2, -1));
  if (err != 0) return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int m_stats(lua_State *L) {
  tt_box_t *box = luaL_checkudata(L, 1, TT_CHANNEL_MT);
  tt_lchannel_t *c = (tt_lchannel_t *)box->o;
  return tt_lua_stats(L, c ? &c->ch : NULL, c ? &c->rpc : NULL);
}

static int m_call(lua_State *L) {
  tt_lchannel_t *c = check(L);
  return tt_lua_call_method(L, c ? &c->o : NULL);
}

static int m_answer(lua_State *L) {
  tt_lchannel_t *c = check(L);
  return tt_lua_answer_method(L, c ? &c->o : NULL);
}

static int m_tostring(lua_State *L) {
  tt_lchannel_t *c = check(L);
  lua_pushfstring(L, "tether.channel (%s)",
                  c && tt_channel_is_connected(&c->ch) ? "connected"
                                                      : "disconnected");
  return 1;
}

void tt_open_channel(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"send", m_send},   {"disconnect", m_disconnect},
      {"take_handle", m_take_handle}, {"set_listener", m_set_listener},
      {"connected", m_connected}, {"ref", m_ref},
      {"flush", m_flush}, {"stats", m_stats},
      {"call", m_call},   {"answer", m_answer},
      {"ready", m_ready}, {"json", m_json},   {NULL, NULL}};
  tt_lobj_class(L, TT_CHANNEL_MT, methods, m_tostring);
  lua_pushcfunction(L, l_open_parent);
  lua_setfield(L, -2, "open_parent");
  lua_pushcfunction(L, l_open_channel);
  lua_setfield(L, -2, "open_channel");
}
