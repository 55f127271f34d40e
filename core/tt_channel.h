/*
 * tether channel: framed messages over one connected AF_UNIX stream socket,
 * driven by a libuv loop.
 *
 * Sending never blocks and never raises SIGPIPE (MSG_NOSIGNAL).  Frames are
 * queued and written once per loop iteration, before it polls (an idle
 * handle: unlike a prepare, one re-armed from its own callback keeps the
 * poll from blocking), so
 * every frame queued in one iteration goes out in as few sendmsg() calls as
 * possible; small frames are packed into shared 64 KiB chunks.  A large
 * frame with nothing queued ahead of it is written at once from the caller's
 * memory, and only what the socket did not take is copied.  Partial writes and EAGAIN are handled by
 * waiting for POLLOUT.
 *
 * Receiving reads straight into the frame decoder's buffer and hands out
 * complete frames in place.  A malformed or oversized frame, an I/O error or
 * EOF ends the channel: `on_disconnect` runs exactly once, queued sends fail
 * with TT_ERR_IPC_CHANNEL_CLOSED (those sent without a callback are
 * reported together through on_error), and I/O stops; the owner then calls
 * tt_channel_close(), whose callback tells it the memory may be freed.
 *
 * Descriptors (native frames only): tt_channel_send_fds() sends a frame with
 * up to 16 descriptors (duplicates, closed once the kernel took the
 * frame's first byte, or with the frame's failure); received ones are
 * paired with their frame and handed out, in order, during on_frame
 * through tt_channel_take_fd(), else closed when on_frame returns.  Every
 * descriptor that arrived is closed on every path where no owner took it
 * (PROTOCOL.md, "Handles").  On a JSON-lines channel (Node's format)
 * nothing pairs a descriptor with a line: it waits (up to 32) until the
 * binding claims it for a NODE_HANDLE line with tt_channel_take_fd(), or
 * the channel ends.
 *
 * Every callback may call any channel function, including close.
 */
#ifndef TT_CHANNEL_H
#define TT_CHANNEL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "tt_frame.h"
#include "tt_limits.h" /* the defaults: high water, flush timeout, budget */

typedef struct tt_channel_s tt_channel_t;
typedef struct tt_chunk_s tt_chunk_t;

typedef void (*tt_channel_frame_cb)(tt_channel_t *ch, const tt_frame_header_t *h,
                                    const char *payload);
/* A failure found while reading or writing: TT_ERR_IPC_PROTOCOL (with `why`),
 * or a system error other than EOF/EPIPE/ECONNRESET.  Disconnect follows. */
typedef void (*tt_channel_error_cb)(tt_channel_t *ch, int err, const char *why);
typedef void (*tt_channel_event_cb)(tt_channel_t *ch);
/* Once per queued frame: 0 when handed to the kernel, else the error. */
typedef void (*tt_channel_send_cb)(void *arg, int status);

typedef struct {
  size_t max_message; /* 0: TT_FRAME_DEFAULT_MAX_MESSAGE */
  size_t high_water;  /* 0: TT_CHANNEL_DEFAULT_HIGH_WATER */
  int lines;          /* Node's JSON lines (tt_lines.h) instead of frames:
                         kinds 1-4 only, payloads without a raw "\n" */
  /* After tt_channel_disconnect(), the backlog is dropped (and reported)
   * when the peer has not taken it within this many ms.  0: the default,
   * TT_CHANNEL_DEFAULT_FLUSH_TIMEOUT; negative: wait for ever. */
  int64_t flush_timeout_ms;
} tt_channel_options_t;

typedef struct {
  uint64_t messages_sent; /* frames handed to the kernel (not heartbeats) */
  uint64_t messages_received; /* frames received (not heartbeats) */
  uint64_t bytes_sent;     /* bytes handed to the kernel */
  uint64_t bytes_received; /* bytes read from the kernel */
  uint64_t queued_bytes;   /* accepted but not yet handed to the kernel */
  uint64_t writes;         /* sendmsg() calls that wrote something */
  uint64_t auto_dropped;   /* automatic answers (pongs, refusals) not
                              queued because the peer was not reading */
} tt_channel_stats_t;

/* A descriptor in flight: to send (`pos`: the stream offset of its frame's
 * first byte) or received (`pos`: the offset its read ended at). */
typedef struct {
  uint64_t pos;
  int fd;
} tt_fd_at_t;

