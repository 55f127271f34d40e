/*
 * libFuzzer target for descriptors over a channel (core/channel.c,
 * PROTOCOL.md "Handles"): a hostile peer writes bytes and descriptors in
 * any order over a real socketpair; the channel must pair, deliver or
 * close every one of them.
 *
 * Build and run: `make fuzz` (build-fuzz/fuzz_handles, seeds in
 * fuzz/corpus/handles).
 *
 * Input: a script of operations, each an op byte then its operands:
 *   op % 4 == 0  raw bytes: n = next byte, then n bytes, one sendmsg
 *   op % 4 == 1  the same, with 1 + (op / 4) % 17 descriptors (of
 *                /dev/null) attached: up to 17, one more than a frame
 *                may carry
 *   op % 4 == 2  a frame header: kind = next byte % 8, flags = the next
 *                two bytes (bit 0 HANDLE, bits 8-11 how many more), len =
 *                next byte; written with 1 + (op / 8) % 17 descriptors
 *                when op & 4; then `len` zero bytes (a valid payload for
 *                the owner does not matter: the channel never decodes it)
 *   op % 4 == 3  run the loop once (the channel reads)
 * The owner takes every descriptor of every other frame (and closes
 * them).
 *
 * Invariant checked (abort() on violation): after the peer closes and the
 * channel and loop are closed, the process has exactly the descriptors it
 * had before the input.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "peer_util.h"
#include "tt_channel.h"
#include "tt_error.h"

static int open_fds(void) {
  int n = tt_test_open_fds();
  if (n < 0) abort();
  return n;
}

static int frames, ended, closed;

static void on_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload) {
  (void)h, (void)payload;
  if (frames++ % 2 == 0) {
    int fd;
    while ((fd = tt_channel_take_fd(ch)) >= 0) close(fd);
  }
}

static void on_disconnect(tt_channel_t *ch) {
  (void)ch;
  ended = 1;
}

static void on_closed(tt_channel_t *ch) {
  (void)ch;
  closed = 1;
}

/* One sendmsg of `n` bytes, with `nfds` descriptors (at most 17); the
 * loop runs while the socket is full. */
static void peer_send(uv_loop_t *loop, int s, const void *p, size_t n,
                      int nfds) {
  int fds[17], tries = 0, k = 0;
  if (n == 0) return;
  while (k < nfds && k < 17 &&
         (fds[k] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
    k++;
  while (tt_test_sendmsg_fds(s, p, n, fds, k, MSG_DONTWAIT) < 0 &&
         tries++ < 100)
    uv_run(loop, UV_RUN_NOWAIT); /* full (or the channel ended: give up) */
  while (k > 0) close(fds[--k]); /* ours; the peer has its copies, or none */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uv_loop_t loop;
  tt_channel_t ch;
  int sv[2], before = open_fds();
  size_t i = 0;
  static const char zeros[256];
  frames = ended = closed = 0;
  if (uv_loop_init(&loop) != 0) abort();
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) abort();
  if (tt_channel_init(&loop, &ch, sv[0], NULL) != 0) abort();
  ch.on_frame = on_frame;
  ch.on_disconnect = on_disconnect;
  tt_channel_ref(&ch, 1); /* else UV_RUN_NOWAIT finds the loop idle */
  while (i < size) {
    uint8_t op = data[i++];
    switch (op % 4) {
    case 0:
    case 1: {
      size_t n = i < size ? data[i++] : 0;
      if (n > size - i) n = size - i;
      peer_send(&loop, sv[1], data + i, n, op % 4 == 1 ? 1 + (op / 4) % 17 : 0);
      i += n;
      break;
    }
    case 2: {
      unsigned char h[TT_FRAME_HEADER_SIZE];
      unsigned kind = i < size ? data[i++] % 8 : 1;
      unsigned flags = i < size ? data[i++] : 0;
      uint32_t len;
      flags |= i < size ? (unsigned)data[i++] << 8 : 0;
      len = i < size ? data[i++] : 0;
      tt_frame_header_pack(h, kind, flags, 1, len);
      peer_send(&loop, sv[1], h, sizeof h, (op & 4) ? 1 + (op / 8) % 17 : 0);
      peer_send(&loop, sv[1], zeros, len, 0);
      break;
    }
    default:
      uv_run(&loop, UV_RUN_NOWAIT);
      break;
    }
  }
  close(sv[1]);
  for (int k = 0; k < 1000 && !ended; k++) uv_run(&loop, UV_RUN_NOWAIT);
  tt_channel_close(&ch, on_closed);
  while (!closed) uv_run(&loop, UV_RUN_NOWAIT);
  if (uv_loop_close(&loop) != 0) abort();
  if (open_fds() != before) {
    fprintf(stderr, "descriptors leaked: %d before, %d after\n", before,
            open_fds());
    abort();
  }
  return 0;
}
