/*
 * Messages between Lua and a channel: encode + queue on the way out,
 * decode + dispatch on the way in.  Shared by tether.child (parent side) and
 * tether.channel (child side).
 *
 * Encoding goes into the state's reusable buffer (kept between messages, so
 * large messages do not churn malloc); the channel copies it or, for a large
 * frame with nothing queued, writes it straight from there.  Decoding runs protected: a
 * malformed payload fails that channel with ERR_IPC_PROTOCOL and nothing
 * else, and a memory error cannot longjmp across libuv.
 */
#include <stdlib.h>

#include "binding.h"
#include "tt_error.h"

#define TT_WBUF_INITIAL ((size_t)4 << 10)
/* A buffer grown past this for one huge message is given back after it. */
#define TT_WBUF_KEEP ((size_t)4 << 20)

typedef struct {
  tt_state_t *st;
  int ref;
} tt_send_req_t;

static void on_sent(void *arg, int status) {
  tt_send_req_t *req = arg;
  tt_state_t *st = req->st;
  lua_State *L = st->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, req->ref);
  luaL_unref(L, LUA_REGISTRYINDEX, req->ref);
  free(req);
  if (st->closing) {
    lua_pop(L, 1);
    return;
  }
  if (status == 0)
    lua_pushnil(L);
  else
    tt_lua_push_error(L, status, NULL);
  tt_call(st, L, 1);
}

