/*
 * Channel: see tt_channel.h for the promise.
 *
 * Invariants:
 * - head..tail chunks hold exactly queued_total - written_total unsent bytes;
 *   a chunk's bytes [off, len) are unsent, [len, cap) are free.
 * - acks holds one record per queued frame that has a callback, ordered by
 *   `end`; a record is popped (and its callback run) once written_total
 *   reaches its end, or failed when the channel ends.
 * - The poll watches READABLE while reading and WRITABLE only while a write
 *   hit EAGAIN; the flusher (idle) is active only while a flush or a paused
 *   read is pending.
 * - Reading pauses once TT_CHANNEL_FRAMES_PER_TICK frames (or
 *   TT_CHANNEL_BYTES_PER_TICK bytes) were handed out in one iteration: the
 *   rest stays in the decoder, readable events are ignored, and the
 *   flusher goes on with it in the next iteration, after our own writes.
 * - The loop is kept alive by the channel while bytes are queued or a
 *   disconnect is in progress, else only when the owner asked (ref).
 * - Memory is freed only after the three handles' close callbacks.
 */
#include "tt_channel.h"
#include "tt_handshake.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "tt_error.h"
#include "tt_lines.h"

/* Frames up to this size are packed into shared chunks. */
#define TT_CHANNEL_COALESCE_MAX ((size_t)32 << 10)
#define TT_CHANNEL_CHUNK_SIZE ((size_t)64 << 10)
/* iovecs per sendmsg(); well under IOV_MAX. */
#define TT_CHANNEL_MAX_IOV 64
/* Asked for as SO_SNDBUF; the kernel caps it (net.core.wmem_max), which is
 * still about twice its default: half the wake-ups for large messages. */
#define TT_CHANNEL_SNDBUF (4 << 20)
/* Reads per readable event, so one busy peer cannot starve the loop. */
#define TT_CHANNEL_MAX_READS 32
/* Descriptors taken per recvmsg(); more in one read is a protocol error
 * (the kernel closes those that do not fit: MSG_CTRUNC). */
#define TT_CHANNEL_MAX_RX_FDS 16
/* Descriptors received and not yet handed out (a native frame's comes with
 * its first byte, a JSON line's waits for its NODE_HANDLE message): more
 * is a protocol error, so a peer cannot make us hold descriptors. */
#define TT_CHANNEL_MAX_PENDING_FDS (2 * TT_FRAME_MAX_FDS)

enum {
  CH_CONNECTED = 1u << 0,     /* sends accepted */
  CH_READING = 1u << 1,       /* poll for READABLE */
  CH_WRITE_BLOCKED = 1u << 2, /* poll for WRITABLE */
  CH_DISCONNECTING = 1u << 3, /* local disconnect: flush, then end */
  CH_ENDED = 1u << 4,         /* on_disconnect has run (or is running) */
  CH_CLOSING = 1u << 5,       /* tt_channel_close called */
  CH_REF = 1u << 6,           /* owner wants the loop kept alive */
  CH_NEED_DRAIN = 1u << 7,    /* send returned 0: emit on_drain when empty */
  CH_SCHEDULED = 1u << 8,     /* flusher active */
  CH_BROKEN = 1u << 9,        /* a write failed outside the loop: end there */
  CH_PAUSED = 1u << 10,       /* this iteration's budget is spent */
  CH_UNBOUNDED = 1u << 11,    /* delivering without a budget (finishing) */
  /* Reading is held while our output to the peer is over
   * TT_CHANNEL_HOLD_FACTOR x high_water: a peer that sends requests and
   * never reads the answers cannot grow our memory; it is read again once
   * the output is down to high_water. */
  CH_HELD = 1u << 12
};

struct tt_chunk_s {
  tt_chunk_t *next;
  char *data; /* right after the struct */
  size_t off, len, cap;
};

static void channel_end(tt_channel_t *ch, int err, const char *why);
static void protocol_end(tt_channel_t *ch, const char *why);
static void on_drain_timeout(uv_timer_t *t);
static void channel_end_lost(tt_channel_t *ch, int err, const char *why,
                             const char *lost_why);
static void on_poll(uv_poll_t *h, int status, int events);

static uint64_t queued(const tt_channel_t *ch) {
  return ch->queued_total - ch->written_total;
}

/* (not while finishing: the peer is gone, what it left is read anyway) */
static int held(const tt_channel_t *ch) {
  return (ch->flags & (CH_HELD | CH_UNBOUNDED)) == CH_HELD;
}

static void update_poll(tt_channel_t *ch) {
  int events = 0;
  if (ch->flags & CH_CLOSING) return;
  /* (also while paused: the flusher keeps the loop from blocking then, and
   * readiness is ignored until the held-back frames are out; no epoll_ctl
   * churn per batch) */
  if ((ch->flags & CH_READING) && !held(ch)) events |= UV_READABLE;
  if (ch->flags & CH_WRITE_BLOCKED) events |= UV_WRITABLE;
  if (events != ch->poll_events) {
    ch->poll_events = events;
    if (events)
      uv_poll_start(&ch->poll, events, on_poll);
    else
      uv_poll_stop(&ch->poll);
  }
  /* Alive while data or a disconnect is pending, so nothing queued is lost
   * because the loop ran out of other work. */
  if ((ch->flags & CH_REF) || queued(ch) > 0 || (ch->flags & CH_DISCONNECTING))
    uv_ref((uv_handle_t *)&ch->poll);
  else
    uv_unref((uv_handle_t *)&ch->poll);
}

static void schedule_flush(tt_channel_t *ch);
static void schedule_idle(tt_channel_t *ch);

/* ---- acks ---------------------------------------------------------------- */

