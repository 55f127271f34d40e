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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tt_peer.h"
#include "binding.h"
#include "tt_error.h"
#include "tt_lines.h"

#define TT_WBUF_INITIAL ((size_t)4 << 10)
/* A buffer grown past this for one huge message is given back after it. */
#define TT_WBUF_KEEP ((size_t)4 << 20)

/* No Lua runs for an object being collected (or a state being closed):
 * its callbacks can only be dropped. */
static int gone(const tt_lobj_t *o) { return o->st->closing || o->collected; }

void tt_lua_on_sent(void *arg, int status) {
  tt_send_req_t *req = arg;
  tt_lobj_t *o = req->o;
  tt_state_t *st = o->st;
  lua_State *L = st->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, req->ref);
  luaL_unref(L, LUA_REGISTRYINDEX, req->ref);
  free(req);
  if (gone(o)) {
    lua_pop(L, 1);
    return;
  }
  if (status == 0)
    lua_pushnil(L);
  else
    tt_lua_push_error(L, status, NULL);
  tt_call(st, L, 1);
}

/* JSON: the facade's encoder, enc(value) -> text | nil, why */
static int encode_json(lua_State *L, tt_state_t *st, int idx) {
  tt_wbuf_t *wb = &st->wbuf;
  const char *text;
  size_t n;
  idx = lua_absindex(L, idx);
  if (st->json_encode_ref == LUA_NOREF)
    return tt_lua_fail(L, TT_ERR_SERIALIZE,
                       "JSON mode is not set up (needs lua-cjson)");
  lua_rawgeti(L, LUA_REGISTRYINDEX, st->json_encode_ref);
  lua_pushvalue(L, idx);
  lua_call(L, 1, 2);
  if ((text = lua_tolstring(L, -2, &n)) == NULL) {
    const char *why = lua_tostring(L, -1);
    return tt_lua_fail(L, TT_ERR_SERIALIZE, why ? why : "cannot encode");
  }
  if (wb->cap < TT_FRAME_HEADER_SIZE + n) {
    char *nb = realloc(wb->data, TT_FRAME_HEADER_SIZE + n);
    if (nb == NULL) return tt_lua_fail(L, UV_ENOMEM, NULL);
    wb->data = nb;
    wb->cap = TT_FRAME_HEADER_SIZE + n;
  }
  memcpy(wb->data + TT_FRAME_HEADER_SIZE, text, n);
  wb->len = TT_FRAME_HEADER_SIZE + n;
  lua_pop(L, 2);
  return 0;
}

/* Encodes the value at idx into the state's buffer, after room for a frame
 * header.  0, or the count of Lua results (nil, err) already pushed. */
int tt_lua_encode(lua_State *L, tt_state_t *st, int idx, int json) {
  return tt_lua_encode_with(L, st, idx, json, NULL);
}

int tt_lua_encode_with(lua_State *L, tt_state_t *st, int idx, int json,
                       tt_codec_attach_t *attach) {
  tt_wbuf_t *wb = &st->wbuf;
  if (wb->cap < TT_WBUF_INITIAL) {
    char *nb = realloc(wb->data, TT_WBUF_INITIAL);
    if (nb == NULL) return tt_lua_fail(L, UV_ENOMEM, NULL);
    wb->data = nb;
    wb->cap = TT_WBUF_INITIAL;
  }
  if (json) return encode_json(L, st, idx);
  wb->len = TT_FRAME_HEADER_SIZE;
  if (tt_codec_encode_with(L, idx, wb, st->max_depth, attach) != 0)
    return tt_lua_fail(L, TT_ERR_SERIALIZE, lua_tostring(L, -1));
  return 0;
}

/* ---- buffers beside a message (tether.buffer: binding/buffer.c) ---- */

typedef struct {
  tt_codec_attach_t a;
  tt_carried_t *c;
} send_attach_t;

static const char *take_buffer(tt_codec_attach_t *a, lua_State *L, int idx,
                               uint64_t *size) {
  tt_carried_t *c = ((send_attach_t *)a)->c;
  tt_shmbuf_t *b = tt_lua_buffer_test(L, idx);
  if (b->fd < 0) return "the tether.buffer is closed";
  /* (the receiver pairs each tag with a descriptor of its own: the same
   * buffer twice would come out as two) */
  for (unsigned i = 0; i < c->nbufs; i++)
    if (c->bufs[i] == b) return "the same tether.buffer twice in one message";
  if (c->nbufs == TT_FRAME_MAX_FDS)
    return "a message carries at most 16 tether.buffers";
  c->bufs[c->nbufs++] = b;
  c->bytes += b->size;
  *size = b->size;
  return NULL;
}

