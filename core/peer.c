/* The peer protocol: see tt_peer.h. */
#include "tt_peer.h"

#include <uv.h>

static void pack_heap(unsigned char b[8], tt_peer_heap_cb heap, void *arg) {
  uint64_t v = heap ? heap(arg) : 0;
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
}

int tt_peer_heartbeat(tt_channel_t *ch, const tt_frame_header_t *h,
                      tt_peer_heap_cb heap, void *arg) {
  unsigned char b[8];
  if (h->kind == TT_FRAME_PONG) return 1;
  if (h->kind != TT_FRAME_PING) return 0;
  pack_heap(b, heap, arg);
  /* dropped (and counted) if the peer is not reading what we send: a
   * flood of pings cannot grow our memory */
  tt_channel_send_auto(ch, TT_FRAME_PONG, h->id, b, heap ? sizeof b : 0);
  return 1;
}

int tt_peer_ready(tt_channel_t *ch, tt_peer_heap_cb heap, void *arg) {
  unsigned char b[8];
  int rc;
  if (tt_channel_is_lines(ch)) return 0; /* JSON lines have no such frame */
  pack_heap(b, heap, arg);
  rc = tt_channel_send(ch, TT_FRAME_PONG, 0, b, heap ? sizeof b : 0, NULL,
                       NULL);
  return rc < 0 ? rc : 0;
}

int tt_peer_answer(tt_channel_t *ch, uint32_t id, tt_answer_t how,
                   const void *payload, size_t len) {
  return tt_peer_answer_fds(ch, id, how, payload, len, NULL, 0);
}

int tt_peer_answer_fds(tt_channel_t *ch, uint32_t id, tt_answer_t how,
                       const void *payload, size_t len, const int *fds,
                       unsigned nfds) {
  int rc;
  if (id == 0) return UV_EINVAL; /* id 0 is no request's */
  if (nfds > 0) { /* only a reply carries them (a fault is words) */
    if (how != TT_ANSWER_REPLY) return UV_EINVAL;
    rc = tt_channel_send_fds(ch, TT_FRAME_REPLY, id, payload, len, fds, nfds,
                             NULL, NULL);
    return rc < 0 ? rc : 0;
  }
  switch (how) {
  case TT_ANSWER_REPLY:
  case TT_ANSWER_FAULT:
    rc = tt_channel_send(ch,
                         how == TT_ANSWER_REPLY ? TT_FRAME_REPLY : TT_FRAME_FAULT,
                         id, payload, len, NULL, NULL);
    break;
  case TT_ANSWER_REFUSAL:
    rc = tt_channel_send_auto(ch, TT_FRAME_FAULT, id, payload, len);
    break;
  default:
    return UV_EINVAL;
  }
  return rc < 0 ? rc : 0;
}

int tt_peer_pong_heap(const tt_frame_header_t *h, const char *payload,
                      uint64_t *bytes) {
  const unsigned char *u = (const unsigned char *)payload;
  uint64_t v = 0;
  if (h->kind != TT_FRAME_PONG || h->len != 8) return -1;
  for (int i = 7; i >= 0; i--) v = (v << 8) | u[i];
  *bytes = v;
  return 0;
}