static int ack_push(tt_channel_t *ch, tt_channel_send_cb cb, void *arg,
                    int heartbeat) {
  if (ch->acks_len == ch->acks_cap) {
    size_t ncap = ch->acks_cap ? ch->acks_cap * 2 : 16;
    tt_send_ack_t *na = malloc(ncap * sizeof *na);
    if (na == NULL) return UV_ENOMEM;
    for (size_t i = 0; i < ch->acks_len; i++)
      na[i] = ch->acks[(ch->acks_head + i) % ch->acks_cap];
    free(ch->acks);
    ch->acks = na;
    ch->acks_cap = ncap;
    ch->acks_head = 0;
  }
  tt_send_ack_t *a = &ch->acks[(ch->acks_head + ch->acks_len) % ch->acks_cap];
  a->end = ch->queued_total;
  a->cb = cb;
  a->arg = arg;
  a->heartbeat = heartbeat;
  ch->acks_len++;
  return 0;
}

/* Pops the records of frames fully written (status 0: counted as sent,
 * callback told 0) or, with status != 0, of every pending frame (callback
 * told the error).  Returns how many of those had no callback.  A callback
 * may re-enter the channel. */
static size_t ack_run(tt_channel_t *ch, int status) {
  size_t silent = 0;
  while (ch->acks_len > 0) {
    tt_send_ack_t a = ch->acks[ch->acks_head];
    if (status == 0 && a.end > ch->written_total) break;
    ch->acks_head = (ch->acks_head + 1) % ch->acks_cap;
    ch->acks_len--;
    /* heartbeat frames are the channel's own business: not counted as
     * messages, not reported when lost */
    if (status == 0 && !a.heartbeat) ch->stats.messages_sent++;
    if (a.cb != NULL)
      a.cb(a.arg, status);
    else if (!a.heartbeat)
      silent++;
  }
  return silent;
}

/* ---- descriptors ----------------------------------------------------------- */

/* Room for `n` more, so that pushes after it cannot fail. */
static int fdq_reserve(tt_fd_queue_t *q, size_t n) {
  size_t ncap;
  tt_fd_at_t *nv;
  if (q->len + n <= q->cap) return 0;
  ncap = q->cap ? q->cap * 2 : 4;
  while (ncap < q->len + n) ncap *= 2;
  if ((nv = malloc(ncap * sizeof *nv)) == NULL) return UV_ENOMEM;
  for (size_t i = 0; i < q->len; i++) nv[i] = q->v[(q->head + i) % q->cap];
  free(q->v);
  q->v = nv;
  q->cap = ncap;
  q->head = 0;
  return 0;
}

static int fdq_push(tt_fd_queue_t *q, uint64_t pos, int fd) {
  int err = fdq_reserve(q, 1);
  if (err != 0) return err;
  q->v[(q->head + q->len) % q->cap] = (tt_fd_at_t){pos, fd};
  q->len++;
  return 0;
}

static tt_fd_at_t *fdq_at(tt_fd_queue_t *q, size_t i) {
  return i < q->len ? &q->v[(q->head + i) % q->cap] : NULL;
}

static int fdq_pop(tt_fd_queue_t *q) {
  int fd = q->v[q->head].fd;
  q->head = (q->head + 1) % q->cap;
  q->len--;
  return fd;
}

static void fdq_close_all(tt_fd_queue_t *q) {
  while (q->len > 0) close(fdq_pop(q));
}

static void close_fds(const int *fds, unsigned n) {
  for (unsigned i = 0; i < n; i++) close(fds[i]);
}

static void fdq_free(tt_fd_queue_t *q) {
  fdq_close_all(q);
  free(q->v);
  memset(q, 0, sizeof *q);
}

/* ---- send queue ------------------------------------------------------------ */

static void queue_free(tt_channel_t *ch) {
  tt_chunk_t *c = ch->head;
  while (c != NULL) {
    tt_chunk_t *next = c->next;
    free(c);
    c = next;
  }
  ch->head = ch->tail = NULL;
  ch->written_total = ch->queued_total;
  fdq_close_all(&ch->tx_fds); /* never sent: the peer got none */
}

static void queue_append(tt_channel_t *ch, tt_chunk_t *c) {
  c->next = NULL;
  if (ch->tail)
    ch->tail->next = c;
  else
    ch->head = c;
  ch->tail = c;
}

static const char *truncated(const tt_channel_t *ch) {
  return ch->dec.lines ? "partial line at end of stream (no \"\\n\")"
                       : "truncated frame at end of stream";
}

static int check_size(size_t max, int lines, unsigned kind, size_t len) {
  /* in JSON mode the peer's limit is on the line as written, envelope
   * included (the "\n" is not counted), whatever the id's digits */
  if (len > max || (lines && len + tt_lines_overhead(kind) > max))
    return TT_ERR_SERIALIZE;
  return 0;
}

int tt_channel_check_size(const tt_channel_t *ch, unsigned kind, size_t len) {
  return check_size(ch->dec.max_message, ch->dec.lines, kind, len);
}

size_t tt_channel_options_max_message(const tt_channel_options_t *o) {
  /* as tt_channel_init() clamps it: a frame's length is 32 bits */
  if (o == NULL || o->max_message == 0) return TT_FRAME_DEFAULT_MAX_MESSAGE;
  return o->max_message < UINT32_MAX ? o->max_message : UINT32_MAX;
}

int tt_channel_options_check_size(const tt_channel_options_t *o,
                                  unsigned kind, size_t len) {
  return check_size(tt_channel_options_max_message(o), o && o->lines, kind,
                    len);
}

size_t tt_channel_max_message(const tt_channel_t *ch) {
  return ch->dec.max_message;
}

int tt_channel_is_lines(const tt_channel_t *ch) { return ch->dec.lines; }

int tt_channel_end_error(const tt_channel_t *ch) { return ch->end_err; }

size_t tt_channel_queued(const tt_channel_t *ch) { return (size_t)queued(ch); }

int tt_channel_fd(const tt_channel_t *ch) { return ch->fd; }

int64_t tt_channel_flush_timeout(const tt_channel_t *ch) {
  return ch->flush_timeout_ms;
}

static int check_send(tt_channel_t *ch, unsigned kind, size_t len) {
  if (!(ch->flags & CH_CONNECTED)) return TT_ERR_IPC_CHANNEL_CLOSED;
  return tt_channel_check_size(ch, kind, len);
}

/* Accounts a frame of `total` bytes of which `done` were already written
 * directly, registers its callback, and schedules the flush (which also
 * runs callbacks of frames written directly). */
