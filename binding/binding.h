/*
 * Internals shared by the files of the tether.core binding.
 *
 * One tt_state_t per lua_State owns the libuv loop.  Every Lua-visible
 * object is a small userdata box pointing at malloc'd core memory that
 * starts with a tt_lobj_t, so the state can find and close every live object
 * when the Lua state closes, and core memory outlives the box until libuv's
 * close callbacks are done.  While an object is active its box is pinned in
 * the registry (self_ref); its Lua handler (one function receiving
 * (event, ...)) is held in handler_ref.  Both refs are released when the
 * object closes.
 */
#ifndef TT_LUA_BINDING_H
#define TT_LUA_BINDING_H

#include <lauxlib.h>
#include <lua.h>
#include <signal.h>
#include <uv.h>

#include "codec.h"
#include "tt_shmbuf.h"
#include "tt_channel.h"
#include "tt_rpc.h"
#include "tt_supervisor.h"
#include "util.h"

#define TT_CHILD_MT "tether.child"
#define TT_CHANNEL_MT "tether.channel"
#define TT_TIMER_MT "tether.timer"
#define TT_SIGNAL_MT "tether.signal"
#define TT_SUPERVISOR_MT "tether.supervisor"
#define TT_POOL_MT "tether.pool"
#define TT_HANDLE_MT "tether.handle"

typedef struct tt_state_s tt_state_t;
typedef struct tt_lobj_s tt_lobj_t;

/* Core memory is shared by the box and libuv: it is freed by whichever of
 * the box's __gc and the close callback (tt_lobj_closed) comes last. */
struct tt_lobj_s {
  tt_lobj_t *next, *prev; /* in state->objects until closed */
  tt_state_t *st;
  int self_ref;    /* pins the box while active */
  int handler_ref; /* function(event, ...) */
  /* a lone "message" listener: a native message without a descriptor goes
   * to it straight, not through the handler (tt_lua_on_frame) */
  int listener_ref;
  int request_ref; /* set_listener(fn, "request"): fn(value, id) */
  /* collected: the box's __gc ran, so no Lua callback may run any more;
   * box_gone: after that, the memory is ours to free. */
  unsigned closing : 1, closed : 1, collected : 1, box_gone : 1;
  unsigned json : 1; /* messages are JSON text (Node's format), not ours */
  tt_rpc_t *rpc; /* requests/replies on the object's channel, if any */
  tt_channel_t *ch; /* its channel, if any: flushed before the process exits */
  /* Starts closing everything now; must end in tt_lobj_closed(). */
  void (*teardown)(tt_lobj_t *o);
};

typedef struct {
  tt_lobj_t *o;
} tt_box_t;

struct tt_state_s {
  uv_loop_t loop;
  lua_State *L;     /* thread that runs callbacks (the caller of run) */
  int uncaught_ref; /* tether.on("uncaught") handler, or LUA_NOREF */
  int exit_ref;     /* the facade's exit(code), for tether.exit in a callback */
  /* errors raised by callbacks, waiting for run() to raise them in order:
   * errors_ref[errors_head..errors_tail] */
  int errors_ref;
  int errors_head, errors_tail;
  /* {"not enough memory", "not enough memory"}, made at start: what a
   * callback's memory error becomes (msgh does not run for those, and
   * making a box then may fail again) */
  int nomem_ref;
  /* Ctrl-C while the loop runs (see tether_core.c) */
  volatile sig_atomic_t interrupted;
  int interrupt_stashed;
  uv_async_t interrupt_async;
  struct sigaction sigint_saved;
  int sigint_watchers; /* tether.on_signal("SIGINT") handles active */
  int closing;      /* the Lua state is going away: no more callbacks */
  int running;      /* inside uv_run */
  int exiting;      /* tether.exit() was called from a callback */
  int exit_flushed; /* the channels were flushed for the exit */
  int max_depth;    /* codec nesting limit */
  int json_encode_ref, json_decode_ref; /* the facade's JSON codec */
  size_t live_buffers; /* tether.buffers open (binding/buffer.c) */
  tt_lobj_t objects; /* list head */
  tt_wbuf_t wbuf;   /* encoder output, reused */
};