typedef struct {
  tt_codec_attach_t a;
  tt_channel_t *ch;
  uint64_t bytes; /* of the buffers decoded so far */
} recv_attach_t;

/* Buffers count toward max_message by their sizes: what a peer can make us
 * hold in one message stays bounded by the same setting. */
static size_t buffer_cap(size_t max_message) {
  return max_message < TT_SHMBUF_MAX ? max_message : TT_SHMBUF_MAX;
}

static size_t buffer_max(tt_channel_t *ch) {
  return buffer_cap(tt_channel_max_message(ch));
}

/* The frames whose value may hold a buffer: those that carry a descriptor
 * for it, except control (the runner's own). */
static int may_carry(unsigned kind) {
  return kind == TT_FRAME_MESSAGE || kind == TT_FRAME_REQUEST ||
         kind == TT_FRAME_REPLY;
}

int tt_lua_encode_frame(lua_State *L, tt_state_t *st, int idx, int json,
                        unsigned kind, size_t max_message, tt_carried_t *c) {
  send_attach_t at = {{take_buffer, NULL}, c};
  int rc;
  c->nbufs = c->nfds = 0;
  c->bytes = 0;
  c->handle = -1;
  if ((rc = tt_lua_encode_with(L, st, idx, json,
                               may_carry(kind) ? &at.a : NULL)) != 0)
    return rc;
  if (c->bytes > buffer_cap(max_message)) {
    tt_lua_encode_done(st);
    return tt_lua_too_large(L, c->nbufs > 1 ? "tether.buffers together"
                                            : "tether.buffer",
                            (size_t)c->bytes, buffer_cap(max_message));
  }
  return 0;
}

int tt_lua_carry_handle(lua_State *L, tt_state_t *st, tt_carried_t *c,
                        int fd) {
  if (fd < 0) return 0;
  if (c->nbufs == TT_FRAME_MAX_FDS) {
    tt_lua_encode_done(st);
    return tt_lua_fail(L, TT_ERR_SERIALIZE,
                       "a message carries at most 16 descriptors: 15 "
                       "tether.buffers with a handle");
  }
  c->handle = fd;
  return 0;
}

int tt_lua_freeze_buffers(lua_State *L, tt_state_t *st, tt_carried_t *c) {
  int rc;
  c->nfds = 0;
  /* frozen before their descriptors leave: the receiver maps a buffer only
   * if it is sealed, and nobody may change it from then on */
  for (unsigned i = 0; i < c->nbufs; i++) {
    if ((rc = tt_shmbuf_freeze(c->bufs[i])) != 0) {
      tt_lua_encode_done(st);
      return tt_lua_fail(L, rc, "cannot freeze the buffer to send it");
    }
    c->fds[c->nfds++] = c->bufs[i]->fd;
  }
  /* a handle's goes last: the receiver's decoder takes the buffers' first */
  if (c->handle >= 0) c->fds[c->nfds++] = c->handle;
  return 0;
}

static const char *give_buffer(tt_codec_attach_t *a, lua_State *L,
                               uint64_t size) {
  recv_attach_t *r = (recv_attach_t *)a;
  tt_shmbuf_t *b;
  const char *why = NULL;
  int fd, err;
  if (size > buffer_max(r->ch)) return "a buffer larger than max_message";
  if (r->bytes + size > buffer_max(r->ch))
    return "buffers larger than max_message together";
  b = tt_lua_new_buffer(L); /* (before the descriptor is ours: a raise
                               here leaves it to the channel to close) */
  if ((fd = tt_channel_take_fd(r->ch)) < 0) {
    lua_pop(L, 1);
    return "a buffer without its descriptor";
  }
  if ((err = tt_shmbuf_adopt(b, fd, (size_t)size, buffer_max(r->ch))) != 0) {
    close(fd);
    lua_pop(L, 1);
    why = err == UV_EPERM ? "a buffer its sender could still change (not sealed)"
          : err == UV_EINVAL ? "a buffer of another size than its tag says"
          : err == UV_EBADF  ? "a buffer whose descriptor is not a memfd"
                             : "a buffer that cannot be mapped";
  } else {
    r->bytes += size;
    tt_lua_buffer_pressure(L, (size_t)size);
  }
  return why;
}

void tt_lua_encode_done(tt_state_t *st) {
  tt_wbuf_t *wb = &st->wbuf;
  if (wb->cap > TT_WBUF_KEEP) {
    free(wb->data);
    wb->data = NULL;
    wb->cap = wb->len = 0;
  }
}