typedef struct {
  tt_fd_at_t *v;
  size_t cap, head, len;
} tt_fd_queue_t;

typedef struct {
  uint64_t end; /* queued_total when the frame's last byte is written */
  tt_channel_send_cb cb;
  void *arg;
  int heartbeat; /* PING/PONG: not a message */
} tt_send_ack_t;

struct tt_channel_s {
  void *data; /* owner's */
  uv_loop_t *loop;
  tt_channel_frame_cb on_frame;
  tt_channel_error_cb on_error;
  tt_channel_event_cb on_drain;
  tt_channel_event_cb on_disconnect;

  /* private */
  int fd;
  unsigned flags;
  int poll_events;
  int pending_closes;
  size_t high_water;
  uv_poll_t poll;
  uv_idle_t flusher;     /* writes the backlog; resumes paused reading */
  uv_timer_t drain_timer; /* bounds a disconnect's flush */
  int64_t flush_timeout_ms;
  int broken_err;        /* why a write failed where no callback may run */
  int end_err;           /* why it ended: 0 (EOF, a disconnect) or the error */
  int sending_auto;      /* inside tt_channel_send_auto */
  unsigned tick_frames;  /* handed out in this iteration */
  size_t tick_bytes;
  tt_channel_event_cb close_cb;
  tt_frame_decoder_t dec;
  tt_chunk_t *head, *tail;
  uint64_t queued_total, written_total;
  tt_send_ack_t *acks; /* ring of pending send callbacks */
  size_t acks_cap, acks_head, acks_len;
  tt_fd_queue_t tx_fds, rx_fds; /* descriptors to send, received */
  uint64_t rx_pos; /* stream offset of the next frame handed out */
  /* the frame being handed out's descriptors, in order, until taken */
  int cur_fds[TT_FRAME_MAX_FDS];
  unsigned cur_nfds, cur_next;
  tt_channel_stats_t stats;
};

/* Takes ownership of `fd` (a connected stream socket) and starts reading.
 * On failure the fd is left open and nothing needs closing. */
int tt_channel_init(uv_loop_t *loop, tt_channel_t *ch, int fd,
                    const tt_channel_options_t *opts);

/* Queues a frame, copying the payload.  Returns 1 if the backlog is under
 * the high-water mark, 0 if over (still queued: wait for on_drain), or a
 * negative error (TT_ERR_IPC_CHANNEL_CLOSED, TT_ERR_SERIALIZE for a frame
 * over max_message as it would be written, UV_ENOMEM); then `cb` is not
 * called. */
int tt_channel_send(tt_channel_t *ch, unsigned kind, uint32_t id,
                    const void *payload, size_t len, tt_channel_send_cb cb,
                    void *arg);
/* An answer the channel's owner gives on its own (a pong, a refusal): sent
 * like tt_channel_send() unless the backlog is over the high-water mark,
 * i.e. the peer is not reading; then it is dropped and counted
 * (stats.auto_dropped), so a peer cannot grow our memory by asking.
 * 1 when queued, 0 when dropped, or a negative error. */
/* As tt_channel_send(), with descriptor `fd` (the caller's stays open: a
 * duplicate travels).  Kinds MESSAGE, REQUEST or REPLY (on a JSON-lines
 * channel MESSAGE only: Node's NODE_HANDLE line); UV_EINVAL for others; a
 * failed dup (UV_EMFILE, UV_EBADF) is returned as is. */
int tt_channel_send_fd(tt_channel_t *ch, unsigned kind, uint32_t id,
                       const void *payload, size_t len, int fd,
                       tt_channel_send_cb cb, void *arg);
/* The same with `nfds` descriptors (0..TT_FRAME_MAX_FDS), which the peer
 * takes in this order; more than one only on a native channel. */
int tt_channel_send_fds(tt_channel_t *ch, unsigned kind, uint32_t id,
                        const void *payload, size_t len, const int *fds,
                        unsigned nfds, tt_channel_send_cb cb, void *arg);
/* During on_frame: the frame's next descriptor, in the order they were
 * sent, now the caller's (close-on-exec), or -1 when none is left.  On a
 * JSON-lines channel: the oldest descriptor not yet claimed, or -1. */
int tt_channel_take_fd(tt_channel_t *ch);
int tt_channel_send_auto(tt_channel_t *ch, unsigned kind, uint32_t id,
                         const void *payload, size_t len);
