/* Tests of the framed channel (core/tt_channel.h) over a socketpair, in
 * one process: framing, backpressure, disconnect and its flush timeout,
 * EOF after a local disconnect, protocol errors, the per-iteration
 * budget. */
#include <check.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop_util.h"
#include "suites.h"
#include "tt_channel.h"
#include "tt_error.h"
#include "tt_lines.h"

typedef struct {
  int frames, disconnects, drains, errors, last_err, stop_after;
  char why[160];
  uint32_t bytes;
  int max_per_tick, this_tick;
} seen_t;

static void on_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload) {
  seen_t *s = ch->data;
  (void)payload;
  s->frames++;
  s->this_tick++;
  if (s->this_tick > s->max_per_tick) s->max_per_tick = s->this_tick;
  s->bytes += h->len;
  if (s->stop_after && s->frames == s->stop_after) tt_channel_disconnect(ch);
}

static void on_error(tt_channel_t *ch, int err, const char *why) {
  seen_t *s = ch->data;
  s->errors++;
  s->last_err = err;
  snprintf(s->why, sizeof s->why, "%s", why ? why : "");
}

static void on_drain(tt_channel_t *ch) { ((seen_t *)ch->data)->drains++; }
static void on_disconnect(tt_channel_t *ch) {
  ((seen_t *)ch->data)->disconnects++;
}

static void on_check(uv_check_t *c) { ((seen_t *)c->data)->this_tick = 0; }

static void setup(uv_loop_t *loop, tt_channel_t *ch, seen_t *s, int *peer,
                  const tt_channel_options_t *opts) {
  int sv[2];
  memset(s, 0, sizeof *s);
  ck_assert_int_eq(uv_loop_init(loop), 0);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ck_assert_int_eq(tt_channel_init(loop, ch, sv[0], opts), 0);
  ch->data = s;
  ch->on_frame = on_frame;
  ch->on_error = on_error;
  ch->on_drain = on_drain;
  ch->on_disconnect = on_disconnect;
  tt_channel_ref(ch, 1);
  *peer = sv[1];
}

static void write_frame(int fd, unsigned kind, uint32_t id, const char *p,
                        uint32_t len) {
  unsigned char h[TT_FRAME_HEADER_SIZE];
  tt_frame_header_pack(h, kind, 0, id, len);
  ck_assert_int_eq(write(fd, h, sizeof h), (ssize_t)sizeof h);
  if (len) ck_assert_int_eq(write(fd, p, len), (ssize_t)len);
}

static void close_channel(uv_loop_t *loop, tt_channel_t *ch) {
  tt_channel_close(ch, NULL);
  tt_test_loop_close(loop);
}

/* The size rule, before any channel exists (supervisors and pools check
 * their workers' limit with it). */
START_TEST(test_size_check_from_options) {
  tt_channel_options_t o;
  size_t env = tt_lines_overhead(TT_FRAME_REQUEST);
  memset(&o, 0, sizeof o);
  ck_assert_uint_eq(tt_channel_options_max_message(NULL),
                    TT_FRAME_DEFAULT_MAX_MESSAGE);
  ck_assert_uint_eq(tt_channel_options_max_message(&o),
                    TT_FRAME_DEFAULT_MAX_MESSAGE);
  o.max_message = (size_t)1 << 40; /* lengths are 32 bits on the wire */
  ck_assert_uint_eq(tt_channel_options_max_message(&o), UINT32_MAX);
  o.max_message = 100;
  ck_assert_int_eq(tt_channel_options_check_size(&o, TT_FRAME_REQUEST, 100), 0);
  ck_assert_int_eq(tt_channel_options_check_size(&o, TT_FRAME_REQUEST, 101),
                   TT_ERR_SERIALIZE);
  o.lines = 1; /* the envelope counts, whatever the id */
  ck_assert_int_eq(
      tt_channel_options_check_size(&o, TT_FRAME_REQUEST, 100 - env), 0);
  ck_assert_int_eq(
      tt_channel_options_check_size(&o, TT_FRAME_REQUEST, 101 - env),
      TT_ERR_SERIALIZE);
  ck_assert_int_eq(tt_channel_options_check_size(&o, TT_FRAME_MESSAGE, 100),
                   0);
}
END_TEST

