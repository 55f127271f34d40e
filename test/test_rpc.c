/* Tests of request/response (core/tt_rpc.h) over a real channel, the peer
 * being the other end of a socketpair written by hand: correlation, late
 * replies, timeouts and retries under new ids, and the close contract
 * (callback deferred, idempotent), shared by the log sink. */
#include <check.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop_util.h"
#include "peer_util.h"
#include "suites.h"
#include "tt_error.h"
#include "tt_logsink.h"
#include "tt_peer.h"
#include "tt_rpc.h"

typedef struct {
  int ended, status, closed;
  unsigned kind;
  char payload[64];
} call_seen_t;

static void on_call(void *arg, int status, unsigned kind, const char *payload,
                    size_t len) {
  call_seen_t *x = arg;
  x->ended++;
  x->status = status;
  x->kind = kind;
  if (payload && len < sizeof x->payload) {
    memcpy(x->payload, payload, len);
    x->payload[len] = '\0';
  }
}

static void on_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload) {
  tt_rpc_dispatch(ch->data, h, payload);
}

typedef struct {
  uv_loop_t loop;
  tt_channel_t ch;
  tt_rpc_t rpc;
  int peer;
} rig_t;

static void rig_up(rig_t *r) {
  int sv[2];
  ck_assert_int_eq(uv_loop_init(&r->loop), 0);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ck_assert_int_eq(tt_channel_init(&r->loop, &r->ch, sv[0], NULL), 0);
  ck_assert_int_eq(tt_rpc_init(&r->loop, &r->rpc, &r->ch), 0);
  r->ch.data = &r->rpc;
  r->ch.on_frame = on_frame;
  tt_channel_ref(&r->ch, 1);
  r->peer = sv[1];
}

static void on_rpc_closed(tt_rpc_t *rpc) { (*(int *)rpc->data)++; }

static void rig_down(rig_t *r) {
  int closed = 0;
  r->rpc.data = &closed;
  tt_rpc_close(&r->rpc, on_rpc_closed);
  ck_assert_int_eq(closed, 0); /* never from inside tt_rpc_close */
  tt_rpc_close(&r->rpc, on_rpc_closed); /* idempotent */
  tt_channel_close(&r->ch, NULL);
  close(r->peer);
  tt_test_run_until(&r->loop, &closed, 5000);
  tt_test_run_dry(&r->loop, 1000);
  ck_assert_int_eq(closed, 1);
  tt_test_loop_close(&r->loop);
}

/* Reads one whole frame from the peer's end (blocking, with the loop run in
 * between so the channel writes). */
static void peer_read(rig_t *r, tt_frame_header_t *h, char *payload,
                      size_t cap) {
  unsigned char hb[TT_FRAME_HEADER_SIZE];
  const char *why;
  size_t got = 0;
  while (got < sizeof hb) {
    ssize_t n = recv(r->peer, hb + got, sizeof hb - got, MSG_DONTWAIT);
    if (n > 0)
      got += (size_t)n;
    else
      uv_run(&r->loop, UV_RUN_NOWAIT);
  }
  ck_assert_int_eq(tt_frame_header_parse(hb, 1 << 20, h, &why), 0);
  ck_assert_uint_le(h->len, cap);
  ck_assert_int_eq(recv(r->peer, payload, h->len, MSG_WAITALL),
                   (ssize_t)h->len);
}

static void peer_write(rig_t *r, unsigned kind, uint32_t id, const char *p) {
  unsigned char h[TT_FRAME_HEADER_SIZE];
  uint32_t len = (uint32_t)strlen(p);
  tt_frame_header_pack(h, kind, 0, id, len);
  ck_assert_int_eq(write(r->peer, h, sizeof h), (ssize_t)sizeof h);
  if (len) ck_assert_int_eq(write(r->peer, p, len), (ssize_t)len);
}