/* nil, ERR_SERIALIZE when the encoded value (in st->wbuf) of `kind` would
 * not fit in the peer's max_message as written; 0 when it fits. */
static int check_too_big(lua_State *L, tt_channel_t *ch, tt_state_t *st,
                         unsigned kind) {
  size_t len = st->wbuf.len - TT_FRAME_HEADER_SIZE;
  if (tt_channel_check_size(ch, kind, len) == 0) return 0;
  tt_lua_encode_done(st);
  if (tt_channel_is_lines(ch))
    lua_pushfstring(L, "message of %I bytes exceeds max_message (%I bytes) "
                       "as a JSON line of up to %I bytes",
                    (lua_Integer)len, (lua_Integer)tt_channel_max_message(ch),
                    (lua_Integer)(len + tt_lines_overhead(kind)));
  else
    return tt_lua_too_large(L, "message", len, tt_channel_max_message(ch));
  return tt_lua_fail(L, TT_ERR_SERIALIZE, lua_tostring(L, -1));
}

int tt_lua_too_large(lua_State *L, const char *what, size_t len, size_t max) {
  lua_pushfstring(L, "%s of %I bytes exceeds max_message (%I bytes)", what,
                  (lua_Integer)len, (lua_Integer)max);
  return tt_lua_fail(L, TT_ERR_SERIALIZE, lua_tostring(L, -1));
}