START_TEST(test_frames_both_ways) {
  uv_loop_t loop;
  tt_channel_t ch;
  seen_t s;
  int peer;
  char buf[64];
  tt_channel_stats_t st;
  setup(&loop, &ch, &s, &peer, NULL);
  write_frame(peer, TT_FRAME_MESSAGE, 0, "hello", 5);
  write_frame(peer, TT_FRAME_MESSAGE, 0, "", 0);
  tt_test_run_until_n(&loop, &s.frames, 2, 10000);
  ck_assert_int_eq(tt_channel_send(&ch, TT_FRAME_MESSAGE, 0, "abc", 3, NULL,
                                   NULL), 1);
  uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(read(peer, buf, sizeof buf), TT_FRAME_HEADER_SIZE + 3);
  ck_assert_int_eq(memcmp(buf + TT_FRAME_HEADER_SIZE, "abc", 3), 0);
  tt_channel_stats(&ch, &st);
  ck_assert_uint_eq(st.messages_received, 2);
  ck_assert_uint_eq(st.messages_sent, 1);
  close(peer);
  close_channel(&loop, &ch);
}
END_TEST

START_TEST(test_backpressure_and_drain) {
  uv_loop_t loop;
  tt_channel_t ch;
  seen_t s;
  int peer, rc = 1, sent = 0;
  char chunk[4096], sink[65536];
  tt_channel_options_t o = {0, 64 << 10, 0, 0};
  setup(&loop, &ch, &s, &peer, &o);
  memset(chunk, 'x', sizeof chunk);
  while (rc == 1 && sent < 100000) {
    rc = tt_channel_send(&ch, TT_FRAME_MESSAGE, 0, chunk, sizeof chunk, NULL,
                         NULL);
    sent++;
  }
  ck_assert_int_eq(rc, 0); /* over the mark: still queued */
  ck_assert_uint_ge(tt_channel_queued(&ch), 64 << 10);
  /* the peer reads everything: the backlog drains */
  while (s.drains == 0) {
    uv_run(&loop, UV_RUN_NOWAIT);
    while (recv(peer, sink, sizeof sink, MSG_DONTWAIT) > 0) {
    }
  }
  ck_assert_uint_eq(tt_channel_queued(&ch), 0);
  close(peer);
  close_channel(&loop, &ch);
}
END_TEST

START_TEST(test_disconnect_flush_timeout) {
  uv_loop_t loop;
  tt_channel_t ch;
  seen_t s;
  int peer;
  char big[1 << 16];
  tt_channel_options_t o = {0, 0, 0, 100}; /* flush timeout 100 ms */
  setup(&loop, &ch, &s, &peer, &o);
  memset(big, 'y', sizeof big);
  for (int i = 0; i < 200; i++)
    tt_channel_send(&ch, TT_FRAME_MESSAGE, 0, big, sizeof big, NULL, NULL);
  ck_assert_int_eq(tt_channel_disconnect(&ch), 0);
  ck_assert_int_eq(tt_channel_disconnect(&ch), TT_ERR_IPC_DISCONNECTED);
  tt_test_run_until(&loop, &s.disconnects, 3000); /* the peer never reads */
  ck_assert_int_eq(s.last_err, TT_ERR_IPC_CHANNEL_CLOSED);
  ck_assert_ptr_nonnull(strstr(s.why, "flush timeout"));
  close(peer);
  close_channel(&loop, &ch);
}
END_TEST

START_TEST(test_local_disconnect_then_eof_is_not_truncation) {
  uv_loop_t loop;
  tt_channel_t ch;
  seen_t s;
  int peer;
  setup(&loop, &ch, &s, &peer, NULL);
  s.stop_after = 1; /* disconnect from inside the first frame's callback */
  write_frame(peer, TT_FRAME_MESSAGE, 0, "one", 3);
  write_frame(peer, TT_FRAME_PONG, 0, NULL, 0);
  write_frame(peer, TT_FRAME_MESSAGE, 0, "two", 3);
  close(peer);
  tt_test_run_until(&loop, &s.disconnects, 3000);
  ck_assert_int_eq(s.frames, 1);
  ck_assert_int_eq(s.errors, 0);
  close_channel(&loop, &ch);
}
END_TEST

START_TEST(test_truncated_frame_at_eof) {
  uv_loop_t loop;
  tt_channel_t ch;
  seen_t s;
  int peer;
  unsigned char h[TT_FRAME_HEADER_SIZE];
  setup(&loop, &ch, &s, &peer, NULL);
  tt_frame_header_pack(h, TT_FRAME_MESSAGE, 0, 0, 100);
  ck_assert_int_eq(write(peer, h, sizeof h), (ssize_t)sizeof h);
  ck_assert_int_eq(write(peer, "abc", 3), 3);
  close(peer);
  tt_test_run_until(&loop, &s.disconnects, 3000);
  ck_assert_int_eq(s.last_err, TT_ERR_IPC_PROTOCOL);
  ck_assert_ptr_nonnull(strstr(s.why, "truncated"));
  close_channel(&loop, &ch);
}
END_TEST