START_TEST(test_replies_reach_their_calls) {
  rig_t r;
  call_seen_t a = {0}, b = {0};
  tt_frame_header_t ha, hb;
  char pa[16], pb[16];
  tt_rpc_stats_t st;
  rig_up(&r);
  ck_assert_int_eq(tt_rpc_call(&r.rpc, "a", 1, NULL, on_call, &a), 0);
  ck_assert_int_eq(tt_rpc_call(&r.rpc, "b", 1, NULL, on_call, &b), 0);
  ck_assert_int_eq(a.ended + b.ended, 0); /* never from inside the call */
  peer_read(&r, &ha, pa, sizeof pa);
  peer_read(&r, &hb, pb, sizeof pb);
  ck_assert_uint_eq(ha.kind, TT_FRAME_REQUEST);
  ck_assert_uint_ne(ha.id, 0);
  ck_assert_uint_ne(ha.id, hb.id);
  /* answered out of order, one with a fault */
  peer_write(&r, TT_FRAME_FAULT, hb.id, "no");
  peer_write(&r, TT_FRAME_REPLY, ha.id, "yes");
  peer_write(&r, TT_FRAME_REPLY, ha.id, "again"); /* a duplicate: late */
  peer_write(&r, TT_FRAME_REPLY, 12345, "who?"); /* nobody's: late */
  tt_test_run_until(&r.loop, &a.ended, 5000);
  tt_test_run_until(&r.loop, &b.ended, 5000);
  ck_assert_int_eq(a.status, 0);
  ck_assert_uint_eq(a.kind, TT_FRAME_REPLY);
  ck_assert_str_eq(a.payload, "yes");
  ck_assert_uint_eq(b.kind, TT_FRAME_FAULT);
  ck_assert_str_eq(b.payload, "no");
  for (int i = 0; i < 20; i++) uv_run(&r.loop, UV_RUN_NOWAIT);
  tt_rpc_stats(&r.rpc, &st);
  ck_assert_uint_eq(st.replies, 1);
  ck_assert_uint_eq(st.faults, 1);
  ck_assert_uint_eq(st.late_replies, 2);
  ck_assert_uint_eq(st.in_flight, 0);
  ck_assert_int_eq(a.ended, 1);
  rig_down(&r);
}
END_TEST

/* Options for `retries` re-sends after `timeout_ms`, each after a fixed
 * pause of `pause_ms` (no jitter). */
static void retry_options(tt_call_options_t *o, uint64_t timeout_ms,
                          unsigned retries, double pause_ms) {
  memset(o, 0, sizeof *o);
  o->timeout_ms = timeout_ms;
  o->retries = retries;
  tt_backoff_init(&o->backoff);
  o->backoff.initial_ms = o->backoff.max_ms = pause_ms;
  o->backoff.jitter_ms = 0;
}

START_TEST(test_retries_under_new_ids_then_times_out) {
  rig_t r;
  call_seen_t a = {0};
  tt_call_options_t o;
  tt_frame_header_t h[3];
  char p[16];
  tt_rpc_stats_t st;
  uint64_t t0;
  rig_up(&r);
  retry_options(&o, 30, 2, 5);
  t0 = uv_hrtime();
  ck_assert_int_eq(tt_rpc_call(&r.rpc, "x", 1, &o, on_call, &a), 0);
  for (int i = 0; i < 3; i++) peer_read(&r, &h[i], p, sizeof p);
  ck_assert_uint_ne(h[0].id, h[1].id);
  ck_assert_uint_ne(h[1].id, h[2].id);
  /* the first attempt's answer comes too late to count */
  peer_write(&r, TT_FRAME_REPLY, h[0].id, "late");
  tt_test_run_until(&r.loop, &a.ended, 5000);
  ck_assert_int_eq(a.status, TT_ERR_TIMEOUT);
  /* three attempts of 30 ms and two pauses of 5 ms */
  ck_assert_uint_ge((uv_hrtime() - t0) / 1000000, 95);
  tt_rpc_stats(&r.rpc, &st);
  ck_assert_uint_eq(st.retries, 2);
  ck_assert_uint_eq(st.timeouts, 1);
  ck_assert_uint_eq(st.late_replies, 1);
  /* retries without a timeout are refused, and nothing is called back */
  o.timeout_ms = 0;
  ck_assert_int_eq(tt_rpc_call(&r.rpc, "x", 1, &o, on_call, &a), UV_EINVAL);
  rig_down(&r);
}
END_TEST

/* tt_rpc_call_with: the caller's bytes live in the call until its
 * callback has returned (the callback reads and scribbles over them), for
 * every way a call ends: a reply, a timeout after a retry, and the close
 * that a callback itself starts, ending a call it had just started. */
typedef struct {
  int canary;
  char pad[40];
} mine_t;

static int with_ended, with_closed;
static tt_rpc_t *with_rpc;

static void on_with_closed(tt_rpc_t *rpc) {
  (void)rpc;
  with_closed++;
}