static int send_value(lua_State *L, tt_lobj_t *o, tt_channel_t *ch,
                      int idx, int cb_idx, unsigned kind, uint32_t id,
                      int fd) {
  tt_state_t *st = o->st;
  tt_send_req_t *req = NULL;
  tt_carried_t c;
  int rc;

  if ((rc = tt_lua_encode_frame(L, st, idx, o->json, kind,
                                tt_channel_max_message(ch), &c)) != 0 ||
      (rc = tt_lua_carry_handle(L, st, &c, fd)) != 0)
    return rc;
  if (!tt_channel_is_connected(ch)) {
    tt_lua_encode_done(st);
    return tt_lua_fail(L, TT_ERR_IPC_CHANNEL_CLOSED, NULL);
  }
  if ((rc = check_too_big(L, ch, st, kind)) != 0) return rc;
  /* once nothing else refuses the send */
  if ((rc = tt_lua_freeze_carried(L, st, &c)) != 0) return rc;
  if (cb_idx != 0) {
    req = malloc(sizeof *req);
    if (req == NULL) {
      tt_lua_encode_done(st);
      return tt_lua_fail(L, UV_ENOMEM, NULL);
    }
    req->o = o;
    lua_pushvalue(L, cb_idx);
    req->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  rc = tt_channel_send_fds(ch, kind, id, st->wbuf.data + TT_FRAME_HEADER_SIZE,
                           st->wbuf.len - TT_FRAME_HEADER_SIZE, c.fds, c.nfds,
                           req ? tt_lua_on_sent : NULL, req);
  tt_lua_encode_done(st);
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

/* h:send(value, [cb], [kind], [id], [handle]) */
int tt_lua_send_method(lua_State *L, tt_lobj_t *o, tt_channel_t *ch) {
  unsigned kind;
  uint32_t id;
  int cb, fd;
  if (lua_gettop(L) == 2 && o != NULL && ch != NULL) /* h:send(value) */
    return send_value(L, o, ch, 2, 0, TT_FRAME_MESSAGE, 0, -1);
  kind = (unsigned)luaL_optinteger(L, 4, TT_FRAME_MESSAGE);
  id = (uint32_t)luaL_optinteger(L, 5, 0);
  cb = lua_isnoneornil(L, 3) ? 0 : 3;
  luaL_checkany(L, 2);
  if (cb) luaL_checktype(L, 3, LUA_TFUNCTION);
  luaL_argcheck(L, kind >= 1 && kind <= TT__FRAME_KIND_MAX, 4, "bad kind");
  if ((fd = tt_lua_opt_handle_fd(L, 6)) == -2)
    return tt_lua_fail(L, TT_ERR_CLOSED, "the handle is empty");
  if (o == NULL) return tt_lua_fail(L, TT_ERR_IPC_CHANNEL_CLOSED, NULL);
  if (ch == NULL) return tt_lua_fail(L, TT_ERR_NO_CHANNEL, NULL);
  return send_value(L, o, ch, 2, cb, kind, id, fd);
}

int tt_lua_set_listener_method(lua_State *L, tt_lobj_t *o) {
  static const char *const which[] = {"message", "request", NULL};
  int none = lua_isnoneornil(L, 2), *ref;
  int requests = luaL_checkoption(L, 3, "message", which);
  if (!none) luaL_checktype(L, 2, LUA_TFUNCTION);
  if (o == NULL || o->closed) return 0;
  ref = requests ? &o->request_ref : &o->listener_ref;
  luaL_unref(L, LUA_REGISTRYINDEX, *ref);
  *ref = LUA_NOREF;
  if (!none) {
    lua_pushvalue(L, 2);
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

size_t tt_lua_decode_budget(size_t max_message) {
  size_t b = max_message > SIZE_MAX / TT_DECODE_FACTOR
                 ? SIZE_MAX
                 : max_message * TT_DECODE_FACTOR;
  return b < TT_DECODE_MIN ? TT_DECODE_MIN : b;
}

/* What a JSON text will cost as Lua values, estimated by a scan before the
 * JSON decoder (which cannot be stopped midway) builds anything: its
 * containers, elements and strings at the native decoder's costs. */
static size_t json_cost(const char *p, size_t n) {
  size_t tables = 0, elements = 0, strings = 0, string_bytes = 0;
  int in_string = 0;
  for (size_t i = 0; i < n; i++) {
    char c = p[i];
    if (in_string) {
      if (c == '\\') i++;
      else if (c == '"') in_string = 0;
      else string_bytes++;
      continue;
    }
    switch (c) {
    case '"': in_string = 1; strings++; break;
    case '{': case '[': tables++; elements++; break;
    case ',': elements++; break;
    default: break;
    }
  }
  return tables * TT_CODEC_COST_TABLE +
         elements * (TT_CODEC_COST_NODE + TT_CODEC_COST_SLOT) +
         strings * TT_CODEC_COST_STRING + string_bytes;
}

/* Pushes the value of a payload: 1, or 0 with why it is malformed pushed
 * instead.  Raises only what Lua raises (out of memory, a Ctrl-C hook), so
 * it runs inside a protected call.  `ch` is where a buffer's descriptor
 * comes from (NULL: none may come). */
static int decode_value(lua_State *L, tt_state_t *st, const char *p, size_t n,
                        int json, size_t budget, tt_channel_t *ch) {
  recv_attach_t at = {{NULL, give_buffer}, ch, 0};
  if (json) { /* the facade's decoder -> ok, value|why */
    size_t cost;
    if (st->json_decode_ref == LUA_NOREF) {
      lua_pushliteral(L, "JSON mode is not set up (needs lua-cjson)");
      return 0;
    }
    if (budget != 0 && (cost = json_cost(p, n)) > budget) {
      lua_pushfstring(L, "JSON value would take about %I bytes of Lua memory, "
                         "more than the decode budget (%I)",
                      (lua_Integer)cost, (lua_Integer)budget);
      return 0;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, st->json_decode_ref);
    lua_pushlstring(L, p, n);
    lua_call(L, 1, 2);
    if (lua_toboolean(L, -2)) {
      lua_remove(L, -2);
      return 1;
    }
    lua_remove(L, -2);
    return 0;
  }
  return tt_codec_decode_with(L, p, n, st->max_depth, budget,
                              ch != NULL ? &at.a : NULL) == 0;
}

static size_t budget_for(size_t max_message) {
  return tt_lua_decode_budget(max_message ? max_message
                                          : TT_FRAME_DEFAULT_MAX_MESSAGE);
}

/* decode(payload, len, json, max_message, channel) -> true, value | false,
 * message */
static int decode_protected(lua_State *L) {
  int ok = decode_value(L, tt_state(L), lua_touserdata(L, 1),
                        (size_t)lua_tointeger(L, 2), lua_toboolean(L, 3),
                        budget_for((size_t)lua_tointeger(L, 4)),
                        lua_touserdata(L, 5));
  lua_pushboolean(L, ok);
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

int tt_lua_decode(lua_State *L, tt_state_t *st, const char *p, size_t n,
                  int json, size_t max_message) {
  return tt_lua_decode_from(L, st, p, n, json, max_message, NULL);
}

int tt_lua_decode_from(lua_State *L, tt_state_t *st, const char *p,
                       size_t n, int json, size_t max_message,
                       tt_channel_t *buffers_from) {
  int ok;
  lua_pushcfunction(L, decode_protected);
  lua_pushlightuserdata(L, (void *)p);
  lua_pushinteger(L, (lua_Integer)n);
  lua_pushboolean(L, json);
  lua_pushinteger(L, (lua_Integer)max_message);
  if (buffers_from != NULL) lua_pushlightuserdata(L, buffers_from);
  else lua_pushnil(L);
  if ((ok = lua_pcall(L, 5, 2, 0)) != LUA_OK) {
    /* Ctrl-C: the hook raised inside the decoder; the peer is not at fault */
    if (tt_interrupted(st)) {
      lua_pop(L, 1);
      lua_pushliteral(L, "interrupted!");
      return -2;
    }
    /* Out of memory, or an error raised from a hook */
    if (ok == LUA_ERRMEM || lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushliteral(L, "out of memory decoding a message");
    }
    return -1;
  }
  ok = lua_toboolean(L, -2);
  lua_remove(L, -2);
  return ok;
}

uint64_t tt_lua_heap(void *L) {
  return (uint64_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024u +
         (uint64_t)lua_gc(L, LUA_GCCOUNTB, 0);
}

int tt_lua_frame_fd(tt_channel_t *ch, const tt_frame_header_t *h) {
  /* JSON lines: the facade claims one for a NODE_HANDLE message
   * (take_handle), the only line that may have one */
  if ((h->kind != TT_FRAME_MESSAGE && h->kind != TT_FRAME_CONTROL) ||
      tt_channel_is_lines(ch))
    return -1;
  return tt_channel_take_fd(ch);
}

int tt_lua_take_handle(lua_State *L, tt_channel_t *ch) {
  int fd = ch != NULL ? tt_channel_take_fd(ch) : -1;
  if (fd < 0) {
    lua_pushnil(L);
    return 1;
  }
  return tt_lua_push_handle(L, fd);
}

/* What deliver_protected needs of a frame, and how far it got. */
typedef struct {
  tt_state_t *st;
  tt_channel_t *ch;
  const tt_frame_header_t *h;
  const char *payload;
  int json;
  int direct;          /* to the lone listener: listener(value) */
  int calling;         /* decoded: the handler runs (its errors are its own) */
  int malformed;       /* the payload is not a value: why says how */
  char why[256];
} frame_t;

/* deliver(handler, event, frame): decodes the frame's value and calls
 * handler(event, value, [handle | id]), or listener(value) when the frame
 * goes to the lone listener, or server(value, id) for a request when the
 * object has a request server (then `event` is nil).  One protected call for
 * both halves: a message's whole way in costs one setjmp, not two. */
static int deliver_protected(lua_State *L) {
  frame_t *f = lua_touserdata(L, 3);
  const tt_frame_header_t *h = f->h;
  tt_state_t *st = f->st;
  int carries = may_carry(h->kind) && !tt_channel_is_lines(f->ch);
  int nargs = 2;
  lua_settop(L, 2);
  /* a native message or request may carry a buffer: its descriptor is the
   * frame's */
  if (!decode_value(L, st, f->payload, h->len, f->json,
                    budget_for(tt_channel_max_message(f->ch)),
                    carries ? f->ch : NULL)) {
    const char *why = lua_tostring(L, -1);
    snprintf(f->why, sizeof f->why, "%s", why ? why : "malformed value");
    f->malformed = 1;
    return 0;
  }
  if (f->direct) {
    lua_remove(L, 2);
    nargs = 1;
    if (h->kind == TT_FRAME_REQUEST) { /* server(value, id) */
      lua_pushinteger(L, (lua_Integer)h->id);
      nargs = 2;
    }
  } else if (h->kind == TT_FRAME_MESSAGE || h->kind == TT_FRAME_CONTROL) {
    if (h->flags & TT_FRAME_F_HANDLE) {
      /* the box first: once taken, the descriptor is the handler's (its
       * __gc closes it if dropped), and nothing between may raise */
      int *slot = tt_lua_new_handle(L);
      if ((*slot = tt_lua_frame_fd(f->ch, h)) >= 0) nargs = 3;
      else lua_pop(L, 1); /* (a buffer's: the decoder took it) */
    }
  } else {
    lua_pushinteger(L, (lua_Integer)h->id);
    nargs = 3;
  }
  f->calling = 1;
  lua_call(L, nargs, 0);
  return 0;
}

void tt_lua_on_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload) {
  tt_lobj_t *o = ch->data;
  tt_state_t *st = o->st;
  frame_t f;
  lua_State *L;
  int base, direct;
  if (tt_peer_heartbeat(ch, h, tt_lua_heap, st->L)) return;
  if (o->rpc != NULL && tt_rpc_dispatch(o->rpc, h, payload)) return;
  /* A native message without a descriptor (no handle, no buffer) goes
   * straight to a lone "message" listener, and a native request to the
   * request server: no dispatcher, no emit */
  direct = LUA_NOREF;
  if (!o->json) {
    if (h->kind == TT_FRAME_MESSAGE && !(h->flags & TT_FRAME_F_HANDLE))
      direct = o->listener_ref;
    else if (h->kind == TT_FRAME_REQUEST)
      direct = o->request_ref;
  }
  f.direct = direct != LUA_NOREF;
  L = tt_lobj_begin(o, f.direct ? NULL : event_of(h->kind));
  if (L == NULL) return;
  if (f.direct) {
    lua_pop(L, 1); /* the handler */
    lua_rawgeti(L, LUA_REGISTRYINDEX, direct);
    lua_pushnil(L); /* (no event) */
  }
  f.st = st;
  f.ch = ch;
  f.h = h;
  f.payload = payload;
  f.json = o->json;
  f.calling = f.malformed = 0;
  base = lua_gettop(L) - 1;
  lua_pushcfunction(L, deliver_protected);
  lua_insert(L, base);
  lua_pushlightuserdata(L, &f);
  if (tt_pcall(st, L, 3) == LUA_OK) {
    /* Malformed: the stream cannot go on */
    if (f.malformed) tt_channel_fail(ch, TT_ERR_IPC_PROTOCOL, f.why);
  } else if (f.calling) {
    tt_route_error(st, L); /* the handler's error */
  } else {
    /* Out of memory building the value (the stream cannot go on), or
     * Ctrl-C inside the decoder (run() ends; the peer is not at fault) */
    lua_pop(L, 1);
    if (!tt_interrupted(st))
      tt_channel_fail(ch, UV_ENOMEM, "out of memory decoding a message");
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

int tt_lua_stats(lua_State *L, const tt_channel_t *ch, const tt_rpc_t *rpc) {
  tt_channel_stats_t s;
  tt_rpc_stats_t r;
  if (ch != NULL)
    tt_channel_stats(ch, &s);
  else
    memset(&s, 0, sizeof s);
  if (rpc != NULL)
    tt_rpc_stats(rpc, &r);
  else
    memset(&r, 0, sizeof r);
  lua_createtable(L, 0, 14);
#define F(name)                                                               \
  lua_pushinteger(L, (lua_Integer)s.name);                                    \
  lua_setfield(L, -2, #name);
  F(messages_sent)
  F(messages_received)
  F(bytes_sent)
  F(bytes_received)
  F(queued_bytes)
  F(writes)
  F(auto_dropped)
#undef F
#define F(name, field)                                                        \
  lua_pushinteger(L, (lua_Integer)r.field);                                   \
  lua_setfield(L, -2, name);
  F("calls", calls)
  F("replies", replies)
  F("faults", faults)
  F("timeouts", timeouts)
  F("retries", retries)
  F("calls_closed", closed)
  F("late_replies", late_replies)
  F("calls_in_flight", in_flight)
#undef F
  return 1;
}

/* ---- request/response -------------------------------------------------- */

typedef struct {
  tt_lobj_t *o;
  tt_channel_t *ch;
  int ref; /* the Lua function(err, reply) */
} tt_call_req_t;


/* What reply_protected needs of a reply, and how far it got. */
typedef struct {
  tt_state_t *st;
  tt_channel_t *ch;
  unsigned kind;
  const char *payload;
  size_t len;
  int json;
  int calling, malformed;
  char why[256];
} reply_t;

/* reply(fn, reply): decodes the reply and calls fn(nil, value), or
 * fn(err) for a fault: like deliver_protected, one protected call. */
static int reply_protected(lua_State *L) {
  reply_t *r = lua_touserdata(L, 2);
  int carries = r->kind == TT_FRAME_REPLY && !tt_channel_is_lines(r->ch);
  lua_settop(L, 1);
  /* a reply may carry a buffer (the frame is still being delivered: its
   * descriptor is the channel's current one) */
  if (!decode_value(L, r->st, r->payload, r->len, r->json,
                    budget_for(tt_channel_max_message(r->ch)),
                    carries ? r->ch : NULL)) {
    const char *why = lua_tostring(L, -1);
    snprintf(r->why, sizeof r->why, "%s", why ? why : "malformed value");
    r->malformed = 1;
    return 0;
  }
  if (r->kind == TT_FRAME_FAULT) {
    tt_lua_fault_error(L); /* fn, err */
    r->calling = 1;
    lua_call(L, 1, 0);
    return 0;
  }
  lua_pushnil(L);
  lua_insert(L, -2); /* fn, nil, value */
  r->calling = 1;
  lua_call(L, 2, 0);
  return 0;
}

static void on_call_done(void *arg, int status, unsigned kind,
                         const char *payload, size_t len) {
  tt_call_req_t *req = arg;
  tt_state_t *st = req->o->st;
  lua_State *L = st->L;
  int top = lua_gettop(L);
  reply_t r;
  /* (req lives in the call until we return: tt_rpc_call_with) */
  lua_rawgeti(L, LUA_REGISTRYINDEX, req->ref);
  luaL_unref(L, LUA_REGISTRYINDEX, req->ref);
  if (gone(req->o)) {
    lua_settop(L, top);
    return;
  }
  if (status != 0) {
    tt_lua_push_error(L, status, NULL);
    tt_call(st, L, 1);
    return;
  }
  r.st = st;
  r.ch = req->ch;
  r.kind = kind;
  r.payload = payload;
  r.len = len;
  r.json = req->o->json;
  r.calling = r.malformed = 0;
  lua_pushcfunction(L, reply_protected);
  lua_pushvalue(L, -2); /* (fn stays below, for a reply that fails) */
  lua_pushlightuserdata(L, &r);
  if (tt_pcall(st, L, 2) != LUA_OK) {
    if (r.calling) { /* the callback's own error */
      tt_route_error(st, L);
      lua_settop(L, top);
      return;
    }
    lua_pop(L, 1);
    if (tt_interrupted(st)) { /* Ctrl-C in the decoder: run() ends */
      lua_settop(L, top);
      return;
    }
    r.malformed = 1; /* out of memory: as a reply that does not decode */
    snprintf(r.why, sizeof r.why, "out of memory decoding a message");
  }
  if (!r.malformed) {
    lua_settop(L, top);
    return;
  }
  /* A reply that does not decode: the peer is broken. */
  tt_lua_push_error(L, TT_ERR_IPC_PROTOCOL, r.why); /* fn, err */
  tt_channel_fail(r.ch, TT_ERR_IPC_PROTOCOL, r.why);
  tt_call(st, L, 1);
}

void tt_lua_fault_error(lua_State *L) {
  int v = lua_gettop(L);
  const char *code = NULL, *msg = NULL;
  /* {code=, message=, traceback=} from the peer: our error object */
  if (lua_istable(L, v)) {
    lua_getfield(L, v, "code");
    lua_getfield(L, v, "message");
    lua_getfield(L, v, "traceback");
    code = lua_tostring(L, v + 1);
    msg = lua_tostring(L, v + 2);
  } else {
    lua_settop(L, v + 3);
  }
  tt_lua_push_error(L, TT_ERR_TASK_FAILED, msg ? msg : "request failed");
  if (code != NULL && lua_type(L, v + 1) == LUA_TSTRING) {
    /* a peer's answer may say only what a peer may say (PROTOCOL.md):
     * ERR_NO_HANDLER and ERR_QUEUE_FULL refusals; any other code is the
     * task's failure, the code kept aside (it cannot pass for one of ours,
     * e.g. ERR_TIMEOUT) */
    int ours = strcmp(code, "ERR_NO_HANDLER") == 0 ||
               strcmp(code, "ERR_QUEUE_FULL") == 0 ||
               strcmp(code, "ERR_TASK_FAILED") == 0;
    lua_pushvalue(L, v + 1);
    lua_setfield(L, -2, ours ? "code" : "peer_code");
  }
  if (lua_type(L, v + 3) == LUA_TSTRING) {
    lua_pushvalue(L, v + 3);
    lua_setfield(L, -2, "traceback");
  }
  lua_replace(L, v);
  lua_settop(L, v);
}

static double opt_number(lua_State *L, int t, const char *k, double def) {
  double v;
  lua_getfield(L, t, k);
  v = luaL_optnumber(L, -1, def);
  lua_pop(L, 1);
  return v;
}

int tt_lua_call_method(lua_State *L, tt_lobj_t *o) {
  tt_call_options_t opts;
  tt_call_req_t *req;
  tt_state_t *st;
  tt_carried_t c;
  lua_Number timeout = luaL_optnumber(L, 3, 0);
  lua_Integer retries = luaL_optinteger(L, 4, 0);
  int err, ref;
  luaL_checkany(L, 2);
  luaL_checktype(L, 6, LUA_TFUNCTION);
  luaL_argcheck(L, timeout >= 0 && timeout < 9e15, 3, "timeout out of range");
  luaL_argcheck(L, retries >= 0 && retries < 1000000, 4, "bad retries");
  tt_backoff_init(&opts.backoff);
  if (lua_istable(L, 5)) {
    opts.backoff.initial_ms = opt_number(L, 5, "initial", 100);
    opts.backoff.max_ms = opt_number(L, 5, "max", 10000);
    opts.backoff.factor = opt_number(L, 5, "factor", 2);
    opts.backoff.jitter_ms =
        opt_number(L, 5, "jitter", opts.backoff.initial_ms / 4);
    if (tt_backoff_check(&opts.backoff) != 0)
      return luaL_argerror(L, 5, "bad backoff (initial <= max, factor >= 1)");
  }
  opts.timeout_ms = (uint64_t)(timeout + 0.5);
  if (timeout > 0 && opts.timeout_ms == 0) opts.timeout_ms = 1;
  opts.retries = (unsigned)retries;
  if (opts.retries > 0 && opts.timeout_ms == 0)
    return luaL_argerror(L, 4, "retries need a timeout");
  if (o == NULL || o->rpc == NULL)
    return tt_lua_fail(L, o == NULL ? TT_ERR_IPC_CHANNEL_CLOSED
                                    : TT_ERR_NO_CHANNEL, NULL);
  st = o->st;
  if ((err = tt_lua_encode_frame(L, st, 2, o->json, TT_FRAME_REQUEST,
                                 tt_channel_max_message(o->rpc->ch), &c)) != 0)
    return err;
  if ((err = check_too_big(L, o->rpc->ch, st, TT_FRAME_REQUEST)) != 0)
    return err;
  if (c.nbufs > 0 && !tt_channel_is_connected(o->rpc->ch)) {
    tt_lua_encode_done(st); /* (refused before the buffers are frozen) */
    return tt_lua_fail(L, TT_ERR_IPC_CHANNEL_CLOSED, NULL);
  }
  /* the callback's ref before the freeze: a raise (no memory) leaves the
   * buffers writable, and the ref goes if the freeze fails */
  lua_pushvalue(L, 6);
  ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if ((err = tt_lua_freeze_carried(L, st, &c)) != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return err;
  }
  /* the request's state lives in the call: one allocation per call */
  err = tt_rpc_call_with(o->rpc, st->wbuf.data + TT_FRAME_HEADER_SIZE,
                         st->wbuf.len - TT_FRAME_HEADER_SIZE, c.fds, c.nfds,
                         &opts, on_call_done, NULL, sizeof *req,
                         (void **)&req);
  tt_lua_encode_done(st);
  if (err != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return tt_lua_fail(L, err, NULL);
  }
  req->o = o;
  req->ch = o->rpc->ch;
  req->ref = ref;
  lua_pushboolean(L, 1);
  return 1;
}

int tt_lua_answer(lua_State *L, tt_lobj_t *o, tt_channel_t *ch, int at) {
  lua_Integer id = luaL_checkinteger(L, at);
  int fault = lua_toboolean(L, at + 2), automatic = lua_toboolean(L, at + 3);
  tt_state_t *st;
  tt_carried_t c;
  int err;
  luaL_checkany(L, at + 1);
  luaL_argcheck(L, id > 0 && id <= (lua_Integer)UINT32_MAX, at, "bad id");
  if (o == NULL || ch == NULL)
    return tt_lua_fail(L, TT_ERR_IPC_CHANNEL_CLOSED, NULL);
  st = o->st;
  /* a reply may carry a buffer; a fault is an error, which may not */
  if ((err = tt_lua_encode_frame(
           L, st, at + 1, o->json,
           fault || automatic ? TT_FRAME_FAULT : TT_FRAME_REPLY,
           tt_channel_max_message(ch), &c)) != 0)
    return err;
  if (c.nbufs > 0) { /* refused before the buffers are frozen */
    if (!tt_channel_is_connected(ch)) {
      tt_lua_encode_done(st);
      return tt_lua_fail(L, TT_ERR_IPC_CHANNEL_CLOSED, NULL);
    }
    if ((err = check_too_big(L, ch, st, TT_FRAME_REPLY)) != 0) return err;
  }
  if ((err = tt_lua_freeze_carried(L, st, &c)) != 0) return err;
  err = tt_peer_answer_fds(ch, (uint32_t)id,
                           automatic ? TT_ANSWER_REFUSAL
                           : fault   ? TT_ANSWER_FAULT
                                     : TT_ANSWER_REPLY,
                           st->wbuf.data + TT_FRAME_HEADER_SIZE,
                           st->wbuf.len - TT_FRAME_HEADER_SIZE, c.fds, c.nfds);
  tt_lua_encode_done(st);
  if (err != 0) return tt_lua_fail(L, err, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

int tt_lua_answer_method(lua_State *L, tt_lobj_t *o) {
  return tt_lua_answer(L, o, o && o->rpc ? o->rpc->ch : NULL, 2);
}