tt_state_t *tt_state(lua_State *L);
/* Hands every channel's backlog to the kernel, waiting for slow readers
 * at most each channel's flush timeout (all in parallel).  Returns the
 * bytes still not written.  No callback runs. */
size_t tt_flush_all(tt_state_t *st);

/* Object bookkeeping.  new_box pushes a box of metatable `mt` for `o`
 * (allocated by the caller with malloc, zeroed), links it into the state,
 * pins it and takes a ref to the handler at handler_idx (0: none). */
tt_box_t *tt_lobj_new_box(lua_State *L, tt_lobj_t *o, const char *mt,
                          int handler_idx, void (*teardown)(tt_lobj_t *));
/* The object in the box at idx, or NULL when it is closing or closed. */
tt_lobj_t *tt_lobj_check(lua_State *L, int idx, const char *mt);
/* Drops the pin and the handler: no more events will be delivered. */
void tt_lobj_release(tt_lobj_t *o);
/* The body of a close/stop method (object at 1 of metatable `mt`): starts
 * closing it now, once; later calls and calls on a closed one do nothing.
 * Returns 0 (no results). */
int tt_lobj_close_method(lua_State *L, const char *mt);
/* Creates metatable `mt` for boxes: methods, __gc/__close (tt_lobj_gc) and
 * __tostring. */
void tt_lobj_class(lua_State *L, const char *mt, const luaL_Reg *methods,
                   lua_CFunction tostring);
/* From the last close callback. */
void tt_lobj_closed(tt_lobj_t *o);
/* __gc / __close of every box. */
int tt_lobj_gc(lua_State *L);
/* Runs the Lua function below `nargs` arguments protected, with a traceback:
 * a Lua error goes to the "uncaught" handler, or is stashed and the loop
 * stopped so run() re-raises it.  Never raises.  0 when the call succeeded.*/
int tt_call(tt_state_t *st, lua_State *L, int nargs);
/* tt_call's two halves: the protected call, which leaves the {err,
 * traceback} box on the stack when it fails (returns the status), and
 * what tt_call does with that box (pops it). */
int tt_pcall(tt_state_t *st, lua_State *L, int nargs);
void tt_route_error(tt_state_t *st, lua_State *L);
/* After a Ctrl-C (SIGINT taken while the loop runs): makes run() end with
 * "interrupted!" and returns 1; what was being done is abandoned (never
 * reported as a peer's fault).  0 when there was no Ctrl-C. */
int tt_interrupted(tt_state_t *st);
/* Pushes the handler and the event name; returns the lua_State to use, or
 * NULL when no callback may run (state closing or object released). */
lua_State *tt_lobj_begin(tt_lobj_t *o, const char *event);

/* The send method of channels and children: obj:send(value, [cb], [kind],
 * [id]).  `o` NULL means the object is closed; `ch` NULL that it has no
 * channel.  Returns true/false (backpressure) or nil, err. */
int tt_lua_send_method(lua_State *L, tt_lobj_t *o, tt_channel_t *ch);
/* h:set_listener(fn | nil): o's lone "message" listener, or none */
int tt_lua_set_listener_method(lua_State *L, tt_lobj_t *o);
/* Channel callbacks that decode and dispatch to an object's handler; the
 * channel's `data` must point at the tt_lobj_t. */
void tt_lua_on_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload);
void tt_lua_on_channel_error(tt_channel_t *ch, int err, const char *why);
void tt_lua_on_drain(tt_channel_t *ch);
int tt_lua_stats(lua_State *L, const tt_channel_t *ch, const tt_rpc_t *rpc);
/* obj:call(value, timeout_ms, retries, backoff_table, fn): fn(err, reply)
 * runs once.  Returns true or nil, err (then fn never runs). */
int tt_lua_call_method(lua_State *L, tt_lobj_t *o);
/* obj:answer(id, value, is_fault, automatic) -> true | nil, err */
int tt_lua_answer_method(lua_State *L, tt_lobj_t *o);
/* The same with (id, value, is_fault, automatic) at stack index `at`, on
 * `ch` (NULL: the asker is gone, ERR_IPC_CHANNEL_CLOSED). */
int tt_lua_answer(lua_State *L, tt_lobj_t *o, tt_channel_t *ch, int at);