static int queued_frame(tt_channel_t *ch, unsigned kind, size_t total,
                        size_t done, tt_channel_send_cb cb, void *arg) {
  ch->queued_total += total;
  ch->written_total += done;
  /* One record per frame, callback or not: it counts the frame as sent
   * once written, or as lost if the channel ends first. */
  if (ack_push(ch, cb, arg, kind >= TT_FRAME_PING || ch->sending_auto) != 0 &&
      cb != NULL) {
    /* The frame is queued and will go out; only its receipt is lost.  Say
     * so now rather than never. */
    cb(arg, UV_ENOMEM);
  }
  schedule_flush(ch);
  if (queued(ch) > ch->high_water) {
    ch->flags |= CH_NEED_DRAIN;
    return 0;
  }
  return 1;
}

/* One sendmsg(), with `nfds` descriptors on its first byte: bytes
 * written, 0 when the socket is full, or -errno. */
static ssize_t send_iov(tt_channel_t *ch, struct iovec *iov, int n,
                        const int *fds, unsigned nfds) {
  struct msghdr msg;
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * TT_FRAME_MAX_FDS)];
  } cm;
  ssize_t w;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = (size_t)n;
  if (nfds > 0) {
    struct cmsghdr *c;
    memset(&cm, 0, sizeof cm);
    msg.msg_control = cm.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  do
    w = sendmsg(ch->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (w < 0 && errno == EINTR);
  if (w < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
  ch->stats.bytes_sent += (uint64_t)w;
  ch->stats.writes++;
  return w;
}

/* A frame as the three pieces that go on the wire: header (or a line's
 * envelope prefix), payload, and trailer (a line's end). */
typedef struct {
  const char *part[3];
  size_t len[3];
} tt_wire_t;

/* A large frame with nothing queued before it is written at once from the
 * caller's memory: no copy, no allocation.  Returns the bytes written; the
 * caller queues the rest.  A failure is left for the flush to meet again,
 * so the channel ends from the loop, not inside send(). */
static size_t write_direct(tt_channel_t *ch, const tt_wire_t *f,
                           const int *fds, unsigned nfds) {
  struct iovec iov[3];
  int n = 0;
  ssize_t w;
  for (int i = 0; i < 3; i++) {
    if (f->len[i] == 0) continue;
    iov[n].iov_base = (void *)f->part[i];
    iov[n++].iov_len = f->len[i];
  }
  w = send_iov(ch, iov, n, fds, nfds);
  return w > 0 ? (size_t)w : 0;
}

/* Copies the bytes of `f` from offset `from` on to `dst`. */
static void copy_wire(char *dst, const tt_wire_t *f, size_t from) {
  for (int i = 0; i < 3; i++) {
    if (from >= f->len[i]) {
      from -= f->len[i];
      continue;
    }
    memcpy(dst, f->part[i] + from, f->len[i] - from);
    dst += f->len[i] - from;
    from = 0;
  }
}

/* Queues a frame; `fds` are `nfds` descriptors of ours (duplicates) that
 * go with it, closed here once sent or on failure. */
static int send_frame(tt_channel_t *ch, unsigned kind, uint32_t id,
                      const void *payload, size_t len, const int *fds,
                      unsigned nfds, tt_channel_send_cb cb, void *arg) {
  size_t total, done = 0, rest;
  uint64_t start = ch->queued_total;
  char head[TT_LINES_HEAD_MAX > TT_FRAME_HEADER_SIZE ? TT_LINES_HEAD_MAX
                                                      : TT_FRAME_HEADER_SIZE];
  char tail[2];
  tt_wire_t f;
  tt_chunk_t *c = ch->tail;
  int err = check_send(ch, kind, len);
  if (err == 0 && nfds > 0) err = fdq_reserve(&ch->tx_fds, nfds);
  if (err != 0) {
    close_fds(fds, nfds);
    return err;
  }

  f.part[0] = head;
  f.part[1] = payload;
  f.part[2] = tail;
  f.len[1] = len;
  if (ch->dec.lines) {
    /* a raw newline inside would split the message in two for the peer */
    if ((err = tt_lines_pack(kind, id, head, &f.len[0], tail, &f.len[2])) !=
            0 ||
        (len > 0 && memchr(payload, '\n', len) != NULL)) {
      close_fds(fds, nfds);
      return UV_EINVAL;
    }
  } else {
    tt_frame_header_pack((unsigned char *)head, kind, tt_frame_fd_flags(nfds),
                         id, (uint32_t)len);
    f.len[0] = TT_FRAME_HEADER_SIZE;
    f.len[2] = 0;
  }
  total = f.len[0] + len + f.len[2];
  /* Written at once when nothing is queued: a large frame (not copied),
   * and a frame with a descriptor, whatever its size, which rides on the
   * first byte: our duplicate is closed as soon as the kernel has it, so a
   * burst of such sends does not hold a descriptor per frame (EMFILE).
   * Otherwise the queue takes it, and write_some puts the descriptor on
   * its first byte. */
  if ((nfds > 0 || total > TT_CHANNEL_COALESCE_MAX) && queued(ch) == 0 &&
      !(ch->flags & CH_WRITE_BLOCKED)) {
    done = write_direct(ch, &f, fds, nfds);
    if (done > 0 && nfds > 0) {
      close_fds(fds, nfds); /* (the peer's now) */
      nfds = 0;
    }
    if (done == total) return queued_frame(ch, kind, total, done, cb, arg);
  }
  rest = total - done;
  if (c == NULL || c->cap - c->len < rest) {
    size_t cap = rest > TT_CHANNEL_COALESCE_MAX ? rest : TT_CHANNEL_CHUNK_SIZE;
    c = malloc(sizeof *c + cap);
    if (c == NULL) {
      close_fds(fds, nfds);
      if (done == 0) return UV_ENOMEM;
      /* Part of the frame is on the wire: the stream cannot go on.  It
       * ends from the loop (the flusher), never inside send(). */
      ch->flags &= ~CH_CONNECTED;
      ch->flags |= CH_BROKEN;
      ch->broken_err = UV_ENOMEM;
      schedule_idle(ch);
      return UV_ENOMEM;
    }
    c->data = (char *)(c + 1);
    c->off = c->len = 0;
    c->cap = cap;
    queue_append(ch, c);
  }
  copy_wire(c->data + c->len, &f, done); /* what was not written yet */
  c->len += rest;
  for (unsigned i = 0; i < nfds; i++) /* reserved: cannot fail */
    fdq_push(&ch->tx_fds, start, fds[i]);
  return queued_frame(ch, kind, total, total - rest, cb, arg);
}

int tt_channel_send(tt_channel_t *ch, unsigned kind, uint32_t id,
                    const void *payload, size_t len, tt_channel_send_cb cb,
                    void *arg) {
  return send_frame(ch, kind, id, payload, len, NULL, 0, cb, arg);
}

int tt_channel_send_fd(tt_channel_t *ch, unsigned kind, uint32_t id,
                       const void *payload, size_t len, int fd,
                       tt_channel_send_cb cb, void *arg) {
  return tt_channel_send_fds(ch, kind, id, payload, len, &fd, 1, cb, arg);
}

/* (apart, so that a frame without descriptors does not pay for the array) */
static int send_dups(tt_channel_t *ch, unsigned kind, uint32_t id,
                     const void *payload, size_t len, const int *fds,
                     unsigned nfds, tt_channel_send_cb cb, void *arg) {
  int dup[TT_FRAME_MAX_FDS];
  /* a JSON line carries one as Node's NODE_HANDLE message, which the
   * binding writes */
  if (!tt_frame_kind_carries_fd(kind) || nfds > TT_FRAME_MAX_FDS ||
      (ch->dec.lines && (kind != TT_FRAME_MESSAGE || nfds > 1)))
    return UV_EINVAL;
  if (!(ch->flags & CH_CONNECTED)) return TT_ERR_IPC_CHANNEL_CLOSED;
  for (unsigned i = 0; i < nfds; i++) {
    if ((dup[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3)) < 0) {
      int err = -errno;
      close_fds(dup, i);
      return err;
    }
  }
  return send_frame(ch, kind, id, payload, len, dup, nfds, cb, arg);
}

int tt_channel_send_fds(tt_channel_t *ch, unsigned kind, uint32_t id,
                        const void *payload, size_t len, const int *fds,
                        unsigned nfds, tt_channel_send_cb cb, void *arg) {
  if (nfds == 0) return send_frame(ch, kind, id, payload, len, NULL, 0, cb, arg);
  return send_dups(ch, kind, id, payload, len, fds, nfds, cb, arg);
}

int tt_channel_take_fd(tt_channel_t *ch) {
  if (ch->cur_next < ch->cur_nfds) return ch->cur_fds[ch->cur_next++];
  /* JSON lines pair nothing: the oldest pending one is the claimant's */
  if (ch->dec.lines && ch->rx_fds.len > 0) return fdq_pop(&ch->rx_fds);
  return -1;
}

int tt_channel_send_auto(tt_channel_t *ch, unsigned kind, uint32_t id,
                         const void *payload, size_t len) {
  int rc;
  if ((ch->flags & CH_CONNECTED) && queued(ch) > ch->high_water) {
    ch->stats.auto_dropped++;
    return 0;
  }
  /* the channel's own answer (a refusal): not the owner's message, so
   * neither counted as sent nor reported as lost */
  ch->sending_auto = 1;
  rc = tt_channel_send(ch, kind, id, payload, len, NULL, NULL);
  ch->sending_auto = 0;
  return rc < 0 ? rc : 1;
}

/* Drops written bytes from the front of the queue.  The last chunk is kept
 * for reuse when it has the standard size (a large frame's own chunk is
 * not, so one big message does not pin its memory). */
static void queue_consume(tt_channel_t *ch, size_t n) {
  while (n > 0) {
    tt_chunk_t *c = ch->head;
    size_t left = c->len - c->off;
    size_t take = n < left ? n : left;
    c->off += take;
    n -= take;
    if (c->off == c->len) {
      if (c == ch->tail && c->cap == TT_CHANNEL_CHUNK_SIZE) {
        c->off = c->len = 0;
      } else {
        ch->head = c->next;
        if (ch->head == NULL) ch->tail = NULL;
        free(c);
      }
    }
  }
}

/* One sendmsg() of as much as is queued.  A descriptor goes on the first
 * byte of its frame: a sendmsg() that starts there carries it, and one
 * that does not stops short of it.  Returns bytes written, 0 when the
 * socket is full, or a negative error. */
static ssize_t write_some(tt_channel_t *ch) {
  struct iovec iov[TT_CHANNEL_MAX_IOV];
  int n = 0, fds[TT_FRAME_MAX_FDS];
  unsigned nfds = 0;
  uint64_t limit = UINT64_MAX;
  ssize_t w;
  tt_fd_at_t *next = fdq_at(&ch->tx_fds, 0);

  /* (one frame's descriptors share its position) */
  while (next != NULL && next->pos == ch->written_total &&
         nfds < TT_FRAME_MAX_FDS) {
    fds[nfds++] = next->fd;
    next = fdq_at(&ch->tx_fds, nfds);
  }
  if (next != NULL) limit = next->pos - ch->written_total;
  for (tt_chunk_t *c = ch->head; c != NULL && n < TT_CHANNEL_MAX_IOV &&
                                 limit > 0;
       c = c->next) {
    size_t k = c->len - c->off;
    if (k == 0) continue;
    if (k > limit) k = (size_t)limit;
    iov[n].iov_base = c->data + c->off;
    iov[n].iov_len = k;
    limit -= k;
    n++;
  }
  if (n == 0) return 0;
  w = send_iov(ch, iov, n, fds, nfds);
  if (w > 0) {
    /* the peer has its own copies now */
    for (unsigned i = 0; i < nfds; i++) close(fdq_pop(&ch->tx_fds));
    queue_consume(ch, (size_t)w);
    ch->written_total += (uint64_t)w;
  }
  return w;
}

static void drain_then_end(tt_channel_t *ch);

/* EPIPE/ECONNRESET mean the peer is gone: a disconnect, not an error; what
 * it wrote before it went is still in our socket and is delivered first
 * (a child that reports why it failed and exits must be heard, even when
 * we were writing to it meanwhile). */
static int write_failed(tt_channel_t *ch, int err) {
  if (err == UV_EPIPE || err == UV_ECONNRESET)
    drain_then_end(ch);
  else
    channel_end(ch, err, "write failed");
  return err;
}

/* Writes until the queue is empty or the socket is full, then runs the
 * callbacks, drain and a pending disconnect.  Returns 0 or the error that
 * ended the channel. */
static int flush(tt_channel_t *ch) {
  ssize_t w = 1;
  while (queued(ch) > 0) {
    w = write_some(ch);
    if (w <= 0) break;
  }
  if (w < 0) return write_failed(ch, (int)w);
  if (queued(ch) > 0)
    ch->flags |= CH_WRITE_BLOCKED;
  else
    ch->flags &= ~CH_WRITE_BLOCKED;
  if ((ch->flags & CH_HELD) && queued(ch) <= ch->high_water) {
    /* the peer took our output: read it again, frames held back first */
    ch->flags &= ~CH_HELD;
    if (ch->flags & CH_PAUSED) schedule_idle(ch);
  }
  update_poll(ch);
  ack_run(ch, 0);
  if (ch->flags & CH_ENDED) return 0;
  if (queued(ch) == 0) {
    if (ch->flags & CH_DISCONNECTING) {
      channel_end(ch, 0, NULL);
      return 0;
    }
    if (ch->flags & CH_NEED_DRAIN) {
      ch->flags &= ~CH_NEED_DRAIN;
      if (ch->on_drain) ch->on_drain(ch);
    }
  }
  return 0;
}

static void resume_reading(tt_channel_t *ch);

static void on_flusher(uv_idle_t *h) {
  tt_channel_t *ch = h->data;
  ch->flags &= ~CH_SCHEDULED;
  uv_idle_stop(h);
  if (ch->flags & CH_BROKEN) {
    ch->flags &= ~CH_BROKEN;
    if (ch->broken_err == UV_ENOMEM)
      channel_end(ch, UV_ENOMEM, "out of memory queueing a frame");
    else
      write_failed(ch, ch->broken_err);
    return;
  }
  /* our answers to the last batch go out before the next batch is read */
  if (!(ch->flags & CH_WRITE_BLOCKED) && queued(ch) > 0 && flush(ch) != 0)
    return;
  if (ch->flags & CH_ENDED) return;
  if ((ch->flags & CH_PAUSED) && !held(ch))
    resume_reading(ch);
  else if (!(ch->flags & CH_WRITE_BLOCKED))
    flush(ch); /* callbacks, drain, a pending disconnect */
}

static void schedule_idle(tt_channel_t *ch) {
  if (ch->flags & (CH_SCHEDULED | CH_CLOSING)) return;
  ch->flags |= CH_SCHEDULED;
  uv_idle_start(&ch->flusher, on_flusher);
}

static void schedule_flush(tt_channel_t *ch) {
  if (ch->flags & CH_WRITE_BLOCKED) return;
  schedule_idle(ch);
}

/* ---- reading ----------------------------------------------------------- */

/* Pairs a native frame with its descriptor.  A descriptor comes with its
 * frame's first byte, so one that arrived with a read ending at `pos` must
 * be taken by a frame that starts before `pos`.  0, or 1 after ending the
 * channel (a protocol error). */
static int pair_fd(tt_channel_t *ch, const tt_frame_header_t *h) {
  uint64_t start = ch->rx_pos;
  tt_fd_at_t *f = fdq_at(&ch->rx_fds, 0), *last;
  unsigned n;
  ch->rx_pos += TT_FRAME_HEADER_SIZE + (uint64_t)h->len;
  if (f != NULL && f->pos <= start) {
    protocol_end(ch, "a descriptor came without its frame");
    return 1;
  }
  if (!(h->flags & TT_FRAME_F_HANDLE)) return 0;
  if (!tt_frame_kind_carries_fd(h->kind)) {
    protocol_end(ch, "a descriptor on a frame kind that cannot carry one");
    return 1;
  }
  if (f == NULL) {
    protocol_end(ch, "a frame that carries a descriptor came without one");
    return 1;
  }
  /* all of a frame's descriptors come with the one read */
  n = tt_frame_fd_count(h->flags);
  last = fdq_at(&ch->rx_fds, n - 1);
  if (last == NULL || last->pos != f->pos) {
    protocol_end(ch, "a frame came with fewer descriptors than its header says");
    return 1;
  }
  for (unsigned i = 0; i < n; i++) ch->cur_fds[i] = fdq_pop(&ch->rx_fds);
  ch->cur_nfds = n;
  ch->cur_next = 0;
  return 0;
}

static int deliver(void *ctx, const tt_frame_header_t *h, const char *payload) {
  tt_channel_t *ch = ctx;
  if (!ch->dec.lines && pair_fd(ch, h) != 0) return 1;
  if (h->kind < TT_FRAME_PING) ch->stats.messages_received++;
  ch->tick_frames++;
  ch->tick_bytes += TT_FRAME_HEADER_SIZE + (size_t)h->len;
  ch->on_frame(ch, h, payload);
  if (ch->cur_nfds > 0) { /* those nobody took */
    close_fds(ch->cur_fds + ch->cur_next, ch->cur_nfds - ch->cur_next);
    ch->cur_nfds = ch->cur_next = 0;
  }
  /* The owner may have ended or closed the channel from the callback. */
  if (!(ch->flags & CH_READING)) return 1;
  if (!(ch->flags & CH_UNBOUNDED) &&
      queued(ch) > (uint64_t)ch->high_water * TT_CHANNEL_HOLD_FACTOR) {
    /* the rest waits until the peer takes our output (flush) */
    ch->flags |= CH_HELD | CH_PAUSED;
    update_poll(ch);
    return 1;
  }
  if (!(ch->flags & CH_UNBOUNDED) &&
      (ch->tick_frames >= TT_CHANNEL_FRAMES_PER_TICK ||
       ch->tick_bytes >= TT_CHANNEL_BYTES_PER_TICK)) {
    /* the rest waits for the next iteration (resume_reading) */
    ch->flags |= CH_PAUSED;
    schedule_idle(ch);
    return 1;
  }
  return 0;
}

/* EOF: the end of the stream.  Bytes of a frame that never completed are
 * a truncation; complete frames left undelivered (we stopped reading on
 * purpose: a local disconnect) are not. */
static void end_at_eof(tt_channel_t *ch) {
  if ((ch->flags & CH_READING) && tt_frame_decoder_pending(&ch->dec) > 0)
    channel_end(ch, TT_ERR_IPC_PROTOCOL, truncated(ch));
  else
    channel_end(ch, 0, NULL);
}

/* Hands out the complete frames the decoder holds (after a pause).
 * Returns 1 when the channel ended or stopped reading. */
static int deliver_buffered(tt_channel_t *ch) {
  int err = tt_frame_decoder_commit(&ch->dec, 0, deliver, ch);
  if (err == TT_ERR_IPC_PROTOCOL) {
    protocol_end(ch, ch->dec.error);
    return 1;
  }
  return (ch->flags & CH_READING) ? 0 : 1;
}

/* A new iteration: go on with the frames held back, then with the socket
 * once they are all out. */
static void resume_reading(tt_channel_t *ch) {
  ch->tick_frames = 0;
  ch->tick_bytes = 0;
  ch->flags &= ~CH_PAUSED;
  deliver_buffered(ch); /* and more next time, if paused again */
}

/* Takes the descriptors that came with a read ending at stream offset
 * `end`.  0, or 1 after ending the channel. */
static int take_rx_fds(tt_channel_t *ch, struct msghdr *mh, uint64_t end) {
  const char *why = NULL;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c != NULL;
       c = CMSG_NXTHDR(mh, c)) {
    size_t n;
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (why == NULL && ch->rx_fds.len >= TT_CHANNEL_MAX_PENDING_FDS)
        why = ch->dec.lines
                  ? "too many descriptors without their NODE_HANDLE messages"
                  : "too many descriptors waiting for their frames";
      if (why != NULL || fdq_push(&ch->rx_fds, end, fd) != 0) {
        close(fd);
        if (why == NULL) why = "out of memory for a descriptor";
      }
    }
  }
  if (why == NULL && (mh->msg_flags & MSG_CTRUNC))
    why = "descriptors lost in a read (more than 16 at once, or we are out "
          "of descriptors: EMFILE)";
  if (why == NULL) return 0;
  protocol_end(ch, why);
  return 1;
}