/* The size limit a payload of `len` bytes meets on the wire: 0, or
 * TT_ERR_SERIALIZE when the frame (or, in JSON mode, the line with its
 * envelope for `kind`, whatever the id) would exceed max_message. */
int tt_channel_check_size(const tt_channel_t *ch, unsigned kind, size_t len);
/* The same check before a channel exists (a supervisor's or pool's workers
 * will be opened with `o`; NULL: the defaults). */
int tt_channel_options_check_size(const tt_channel_options_t *o,
                                  unsigned kind, size_t len);
size_t tt_channel_max_message(const tt_channel_t *ch);
/* max_message of channels opened with `o` (the default resolved). */
size_t tt_channel_options_max_message(const tt_channel_options_t *o);
int tt_channel_is_lines(const tt_channel_t *ch);
/* Once ended (on_disconnect): why: 0 for an end of stream or a
 * disconnect, else the error told to on_error (TT_ERR_IPC_PROTOCOL for a
 * peer that sent what cannot be read). */
int tt_channel_end_error(const tt_channel_t *ch);
/* Stops accepting sends and reading; queued frames are still written, then
 * the channel disconnects.  A backlog the peer has not taken within the
 * flush timeout is dropped and reported (callbacks with
 * TT_ERR_IPC_CHANNEL_CLOSED, the others as one on_error).
 * TT_ERR_IPC_DISCONNECTED if already done. */
int tt_channel_disconnect(tt_channel_t *ch);
/* Ends the channel because of what the owner found (e.g. a payload that
 * does not decode): on_error(err, why), then on_disconnect, as for any
 * protocol error.  For TT_ERR_IPC_PROTOCOL, as for a protocol error found
 * here: nothing more is read, but what was queued before is still written
 * (bounded by the flush timeout, as tt_channel_disconnect) before
 * on_disconnect.  No-op once ended. */
void tt_channel_fail(tt_channel_t *ch, int err, const char *why);
/* The peer is known to be gone (its process exited): read what it left in
 * the socket, deliver it, then disconnect. */
void tt_channel_finish(tt_channel_t *ch);
/* Delivers what has arrived now (frames held back by the per-iteration
 * budget, then what the socket holds), from a loop callback: a timeout
 * about to expire looks first at answers that came while the process was
 * not running (stopped, or busy in a long callback). */
void tt_channel_read_now(tt_channel_t *ch);
/* Writes the backlog now, blocking up to `timeout_ms` (-1: no limit).
 * 0 when everything was handed to the kernel, UV_ETIMEDOUT, or the error
 * that ended the channel.  Calls nothing back: a channel that fails here
 * ends from the loop. */
int tt_channel_flush_sync(tt_channel_t *ch, int timeout_ms);
/* Bytes accepted but not yet handed to the kernel. */
size_t tt_channel_queued(const tt_channel_t *ch);
/* The socket (for poll(2) while flushing several channels at exit) and the
 * channel's flush timeout in ms (negative: none). */
int tt_channel_fd(const tt_channel_t *ch);
int64_t tt_channel_flush_timeout(const tt_channel_t *ch);

/* Whether the channel alone keeps the loop alive (default: no). */
void tt_channel_ref(tt_channel_t *ch, int ref);
int tt_channel_is_connected(const tt_channel_t *ch);
void tt_channel_stats(const tt_channel_t *ch, tt_channel_stats_t *out);

/* Idempotent.  Disconnects now (dropping the backlog) if still connected;
 * `cb` runs once every handle is closed: the memory may be freed then. */
void tt_channel_close(tt_channel_t *ch, tt_channel_event_cb cb);

/* In a child: the inherited channel fd named by TETHER_CHANNEL_FD, or by
 * NODE_CHANNEL_FD (a Node.js parent, or tether in JSON mode: then *lines
 * is set), made non-blocking and close-on-exec, the variables removed from
 * the environment (tt_handshake.h).  Handed out once: UV_ENOENT when there
 * is none or it was taken, UV_EBADF/UV_ENOTSOCK when
 * it is unusable (fds 0-2 are never a channel), UV_ENOTSUP for Node's
 * "advanced" serialization. */
int tt_channel_inherited_fd(int *fd, int *lines);

#endif /* TT_CHANNEL_H */