/* A send's Lua callback (registry ref), run by tt_lua_on_sent. */
typedef struct {
  tt_lobj_t *o;
  int ref;
} tt_send_req_t;
void tt_lua_on_sent(void *arg, int status);
/* Encodes the value at idx into st->wbuf after room for a frame header:
 * 0, or the count of results (nil, err) pushed.  tt_lua_encode_done()
 * after the bytes were used. */
int tt_lua_encode(lua_State *L, tt_state_t *st, int idx, int json);
/* The same, with buffers carried by `attach` (NULL: none may travel). */
int tt_lua_encode_with(lua_State *L, tt_state_t *st, int idx, int json,
                       tt_codec_attach_t *attach);
void tt_lua_encode_done(tt_state_t *st);
/* The buffers a value to send holds, in the order of their tags, and the
 * descriptors its frame carries: the buffers', then a handle's. */
typedef struct {
  unsigned nbufs;
  tt_shmbuf_t *bufs[TT_FRAME_MAX_FDS];
  uint64_t bytes; /* their sizes, summed */
  int handle;     /* a handle's descriptor sent beside (-1: none) */
  unsigned nfds;  /* set by tt_lua_freeze_carried */
  int fds[TT_FRAME_MAX_FDS];
} tt_carried_t;
/* Encodes the value at idx for a frame of `kind` to a peer whose
 * max_message is `max_message`: tether.buffers may be in it when the frame
 * can carry their descriptors (a message, a request, a reply), and are
 * listed in *c, not yet frozen; their sizes together count toward
 * max_message.  0, or the
 * count of results (nil, err) pushed, the encoding released. */
int tt_lua_encode_frame(lua_State *L, tt_state_t *st, int idx, int json,
                        unsigned kind, size_t max_message, tt_carried_t *c);
/* Adds a handle's descriptor (fd >= 0) to what *c carries, if there is
 * room: 0, or the count of results (nil, err) pushed. */
int tt_lua_carry_handle(lua_State *L, tt_state_t *st, tt_carried_t *c,
                        int fd);
/* Freezes the buffers *c lists, once nothing else refuses the send, and
 * sets c->fds: 0, or the count of results (nil, err) pushed, the encoding
 * released. */
int tt_lua_freeze_buffers(lua_State *L, tt_state_t *st, tt_carried_t *c);
static inline int tt_lua_freeze_carried(lua_State *L, tt_state_t *st,
                                        tt_carried_t *c) {
  c->nfds = 0; /* (a call per message saved when nothing rides along) */
  return c->nbufs == 0 && c->handle < 0 ? 0 : tt_lua_freeze_buffers(L, st, c);
}
/* Pushes the decoded value and returns 1; or pushes why it failed and
 * returns 0 (malformed), -1 (out of memory) or -2 (a Ctrl-C interrupted
 * it: drop the frame, blame nobody; run() is ending).  Never raises. */
int tt_lua_decode(lua_State *L, tt_state_t *st, const char *p, size_t n,
                  int json, size_t max_message);
/* The same, taking a buffer's descriptor from `buffers_from` (during its
 * on_frame) for a BUFFER tag; NULL: none may travel. */
int tt_lua_decode_from(lua_State *L, tt_state_t *st, const char *p,
                       size_t n, int json, size_t max_message,
                       tt_channel_t *buffers_from);
/* The decode budget for a channel's max_message: a received message may
 * decode to at most this many bytes of Lua memory (TT_DECODE_FACTOR times
 * max_message, at least TT_DECODE_MIN), so a peer cannot make us use
 * unbounded memory per byte it sends. */
#define TT_DECODE_FACTOR 8
#define TT_DECODE_MIN ((size_t)64 << 20)
size_t tt_lua_decode_budget(size_t max_message);
/* nil, ERR_SERIALIZE "<what> of <len> bytes exceeds max_message (<max>
 * bytes)": what core's size checks refused. */
int tt_lua_too_large(lua_State *L, const char *what, size_t len, size_t max);
/* Our Lua heap in bytes (`L` a lua_State): the hook the peer protocol
 * (tt_peer.h) puts in heartbeat answers and the ready signal. */
uint64_t tt_lua_heap(void *L);

/* What a supervisor or pool box keeps for its workers' command line: the
 * argv and env arrays the core points into, and a ref to the facade's
 * option table, which holds their strings. */
