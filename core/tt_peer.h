/*
 * tether peer protocol: what each side of a channel does with the frames
 * that are not the user's, so a binding in any language supplies only
 * hooks.  First part (the rest of request/reply/fault and control frames
 * is to follow): heartbeats and readiness.
 *
 * - PING (id n) is answered with PONG (id n) carrying the answering
 *   runtime's heap size as a u64 LE (the binding says how big its heap is
 *   through a hook); answers are automatic: dropped and counted when the
 *   peer does not read (tt_channel_send_auto).
 * - PONG with id 0, sent unasked, is the ready signal: the worker's script
 *   has started (a supervisor with wait_ready counts it running then).
 * - A REQUEST (id n, never 0) is answered once, with REPLY or FAULT id n;
 *   a refusal (no handler) is a FAULT given on our own, so automatic.
 */
#ifndef TT_PEER_H
#define TT_PEER_H

#include <stdint.h>

#include "tt_channel.h"
#include "tt_frame.h"

/* The binding's heap size in bytes (e.g. Lua's collectgarbage("count")). */
typedef uint64_t (*tt_peer_heap_cb)(void *arg);

/* A PING is answered (heap from `heap`, which may be NULL: no size), a
 * PONG consumed: 1 for either, 0 for every other kind (the caller's). */
int tt_peer_heartbeat(tt_channel_t *ch, const tt_frame_header_t *h,
                      tt_peer_heap_cb heap, void *arg);
/* Sends the ready signal (never dropped, unlike answers; on a JSON-lines
 * channel there is no such frame and nothing is sent).  0, or the
 * channel's error. */
int tt_peer_ready(tt_channel_t *ch, tt_peer_heap_cb heap, void *arg);
typedef enum {
  TT_ANSWER_REPLY,  /* the handler's result */
  TT_ANSWER_FAULT,  /* the handler raised */
  TT_ANSWER_REFUSAL /* ours (e.g. no handler): dropped, counted, when the
                       peer does not read */
} tt_answer_t;

/* Answers request `id` (the payload encoded by the caller).  0 (also for a
 * refusal that was dropped), UV_EINVAL for id 0 or a bad `how`, or the
 * channel's error (TT_ERR_SERIALIZE, TT_ERR_IPC_CHANNEL_CLOSED, ...). */
int tt_peer_answer(tt_channel_t *ch, uint32_t id, tt_answer_t how,
                   const void *payload, size_t len);
/* As tt_peer_answer, a REPLY carrying duplicates of `nfds` descriptors; a
 * fault or refusal with any is UV_EINVAL. */
int tt_peer_answer_fds(tt_channel_t *ch, uint32_t id, tt_answer_t how,
                       const void *payload, size_t len, const int *fds,
                       unsigned nfds);

/* The heap size a PONG carries: 0 and *bytes, or -1 when it has none. */
int tt_peer_pong_heap(const tt_frame_header_t *h, const char *payload,
                      uint64_t *bytes);

#endif /* TT_PEER_H */