/* recv() that also takes descriptors (close-on-exec); as recv(), and -1
 * with errno EPROTO after ending the channel on a descriptor error. */
static ssize_t receive(tt_channel_t *ch, char *base, size_t room) {
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * TT_CHANNEL_MAX_RX_FDS)];
  } cm;
  struct iovec iov;
  struct msghdr mh;
  ssize_t n;
  iov.iov_base = base;
  iov.iov_len = room;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  do {
    mh.msg_control = cm.buf;
    mh.msg_controllen = sizeof cm.buf;
    n = recvmsg(ch->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  /* (MSG_CTRUNC may come without any control data: at RLIMIT_NOFILE) */
  if (n > 0 && (mh.msg_controllen > 0 || (mh.msg_flags & MSG_CTRUNC)) &&
      take_rx_fds(ch, &mh, ch->stats.bytes_received + (uint64_t)n) != 0) {
    errno = EPROTO;
    return -1;
  }
  return n;
}

/* Reads what is available (up to a bound).  Returns 1 at EOF or when the
 * channel ended, 0 when the socket is drained for now or the budget of this
 * iteration is spent (CH_PAUSED). */
static int read_some(tt_channel_t *ch, int max_reads) {
  for (int i = 0; i < max_reads && (ch->flags & CH_READING); i++) {
    if (ch->flags & CH_PAUSED) return 0;
    char *base;
    size_t room;
    ssize_t n;
    int err = tt_frame_decoder_space(&ch->dec, &base, &room);
    if (err != 0) {
      channel_end(ch, err, "out of memory for a frame");
      return 1;
    }
    n = receive(ch, base, room);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      /* a descriptor error ended it, or stopped its reading */
      if ((ch->flags & CH_ENDED) || !(ch->flags & CH_READING)) return 1;
      if (errno == ECONNRESET) {
        channel_end(ch, 0, NULL);
      } else {
        channel_end(ch, -errno, "read failed");
      }
      return 1;
    }
    if (n == 0) {
      end_at_eof(ch);
      return 1;
    }
    ch->stats.bytes_received += (uint64_t)n;
    err = tt_frame_decoder_commit(&ch->dec, (size_t)n, deliver, ch);
    if (err == TT_ERR_IPC_PROTOCOL) {
      protocol_end(ch, ch->dec.error);
      return 1;
    }
    if ((ch->flags & CH_READING) == 0) return 1;
    if ((size_t)n < room) return 0; /* short read: the socket is empty */
  }
  return (ch->flags & CH_READING) ? 0 : 1;
}