typedef struct {
  int *fds; /* passed to this slot's workers (at the same numbers) */
  size_t nfds;
  char *handshake[2]; /* e.g. "TETHER_CLUSTER=shared:7", NULL */
} tt_lslot_t;
typedef struct {
  char **argv, **env;
  tt_lslot_t *slots; /* per slot (a cluster's sockets); NULL: none */
  unsigned nslots;
  int opts_ref;
} tt_lworkers_t;
/* Worker options from the facade's table at idx (see binding/supervisor.c):
 * 0, or the count of results (nil, err) pushed.  On success w's arrays are
 * allocated (tt_lua_workers_free() if the start then fails) and, when
 * *encoded, the shutdown message sits in the state's encode buffer: call
 * tt_lua_encode_done() once the core copied it. */
int tt_lua_worker_options(lua_State *L, int idx, tt_supervisor_options_t *so,
                          tt_lworkers_t *w, int *encoded);
void tt_lua_workers_free(tt_lworkers_t *w);
/* nil, err for a supervisor or pool that did not start; `log` (1, 2) is
 * the log file that could not be opened, named in the message. */
int tt_lua_start_failed(lua_State *L, int err,
                        const tt_supervisor_options_t *so, int log);
/* Once the core let go of the workers: the "close" event, then w and the
 * object are released. */
void tt_lua_workers_closed(tt_lobj_t *o, tt_lworkers_t *w);
/* Pushes {pid, uptime, state, restarts, rss, lua_heap} for one worker. */
void tt_lua_push_worker_info(lua_State *L, const tt_worker_info_t *in);
/* Pushes the error object for a FAULT payload value at the top (replacing
 * it): ERR_TASK_FAILED with the peer's message, code and traceback. */
void tt_lua_fault_error(lua_State *L);

void tt_open_child(lua_State *L);
void tt_open_pool(lua_State *L);
void tt_open_supervisor(lua_State *L);
void tt_open_channel(lua_State *L);
void tt_open_handle(lua_State *L);
void tt_open_acceptor(lua_State *L);
void tt_open_redis(lua_State *L);
void tt_open_fs(lua_State *L);
void tt_open_zygote(lua_State *L);
/* The `zygote` spawn option at idx (core.zygote_pair's asker), or NULL
 * when it is not one or is closed. */
struct tt_zygote_s *tt_lua_zygote(lua_State *L, int idx);
/* The descriptor a received native MESSAGE carries, taken; -1: none (and
 * always on a JSON-lines channel, where the facade claims one for a
 * NODE_HANDLE message with take_handle). */
int tt_lua_frame_fd(tt_channel_t *ch, const tt_frame_header_t *h);
/* take_handle(): a handle on the oldest unclaimed descriptor, or nil. */
int tt_lua_take_handle(lua_State *L, tt_channel_t *ch);
/* A new handle owning `fd`. */
int tt_lua_push_handle(lua_State *L, int fd);
/* An empty handle (fd -1) on the stack, and where its descriptor goes:
 * made before a descriptor is taken, so that no raise can lose it. */
int *tt_lua_new_handle(lua_State *L);
/* The fd of the handle at `idx`: -1 when it is empty, -2 when the value is
 * not a handle. */
int tt_lua_handle_fd(lua_State *L, int idx);
/* An optional handle argument at `idx`: its fd, -1 when absent, -2 when
 * the handle is empty; an argument error for another value. */
int tt_lua_opt_handle_fd(lua_State *L, int idx);
void tt_open_timer(lua_State *L);
void tt_open_buffer(lua_State *L);
/* The tether.buffer at idx, or NULL. */
tt_shmbuf_t *tt_lua_buffer_test(lua_State *L, int idx);
/* Pushes a new, empty (closed) buffer to fill (tt_shmbuf_adopt). */
tt_shmbuf_t *tt_lua_new_buffer(lua_State *L);
/* Counts a new buffer of `size` bytes (open) and tells the collector of it:
 * a step as if its bytes were allocated, at least 64 KiB (its descriptor),
 * and a full collection once open buffers hold a quarter of the
 * descriptors we may have.  Not while the program stopped the collector. */
void tt_lua_buffer_pressure(lua_State *L, size_t size);

#endif