static void on_with(void *arg, int status, unsigned kind, const char *payload,
                    size_t len) {
  mine_t *m = arg;
  (void)kind, (void)payload, (void)len;
  ck_assert_int_eq(m->canary, 0x5a5a);
  memset(m, 0xee, sizeof *m); /* ours until we return */
  with_ended++;
  if (status == TT_ERR_TIMEOUT) { /* the second ending: close from here */
    void *x = NULL;
    tt_call_options_t o;
    memset(&o, 0, sizeof o);
    o.timeout_ms = 1000;
    ck_assert_int_eq(tt_rpc_call_with(with_rpc, "n", 1, NULL, 0, &o, on_with,
                                      NULL, sizeof(mine_t), &x),
                     0);
    ((mine_t *)x)->canary = 0x5a5a;
    tt_rpc_close(with_rpc, on_with_closed); /* ends the one just made */
  }
}

START_TEST(test_call_with_keeps_the_callers_bytes) {
  rig_t r;
  tt_call_options_t o;
  tt_frame_header_t h;
  char p[16];
  void *x = NULL;
  rig_up(&r);
  with_rpc = &r.rpc;
  with_ended = with_closed = 0;
  retry_options(&o, 30, 1, 1);
  /* one answered, one timed out after its retry */
  ck_assert_int_eq(tt_rpc_call_with(&r.rpc, "a", 1, NULL, 0, NULL, on_with,
                                    NULL, sizeof(mine_t), &x), 0);
  ((mine_t *)x)->canary = 0x5a5a;
  ck_assert_int_eq(tt_rpc_call_with(&r.rpc, "b", 1, NULL, 0, &o, on_with,
                                    NULL, sizeof(mine_t), &x), 0);
  ((mine_t *)x)->canary = 0x5a5a;
  peer_read(&r, &h, p, sizeof p);
  peer_write(&r, TT_FRAME_REPLY, h.id, "yes");
  tt_test_run_until_n(&r.loop, &with_ended, 3, 5000); /* and the nested one */
  tt_test_run_until(&r.loop, &with_closed, 5000);
  /* refused (the rpc is closed): *extra_out is left alone */
  x = NULL;
  ck_assert_int_eq(tt_rpc_call_with(&r.rpc, "x", 1, NULL, 0, NULL, on_with,
                                    NULL, sizeof(mine_t), &x),
                   TT_ERR_IPC_CHANNEL_CLOSED);
  ck_assert_ptr_null(x);
  tt_channel_close(&r.ch, NULL);
  close(r.peer);
  tt_test_run_dry(&r.loop, 1000);
  tt_test_loop_close(&r.loop);
}
END_TEST

/* A call carrying descriptors: every attempt's frame says so; with
 * retries the call keeps its own copies (the caller may close its own at
 * once) until it ends, then none is left. */
START_TEST(test_retries_carry_descriptors_again) {
  rig_t r;
  call_seen_t a = {0};
  tt_call_options_t o;
  tt_frame_header_t h[2];
  char p[16];
  int pp[2], before, fds[2];
  before = tt_test_open_fds();
  rig_up(&r);
  ck_assert_int_eq(pipe2(pp, O_CLOEXEC), 0);
  retry_options(&o, 20, 1, 1);
  fds[0] = pp[0], fds[1] = pp[1];
  ck_assert_int_eq(tt_rpc_call_fds(&r.rpc, "x", 1, fds, 2, &o, on_call, &a),
                   0);
  close(pp[0]), close(pp[1]); /* the call has its own */
  for (int i = 0; i < 2; i++) {
    peer_read(&r, &h[i], p, sizeof p);
    ck_assert_uint_eq(h[i].flags, tt_frame_fd_flags(2));
  }
  tt_test_run_until(&r.loop, &a.ended, 5000);
  ck_assert_int_eq(a.status, TT_ERR_TIMEOUT);
  /* a descriptor that cannot be duplicated is refused, nothing called */
  fds[0] = -1;
  ck_assert_int_eq(tt_rpc_call_fds(&r.rpc, "x", 1, fds, 1, &o, on_call, &a),
                   UV_EBADF);
  ck_assert_int_eq(tt_rpc_call_fds(&r.rpc, "x", 1, fds, 1, NULL, on_call, &a),
                   UV_EBADF);
  rig_down(&r);
  ck_assert_int_eq(tt_test_open_fds(), before);
}
END_TEST