/* After a write met EPIPE, or the socket reported an error: the peer
 * closed, so everything it sent is in our socket; hand it out (no budget:
 * there is nothing else to wait for), then end. */
static void drain_then_end(tt_channel_t *ch) {
  ch->flags |= CH_UNBOUNDED;
  ch->flags &= ~CH_PAUSED;
  if ((ch->flags & CH_READING) && !(ch->flags & CH_ENDED) &&
      deliver_buffered(ch) == 0) {
    while (read_some(ch, TT_CHANNEL_MAX_READS) == 0) {
      int avail = 0;
      /* EAGAIN with the peer gone only happens after shutdown(SHUT_RD) by
       * a peer that writes on: what it wrote so far is all we take */
      if (ioctl(ch->fd, FIONREAD, &avail) != 0 || avail == 0) break;
    }
  }
  ch->flags &= ~CH_UNBOUNDED;
  if (!(ch->flags & CH_ENDED)) {
    int soerr = 0;
    socklen_t n = sizeof soerr;
    if (getsockopt(ch->fd, SOL_SOCKET, SO_ERROR, &soerr, &n) != 0)
      soerr = errno;
    if (soerr == 0 || soerr == ECONNRESET || soerr == EPIPE)
      end_at_eof(ch);
    else
      channel_end(ch, -soerr, "socket error");
  }
}