static int send_value(lua_State *L, tt_state_t *st, tt_channel_t *ch,
                      int idx, int cb_idx, unsigned kind, uint32_t id) {
  tt_wbuf_t *wb = &st->wbuf;
  tt_send_req_t *req = NULL;
  size_t len;
  int rc;

  if (wb->cap < TT_WBUF_INITIAL) {
    char *nb = realloc(wb->data, TT_WBUF_INITIAL);
    if (nb == NULL) return tt_lua_fail(L, UV_ENOMEM, NULL);
    wb->data = nb;
    wb->cap = TT_WBUF_INITIAL;
  }
  wb->len = TT_FRAME_HEADER_SIZE;
  if (tt_codec_encode(L, idx, wb, st->max_depth) != 0)
    return tt_lua_fail(L, TT_ERR_SERIALIZE, lua_tostring(L, -1));
  len = wb->len - TT_FRAME_HEADER_SIZE;
  if (!tt_channel_is_connected(ch))
    return tt_lua_fail(L, TT_ERR_IPC_CHANNEL_CLOSED, NULL);
  if (len > ch->dec.max_message) {
    lua_pushfstring(L, "message of %I bytes exceeds max_message (%I bytes)",
                    (lua_Integer)len, (lua_Integer)ch->dec.max_message);
    return tt_lua_fail(L, TT_ERR_SERIALIZE, lua_tostring(L, -1));
  }
  if (cb_idx != 0) {
    req = malloc(sizeof *req);
    if (req == NULL) return tt_lua_fail(L, UV_ENOMEM, NULL);
    req->st = st;
    lua_pushvalue(L, cb_idx);
    req->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  rc = tt_channel_send(ch, kind, id, wb->data + TT_FRAME_HEADER_SIZE, len,
                       req ? on_sent : NULL, req);
  if (wb->cap > TT_WBUF_KEEP) {
    free(wb->data);
    wb->data = NULL;
    wb->cap = wb->len = 0;
  }
  if (rc < 0) {
    if (req != NULL) {
      luaL_unref(L, LUA_REGISTRYINDEX, req->ref);
      free(req);
    }
    return tt_lua_fail(L, rc, NULL);
  }
  lua_pushboolean(L, rc == 1);
  return 1;
}

int tt_lua_send_method(lua_State *L, tt_lobj_t *o, tt_channel_t *ch) {
  unsigned kind = (unsigned)luaL_optinteger(L, 4, TT_FRAME_MESSAGE);
  uint32_t id = (uint32_t)luaL_optinteger(L, 5, 0);
  int cb = lua_isnoneornil(L, 3) ? 0 : 3;
  luaL_checkany(L, 2);
  if (cb) luaL_checktype(L, 3, LUA_TFUNCTION);
  luaL_argcheck(L, kind >= 1 && kind <= TT__FRAME_KIND_MAX, 4, "bad kind");
  if (o == NULL) return tt_lua_fail(L, TT_ERR_IPC_CHANNEL_CLOSED, NULL);
  if (ch == NULL) return tt_lua_fail(L, TT_ERR_NO_CHANNEL, NULL);
  return send_value(L, o->st, ch, 2, cb, kind, id);
}

/* decode(payload, len) -> true, value | false, message */
static int decode_protected(lua_State *L) {
  const char *p = lua_touserdata(L, 1);
  size_t n = (size_t)lua_tointeger(L, 2);
  int depth = (int)lua_tointeger(L, 3);
  if (tt_codec_decode(L, p, n, depth) != 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -2);
  return 2;
}

static const char *event_of(unsigned kind) {
  switch (kind) {
  case TT_FRAME_MESSAGE:
    return "message";
  case TT_FRAME_REQUEST:
    return "request";
  case TT_FRAME_REPLY:
    return "reply";
  case TT_FRAME_FAULT:
    return "fault";
  default:
    return "control";
  }
}

void tt_lua_on_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload) {
  tt_lobj_t *o = ch->data;
  tt_state_t *st = o->st;
  lua_State *L = tt_lobj_begin(o, event_of(h->kind));
  int top;
  if (L == NULL) return;
  top = lua_gettop(L);
  lua_pushcfunction(L, decode_protected);
  lua_pushlightuserdata(L, (void *)payload);
  lua_pushinteger(L, (lua_Integer)h->len);
  lua_pushinteger(L, st->max_depth);
  if (lua_pcall(L, 3, 2, 0) != LUA_OK) {
    /* Out of memory while building the value: the stream cannot go on. */
    tt_channel_fail(ch, UV_ENOMEM, "out of memory decoding a message");
    lua_settop(L, top - 2);
    return;
  }
  if (!lua_toboolean(L, -2)) {
    lua_replace(L, top - 1); /* the message, kept alive during the call */
    lua_settop(L, top - 1);
    tt_channel_fail(ch, TT_ERR_IPC_PROTOCOL, lua_tostring(L, -1));
    lua_settop(L, top - 2);
    return;
  }
  lua_remove(L, -2); /* the flag */
  if (h->kind == TT_FRAME_MESSAGE || h->kind == TT_FRAME_CONTROL) {
    tt_call(st, L, 2);
  } else {
    lua_pushinteger(L, (lua_Integer)h->id);
    tt_call(st, L, 3);
  }
}

void tt_lua_on_channel_error(tt_channel_t *ch, int err, const char *why) {
  tt_lobj_t *o = ch->data;
  lua_State *L = tt_lobj_begin(o, "error");
  if (L == NULL) return;
  tt_lua_push_error(L, err, why);
  tt_call(o->st, L, 2);
}

void tt_lua_on_drain(tt_channel_t *ch) {
  tt_lobj_t *o = ch->data;
  lua_State *L = tt_lobj_begin(o, "drain");
  if (L == NULL) return;
  tt_call(o->st, L, 1);
}

int tt_lua_stats(lua_State *L, const tt_channel_t *ch) {
  tt_channel_stats_t s;
  tt_channel_stats(ch, &s);
  lua_createtable(L, 0, 5);
#define F(name)                                                               \
  lua_pushinteger(L, (lua_Integer)s.name);                                    \
  lua_setfield(L, -2, #name);
  F(messages_sent)
  F(messages_received)
  F(bytes_sent)
  F(bytes_received)
  F(queued_bytes)
  F(writes)
#undef F
  return 1;
}