/* Caller-owned requests (what a pool uses): answered ones call back once,
 * cancelled ones never, and their answers count late. */
typedef struct {
  int ended, status;
  char payload[16];
} req_seen_t;

static void on_request(tt_request_t *req, int status, unsigned kind,
                       const char *payload, size_t len) {
  req_seen_t *x = req->data;
  (void)kind;
  x->ended++;
  x->status = status;
  if (payload && len < sizeof x->payload) {
    memcpy(x->payload, payload, len);
    x->payload[len] = '\0';
  }
}

START_TEST(test_requests_answered_and_cancelled) {
  rig_t r;
  tt_request_t qa, qb, qc;
  req_seen_t a = {0}, b = {0}, c = {0};
  tt_frame_header_t ha, hb, hc;
  char p[16];
  tt_rpc_stats_t st;
  rig_up(&r);
  qa.data = &a;
  qb.data = &b;
  qc.data = &c;
  ck_assert_int_eq(tt_rpc_request(&r.rpc, &qa, "a", 1, on_request), 0);
  ck_assert_int_eq(tt_rpc_request(&r.rpc, &qb, "b", 1, on_request), 0);
  ck_assert_int_eq(tt_rpc_request(&r.rpc, &qc, "c", 1, on_request), 0);
  peer_read(&r, &ha, p, sizeof p);
  peer_read(&r, &hb, p, sizeof p);
  peer_read(&r, &hc, p, sizeof p);
  tt_rpc_cancel(&qb);
  tt_rpc_cancel(&qb); /* a no-op the second time */
  peer_write(&r, TT_FRAME_REPLY, hb.id, "late");
  peer_write(&r, TT_FRAME_REPLY, ha.id, "yes");
  tt_test_run_until(&r.loop, &a.ended, 5000);
  for (int i = 0; i < 20; i++) uv_run(&r.loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(a.status, 0);
  ck_assert_str_eq(a.payload, "yes");
  ck_assert_int_eq(b.ended, 0);
  tt_rpc_stats(&r.rpc, &st);
  ck_assert_uint_eq(st.cancelled, 1);
  ck_assert_uint_eq(st.late_replies, 1);
  ck_assert_uint_eq(st.in_flight, 1);
  /* the one left open ends when the rpc closes */
  rig_down(&r);
  ck_assert_int_eq(c.ended, 1);
  ck_assert_int_eq(c.status, TT_ERR_IPC_CHANNEL_CLOSED);
}
END_TEST

START_TEST(test_close_fails_pending_calls) {
  rig_t r;
  call_seen_t a = {0};
  int closed = 0;
  rig_up(&r);
  ck_assert_int_eq(tt_rpc_call(&r.rpc, "x", 1, NULL, on_call, &a), 0);
  r.rpc.data = &closed;
  tt_rpc_close(&r.rpc, on_rpc_closed);
  ck_assert_int_eq(a.ended, 1);
  ck_assert_int_eq(a.status, TT_ERR_IPC_CHANNEL_CLOSED);
  ck_assert_int_eq(closed, 0);
  ck_assert_int_eq(tt_rpc_call(&r.rpc, "y", 1, NULL, on_call, &a),
                   TT_ERR_IPC_CHANNEL_CLOSED);
  tt_channel_close(&r.ch, NULL);
  close(r.peer);
  tt_test_run_until(&r.loop, &closed, 5000);
  tt_test_loop_close(&r.loop);
  ck_assert_int_eq(a.ended, 1);
}
END_TEST

/* ---- the peer protocol: heartbeats and readiness (tt_peer.h) ---------- */

static uint64_t fake_heap(void *arg) { return *(uint64_t *)arg; }

static void heartbeat_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                            const char *payload) {
  static uint64_t heap = 0x0102030405060708ull;
  (void)payload;
  ck_assert_int_eq(tt_peer_heartbeat(ch, h, fake_heap, &heap),
                   h->kind == TT_FRAME_PING || h->kind == TT_FRAME_PONG);
}