void tt_channel_read_now(tt_channel_t *ch) {
  if (!(ch->flags & CH_READING) || (ch->flags & CH_ENDED)) return;
  ch->flags |= CH_UNBOUNDED;
  ch->flags &= ~CH_PAUSED;
  if (deliver_buffered(ch) == 0) read_some(ch, TT_CHANNEL_MAX_READS);
  ch->flags &= ~CH_UNBOUNDED;
  if (!(ch->flags & CH_ENDED)) update_poll(ch);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  tt_channel_t *ch = h->data;
  if (status < 0) {
    /* libuv reports EPOLLERR as UV_EBADF: a socket error, usually the peer
     * closing with our data unread (ECONNRESET).  Everything it sent is
     * still readable and is delivered first; recv() or SO_ERROR then tell
     * what happened. */
    ch->poll_events = 0; /* libuv stopped the handle */
    drain_then_end(ch);
    return;
  }
  if ((events & UV_WRITABLE) && (ch->flags & CH_WRITE_BLOCKED)) {
    ch->flags &= ~CH_WRITE_BLOCKED;
    if (flush(ch) != 0 || (ch->flags & CH_ENDED)) return;
  }
  if ((events & UV_READABLE) && !(ch->flags & CH_PAUSED)) {
    ch->tick_frames = 0;
    ch->tick_bytes = 0;
    read_some(ch, TT_CHANNEL_MAX_READS);
  }
}