START_TEST(test_malformed_header_closes) {
  uv_loop_t loop;
  tt_channel_t ch;
  seen_t s;
  int peer;
  static const char junk[TT_FRAME_HEADER_SIZE] = "\x01\x00\x00\x00\x09\x01";
  setup(&loop, &ch, &s, &peer, NULL);
  ck_assert_int_eq(write(peer, junk, sizeof junk), (ssize_t)sizeof junk);
  tt_test_run_until(&loop, &s.disconnects, 3000);
  ck_assert_int_eq(s.last_err, TT_ERR_IPC_PROTOCOL);
  ck_assert_ptr_nonnull(strstr(s.why, "version"));
  close(peer);
  close_channel(&loop, &ch);
}
END_TEST

START_TEST(test_request_without_id_is_refused) {
  uv_loop_t loop;
  tt_channel_t ch;
  seen_t s;
  int peer;
  setup(&loop, &ch, &s, &peer, NULL);
  write_frame(peer, TT_FRAME_REQUEST, 0, "x", 1);
  tt_test_run_until(&loop, &s.disconnects, 3000);
  ck_assert_int_eq(s.last_err, TT_ERR_IPC_PROTOCOL);
  ck_assert_int_eq(s.frames, 0);
  close(peer);
  close_channel(&loop, &ch);
}
END_TEST

START_TEST(test_budget_per_iteration) {
  uv_loop_t loop;
  tt_channel_t ch;
  seen_t s;
  int peer, i;
  uv_check_t tick;
  char buf[TT_FRAME_HEADER_SIZE * 2000];
  setup(&loop, &ch, &s, &peer, NULL);
  uv_check_init(&loop, &tick);
  tick.data = &s;
  uv_check_start(&tick, on_check);
  uv_unref((uv_handle_t *)&tick);
  for (i = 0; i < 2000; i++)
    tt_frame_header_pack((unsigned char *)buf + i * TT_FRAME_HEADER_SIZE,
                         TT_FRAME_MESSAGE, 0, 0, 0);
  ck_assert_int_eq(write(peer, buf, sizeof buf), (ssize_t)sizeof buf);
  tt_test_run_until_n(&loop, &s.frames, 2000, 10000);
  ck_assert_int_le(s.max_per_tick, TT_CHANNEL_FRAMES_PER_TICK);
  uv_close((uv_handle_t *)&tick, NULL);
  close(peer);
  close_channel(&loop, &ch);
}
END_TEST

START_TEST(test_send_auto_drops_when_peer_does_not_read) {
  uv_loop_t loop;
  tt_channel_t ch;
  seen_t s;
  int peer;
  char chunk[8192];
  tt_channel_stats_t st;
  tt_channel_options_t o = {0, 16 << 10, 0, 0};
  setup(&loop, &ch, &s, &peer, &o);
  memset(chunk, 'z', sizeof chunk);
  for (int i = 0; i < 100; i++)
    tt_channel_send(&ch, TT_FRAME_MESSAGE, 0, chunk, sizeof chunk, NULL, NULL);
  ck_assert_int_eq(tt_channel_send_auto(&ch, TT_FRAME_PONG, 1, NULL, 0), 0);
  tt_channel_stats(&ch, &st);
  ck_assert_uint_eq(st.auto_dropped, 1);
  close(peer);
  close_channel(&loop, &ch);
}
END_TEST

Suite *channel_suite(void) {
  Suite *s = suite_create("channel");
  TCase *tc = tcase_create("channel");
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, test_size_check_from_options);
  tcase_add_test(tc, test_frames_both_ways);
  tcase_add_test(tc, test_backpressure_and_drain);
  tcase_add_test(tc, test_disconnect_flush_timeout);
  tcase_add_test(tc, test_local_disconnect_then_eof_is_not_truncation);
  tcase_add_test(tc, test_truncated_frame_at_eof);
  tcase_add_test(tc, test_malformed_header_closes);
  tcase_add_test(tc, test_request_without_id_is_refused);
  tcase_add_test(tc, test_budget_per_iteration);
  tcase_add_test(tc, test_send_auto_drops_when_peer_does_not_read);
  suite_add_tcase(s, tc);
  return s;
}