START_TEST(test_peer_heartbeat_ready_and_answers) {
  rig_t r;
  tt_frame_header_t h;
  char p[16];
  uint64_t heap = 42, got = 0;
  rig_up(&r);
  r.ch.on_frame = heartbeat_frame;
  ck_assert_int_eq(tt_peer_ready(&r.ch, fake_heap, &heap), 0);
  peer_read(&r, &h, p, sizeof p);
  ck_assert_uint_eq(h.kind, TT_FRAME_PONG);
  ck_assert_uint_eq(h.id, 0); /* id 0: ready */
  ck_assert_int_eq(tt_peer_pong_heap(&h, p, &got), 0);
  ck_assert_uint_eq(got, 42);
  peer_write(&r, TT_FRAME_PONG, 3, ""); /* consumed, not answered */
  peer_write(&r, TT_FRAME_PING, 7, "");
  peer_read(&r, &h, p, sizeof p);
  ck_assert_uint_eq(h.kind, TT_FRAME_PONG);
  ck_assert_uint_eq(h.id, 7);
  ck_assert_int_eq(tt_peer_pong_heap(&h, p, &got), 0);
  ck_assert_uint_eq(got, 0x0102030405060708ull); /* u64 little-endian */
  ck_assert_uint_eq((unsigned char)p[0], 0x08);
  h.len = 0; /* a pong without a size says nothing */
  ck_assert_int_eq(tt_peer_pong_heap(&h, p, &got), -1);
  /* answers: a reply, a fault, a refusal; never to id 0 */
  ck_assert_int_eq(tt_peer_answer(&r.ch, 9, TT_ANSWER_REPLY, "r", 1), 0);
  ck_assert_int_eq(tt_peer_answer(&r.ch, 10, TT_ANSWER_FAULT, "f", 1), 0);
  ck_assert_int_eq(tt_peer_answer(&r.ch, 11, TT_ANSWER_REFUSAL, "n", 1), 0);
  ck_assert_int_eq(tt_peer_answer(&r.ch, 0, TT_ANSWER_REPLY, "x", 1),
                   UV_EINVAL);
  peer_read(&r, &h, p, sizeof p);
  ck_assert(h.kind == TT_FRAME_REPLY && h.id == 9 && p[0] == 'r');
  peer_read(&r, &h, p, sizeof p);
  ck_assert(h.kind == TT_FRAME_FAULT && h.id == 10 && p[0] == 'f');
  peer_read(&r, &h, p, sizeof p);
  ck_assert(h.kind == TT_FRAME_FAULT && h.id == 11 && p[0] == 'n');
  r.ch.on_frame = on_frame;
  rig_down(&r);
}
END_TEST

/* The log sink keeps the same contract, with or without a poll handle. */
static void on_sink_closed(tt_logsink_t *ls) { (*(int *)ls->data)++; }

START_TEST(test_logsink_close_is_deferred) {
  uv_loop_t loop;
  tt_logsink_t ls;
  char path[] = "/tmp/tether-logsink-XXXXXX";
  int fd = mkstemp(path), closed = 0;
  char buf[64] = {0};
  ck_assert_int_ge(fd, 0);
  uv_loop_init(&loop);
  memset(&ls, 0, sizeof ls);
  ls.data = &closed;
  ck_assert_int_eq(tt_logsink_open(&loop, &ls, path), 0);
  tt_logsink_write(&ls, "one\n", 4);
  tt_logsink_close(&ls, on_sink_closed);
  ck_assert_int_eq(closed, 0);
  tt_logsink_close(&ls, on_sink_closed);
  tt_test_run_until(&loop, &closed, 5000);
  tt_test_run_dry(&loop, 1000);
  ck_assert_int_eq(closed, 1);
  tt_test_loop_close(&loop);
  ck_assert_int_eq(read(fd, buf, sizeof buf - 1), 4);
  ck_assert_str_eq(buf, "one\n");
  close(fd);
  unlink(path);
}
END_TEST

Suite *rpc_suite(void) {
  Suite *s = suite_create("rpc");
  TCase *tc = tcase_create("rpc");
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, test_replies_reach_their_calls);
  tcase_add_test(tc, test_retries_under_new_ids_then_times_out);
  tcase_add_test(tc, test_retries_carry_descriptors_again);
  tcase_add_test(tc, test_call_with_keeps_the_callers_bytes);
  tcase_add_test(tc, test_close_fails_pending_calls);
  tcase_add_test(tc, test_requests_answered_and_cancelled);
  tcase_add_test(tc, test_logsink_close_is_deferred);
  tcase_add_test(tc, test_peer_heartbeat_ready_and_answers);
  suite_add_tcase(s, tc);
  return s;
}