/* ---- lifecycle --------------------------------------------------------- */

int tt_channel_init(uv_loop_t *loop, tt_channel_t *ch, int fd,
                    const tt_channel_options_t *opts) {
  int err;
  memset(ch, 0, sizeof *ch);
  ch->loop = loop;
  ch->fd = fd;
  ch->high_water = (opts && opts->high_water) ? opts->high_water
                                              : TT_CHANNEL_DEFAULT_HIGH_WATER;
  ch->flush_timeout_ms = (opts && opts->flush_timeout_ms)
                             ? opts->flush_timeout_ms
                             : TT_CHANNEL_DEFAULT_FLUSH_TIMEOUT;
  tt_frame_decoder_init(&ch->dec, tt_channel_options_max_message(opts));
  if (opts && opts->lines) tt_frame_decoder_use_lines(&ch->dec);
  if ((err = tt__set_flags(fd, 1, 1)) != 0) return err;
  {
    int sndbuf = TT_CHANNEL_SNDBUF;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  }
  if ((err = uv_poll_init(loop, &ch->poll, fd)) != 0) return err;
  uv_idle_init(loop, &ch->flusher); /* cannot fail */
  uv_timer_init(loop, &ch->drain_timer);
  ch->poll.data = ch;
  ch->flusher.data = ch;
  ch->drain_timer.data = ch;
  ch->flags = CH_CONNECTED | CH_READING;
  ch->poll_events = UV_READABLE;
  uv_poll_start(&ch->poll, UV_READABLE, on_poll);
  uv_unref((uv_handle_t *)&ch->poll);
  return 0;
}

/* Ends the channel once: stop I/O, fail what is queued, tell the owner. */
static void channel_end(tt_channel_t *ch, int err, const char *why) {
  channel_end_lost(ch, err, why, "the channel closed");
}

static void channel_end_lost(tt_channel_t *ch, int err, const char *why,
                             const char *lost_why) {
  if (ch->flags & CH_ENDED) return;
  ch->flags |= CH_ENDED;
  if (ch->end_err == 0) ch->end_err = err; /* (protocol_end set it first) */
  ch->flags &= ~(CH_CONNECTED | CH_READING | CH_WRITE_BLOCKED |
                 CH_DISCONNECTING | CH_NEED_DRAIN | CH_PAUSED);
  if (!(ch->flags & CH_CLOSING)) {
    update_poll(ch);
    if (ch->flags & CH_SCHEDULED) {
      ch->flags &= ~CH_SCHEDULED;
      uv_idle_stop(&ch->flusher);
    }
    uv_timer_stop(&ch->drain_timer);
  }
  if (err != 0 && ch->on_error) ch->on_error(ch, err, why);
  fdq_close_all(&ch->rx_fds); /* nothing more is handed out */
  {
    /* Frames already with the kernel succeeded; the rest are lost, and
     * nothing is lost silently: those without a callback are reported as
     * one error. */
    size_t lost;
    char msg[160];
    ack_run(ch, 0);
    queue_free(ch);
    lost = ack_run(ch, TT_ERR_IPC_CHANNEL_CLOSED);
    if (lost > 0 && ch->on_error) {
      snprintf(msg, sizeof msg, "%zu queued message%s not delivered: %s",
               lost, lost == 1 ? " was" : "s were", lost_why);
      ch->on_error(ch, TT_ERR_IPC_CHANNEL_CLOSED, msg);
    }
  }
  if (ch->on_disconnect) ch->on_disconnect(ch);
}

/* No more sends, no more reading; what is queued is still written, and
 * the flush (or an empty queue) ends the channel.  A peer that never
 * reads must not hold us for ever: flush_timeout bounds it. */
static void begin_disconnect(tt_channel_t *ch) {
  ch->flags &= ~(CH_CONNECTED | CH_READING | CH_PAUSED);
  if (!(ch->flags & CH_DISCONNECTING)) {
    ch->flags |= CH_DISCONNECTING;
    if (queued(ch) > 0 && ch->flush_timeout_ms > 0) {
      tt__timer_start(&ch->drain_timer, on_drain_timeout,
                      (uint64_t)ch->flush_timeout_ms, 0);
      uv_unref((uv_handle_t *)&ch->drain_timer);
    }
  }
  update_poll(ch);
  schedule_flush(ch);
}

/* The peer sent what cannot be read.  Nothing more is read and the error
 * is told at once; what we queued before (answers to its good messages)
 * is still written, bounded by flush_timeout as a disconnect is, and then
 * the channel ends.  With nothing queued, or a socket that failed, it ends
 * now. */
