/*
 * tether frame codec: the native wire format (see PROTOCOL.md).
 *
 * A frame is a fixed 12-byte header followed by `len` payload bytes:
 *
 *   0  u32 LE  len      payload bytes that follow the header
 *   4  u8      version  TT_FRAME_VERSION
 *   5  u8      kind     tt_frame_kind_t
 *   6  u16 LE  flags    0 for now; receivers ignore unknown bits
 *   8  u32 LE  id       correlation id (requests/replies), else 0
 *
 * The decoder is incremental: it yields exactly the same frames for any split
 * of the byte stream.  It validates each header as soon as its 12 bytes are
 * in, and checks `len` against the configured maximum before it allocates
 * anything for the payload.  It owns its receive buffer so a reader can
 * recv() straight into it (tt_frame_decoder_space/commit) and complete frames
 * are handed out in place, without a copy.
 */
#ifndef TT_FRAME_H
#define TT_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define TT_FRAME_HEADER_SIZE 12
#define TT_FRAME_VERSION 1
#include "tt_limits.h" /* TT_FRAME_DEFAULT_MAX_MESSAGE */

typedef enum {
  TT_FRAME_MESSAGE = 1, /* user message */
  TT_FRAME_REQUEST = 2, /* request expecting a reply with the same id */
  TT_FRAME_REPLY = 3,   /* successful reply */
  TT_FRAME_FAULT = 4,   /* failed reply: the handler raised or is missing */
  TT_FRAME_CONTROL = 5, /* runner <-> parent housekeeping (error reports) */
  TT_FRAME_PING = 6,    /* liveness probe; answered with a PONG (tt_peer.h) */
  TT_FRAME_PONG = 7,    /* answer (same id), or id 0: the worker is ready;
                           payload: u64 LE heap bytes of the peer's
                           runtime (tt_peer.h), or empty */
  TT__FRAME_KIND_MAX = TT_FRAME_PONG
} tt_frame_kind_t;

/* Header flags (the decoder hands them on; flags are the channel's).
 * TT_FRAME_F_HANDLE: the frame carries descriptors, sent as SCM_RIGHTS
 * with the frame's first byte (PROTOCOL.md, "Handles"); only MESSAGE,
 * REQUEST, REPLY and CONTROL (a cluster's connections) may, which
 * tt_channel checks.  How many: 1 + the 4 bits at TT_FRAME_FDS_SHIFT
 * (read only with TT_FRAME_F_HANDLE), at most TT_FRAME_MAX_FDS. */
enum { TT_FRAME_F_HANDLE = 1u << 0 };
#define TT_FRAME_FDS_SHIFT 8
#define TT_FRAME_MAX_FDS 16

/* The flags for a frame carrying `nfds` descriptors (0..TT_FRAME_MAX_FDS). */
static inline unsigned tt_frame_fd_flags(unsigned nfds) {
  return nfds == 0 ? 0
                   : TT_FRAME_F_HANDLE | ((nfds - 1) << TT_FRAME_FDS_SHIFT);
}

/* How many descriptors a frame with `flags` carries. */
static inline unsigned tt_frame_fd_count(unsigned flags) {
  return (flags & TT_FRAME_F_HANDLE) ? 1 + ((flags >> TT_FRAME_FDS_SHIFT) & 15)
                                     : 0;
}

/* Whether a frame of `kind` may carry a descriptor. */
static inline int tt_frame_kind_carries_fd(unsigned kind) {
  return kind == TT_FRAME_MESSAGE || kind == TT_FRAME_REQUEST ||
         kind == TT_FRAME_REPLY || kind == TT_FRAME_CONTROL;
}

typedef struct {
  uint32_t len;
  uint8_t version;
  uint8_t kind;
  uint16_t flags;
  uint32_t id;
} tt_frame_header_t;

/* Writes the 12-byte header for a payload of `len` bytes into `out`. */
void tt_frame_header_pack(unsigned char *out, unsigned kind, unsigned flags,
                          uint32_t id, uint32_t len);
/* Parses and validates a header: 0, or TT_ERR_IPC_PROTOCOL with `*why` set. */
int tt_frame_header_parse(const unsigned char *in, size_t max_message,
                          tt_frame_header_t *h, const char **why);

/* Called once per complete frame; `payload` is valid only during the call.
 * Return 0 to go on, anything else to stop decoding (it is passed back). */
typedef int (*tt_frame_cb)(void *ctx, const tt_frame_header_t *h,
                           const char *payload);

typedef struct tt_frame_decoder_s {
  char *buf;
  size_t cap;
  size_t start; /* first unconsumed byte */
  size_t end;   /* one past the last byte read */
  size_t max_message;
  const char *error; /* why the stream was rejected, once it was */
  int lines;         /* Node's JSON lines (tt_lines.h) instead of frames */
  size_t scan;       /* lines: bytes of the pending line without a "\n" */
} tt_frame_decoder_t;

void tt_frame_decoder_init(tt_frame_decoder_t *d, size_t max_message);
/* Decodes newline-ended JSON lines instead (Node's "json" IPC format):
 * every line is delivered as a frame whose header tt_lines_parse() made. */
void tt_frame_decoder_use_lines(tt_frame_decoder_t *d);
void tt_frame_decoder_free(tt_frame_decoder_t *d);

/* Free space for the next read.  Grows the buffer to hold the whole frame
 * being received, so a large payload lands in place.  0 or UV_ENOMEM. */
int tt_frame_decoder_space(tt_frame_decoder_t *d, char **base, size_t *len);
/* Accounts `n` bytes read into the space and delivers every complete frame.
 * Returns 0, the callback's non-zero value, or TT_ERR_IPC_PROTOCOL (then
 * d->error says why and the decoder rejects everything after). */
int tt_frame_decoder_commit(tt_frame_decoder_t *d, size_t n, tt_frame_cb cb,
                            void *ctx);
/* Copying convenience over space/commit, for tests and fuzzers. */
int tt_frame_decoder_feed(tt_frame_decoder_t *d, const void *data, size_t n,
                          tt_frame_cb cb, void *ctx);
/* Bytes of an incomplete frame held back: non-zero at EOF means truncation. */
size_t tt_frame_decoder_pending(const tt_frame_decoder_t *d);

#endif /* TT_FRAME_H */