static void protocol_end(tt_channel_t *ch, const char *why) {
  if ((ch->flags & (CH_ENDED | CH_CLOSING | CH_BROKEN)) || queued(ch) == 0 ||
      !(ch->flags & (CH_CONNECTED | CH_DISCONNECTING))) {
    channel_end(ch, TT_ERR_IPC_PROTOCOL, why);
    return;
  }
  ch->flags &= ~CH_NEED_DRAIN;
  ch->end_err = TT_ERR_IPC_PROTOCOL;
  begin_disconnect(ch);
  if (ch->on_error) ch->on_error(ch, TT_ERR_IPC_PROTOCOL, why);
}

void tt_channel_fail(tt_channel_t *ch, int err, const char *why) {
  if (err == TT_ERR_IPC_PROTOCOL) protocol_end(ch, why);
  else channel_end(ch, err, why);
}

static void on_drain_timeout(uv_timer_t *t) {
  tt_channel_t *ch = t->data;
  char why[96];
  snprintf(why, sizeof why,
           "the peer did not read them within the flush timeout (%lld ms)",
           (long long)ch->flush_timeout_ms);
  channel_end_lost(ch, 0, NULL, why);
}

int tt_channel_disconnect(tt_channel_t *ch) {
  if (!(ch->flags & CH_CONNECTED)) return TT_ERR_IPC_DISCONNECTED;
  /* Always asynchronous, like Node: the flush (or an empty queue) ends it. */
  begin_disconnect(ch);
  return 0;
}

void tt_channel_finish(tt_channel_t *ch) {
  /* The peer exited, so everything it wrote is already in our socket:
   * read until EAGAIN, then there is nothing more to wait for. */
  /* Only what is in the socket now came from our peer: a grandchild that
   * inherited its end could go on writing, and is not read. */
  int avail = 0;
  uint64_t goal;
  if (ioctl(ch->fd, FIONREAD, &avail) != 0) avail = 0;
  goal = ch->stats.bytes_received + (uint64_t)avail;
  ch->flags |= CH_UNBOUNDED;
  ch->flags &= ~CH_PAUSED;
  if ((ch->flags & CH_READING) && deliver_buffered(ch) == 0) {
    while (!(ch->flags & CH_ENDED) && (ch->flags & CH_READING) &&
           ch->stats.bytes_received < goal) {
      if (read_some(ch, TT_CHANNEL_MAX_READS) != 0) break;
    }
  }
  ch->flags &= ~CH_UNBOUNDED;
  if (!(ch->flags & CH_ENDED)) end_at_eof(ch);
}

int tt_channel_flush_sync(tt_channel_t *ch, int timeout_ms) {
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (ch->flags & CH_BROKEN) return ch->broken_err;
  while (queued(ch) > 0 && !(ch->flags & CH_ENDED)) {
    ssize_t w = write_some(ch);
    if (w < 0) {
      /* nothing is called back from here (we may be inside a Lua call):
       * the channel ends from the loop, if the loop runs again */
      ch->broken_err = (int)w;
      ch->flags |= CH_BROKEN;
      ch->flags &= ~(CH_CONNECTED | CH_WRITE_BLOCKED);
      schedule_idle(ch);
      return (int)w;
    }
    if (w == 0) {
      struct pollfd pfd = {.fd = ch->fd, .events = POLLOUT, .revents = 0};
      int wait = -1;
      if (timeout_ms >= 0) {
        clock_gettime(CLOCK_MONOTONIC, &t1);
        long spent = (t1.tv_sec - t0.tv_sec) * 1000 +
                     (t1.tv_nsec - t0.tv_nsec) / 1000000;
        if (spent >= timeout_ms) return UV_ETIMEDOUT;
        wait = timeout_ms - (int)spent;
      }
      if (poll(&pfd, 1, wait) < 0 && errno != EINTR) return -errno;
    }
  }
  if (ch->flags & CH_ENDED) return queued(ch) > 0 ? TT_ERR_IPC_CHANNEL_CLOSED : 0;
  /* callbacks, drain and a pending disconnect: from the loop */
  update_poll(ch);
  schedule_flush(ch);
  return 0;
}

void tt_channel_ref(tt_channel_t *ch, int ref) {
  if (ref)
    ch->flags |= CH_REF;
  else
    ch->flags &= ~CH_REF;
  if (!(ch->flags & CH_CLOSING)) update_poll(ch);
}

int tt_channel_is_connected(const tt_channel_t *ch) {
  return (ch->flags & CH_CONNECTED) != 0;
}

void tt_channel_stats(const tt_channel_t *ch, tt_channel_stats_t *out) {
  *out = ch->stats;
  out->queued_bytes = queued(ch);
}

static void on_handle_closed(uv_handle_t *h) {
  tt_channel_t *ch = h->data;
  if (--ch->pending_closes > 0) return;
  close(ch->fd);
  ch->fd = -1;
  tt_frame_decoder_free(&ch->dec);
  free(ch->acks);
  ch->acks = NULL;
  fdq_free(&ch->tx_fds);
  fdq_free(&ch->rx_fds);
  if (ch->close_cb) ch->close_cb(ch);
}

void tt_channel_close(tt_channel_t *ch, tt_channel_event_cb cb) {
  if (ch->flags & CH_CLOSING) return;
  /* Marked first: on_disconnect (run by channel_end) may call us again. */
  ch->flags |= CH_CLOSING;
  ch->close_cb = cb;
  channel_end(ch, 0, NULL);
  ch->pending_closes = 3;
  uv_close((uv_handle_t *)&ch->poll, on_handle_closed);
  uv_close((uv_handle_t *)&ch->flusher, on_handle_closed);
  uv_close((uv_handle_t *)&ch->drain_timer, on_handle_closed);
}

int tt_channel_inherited_fd(int *fd, int *lines) {
  static int taken;
  const tt_handshake_t *h = tt_handshake();
  *lines = h->lines;
  if (!h->named || taken) return UV_ENOENT;
  if (h->channel_error != 0) return h->channel_error;
  taken = 1; /* one owner for the fd */
  *fd = h->fd;
  return 0;
}
