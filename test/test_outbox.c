/* Tests of the outbox (core/tt_outbox.h) over real channels on
 * socketpairs: frames wait without a target, go in order once there is
 * one, come back in order from a channel that ended before the kernel took
 * them, time out, fail when shut, and the close is deferred. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop_util.h"
#include "suites.h"
#include "tt_error.h"
#include "tt_outbox.h"

typedef struct {
  int n;         /* callbacks run */
  int status[8]; /* by frame number */
  int order[8];  /* frame numbers in callback order */
} seen_t;

typedef struct {
  seen_t *seen;
  int no;
} tag_t;

static void on_sent(void *arg, int status) {
  tag_t *t = arg;
  t->seen->status[t->no] = status;
  t->seen->order[t->seen->n++] = t->no;
}

/* A channel on one end of a socketpair; the other end is returned. */
static int channel_up(uv_loop_t *loop, tt_channel_t *ch) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ck_assert_int_eq(tt_channel_init(loop, ch, sv[0], NULL), 0);
  return sv[1];
}

/* Reads `n` frames from the peer end; their ids in `ids`. */
static void peer_read_ids(uv_loop_t *loop, int fd, int n, uint32_t *ids) {
  for (int i = 0; i < n; i++) {
    unsigned char hb[TT_FRAME_HEADER_SIZE];
    tt_frame_header_t h;
    const char *why;
    char p[16];
    size_t got = 0;
    while (got < sizeof hb) {
      ssize_t k = recv(fd, hb + got, sizeof hb - got, MSG_DONTWAIT);
      if (k > 0)
        got += (size_t)k;
      else
        uv_run(loop, UV_RUN_NOWAIT);
    }
    ck_assert_int_eq(tt_frame_header_parse(hb, 1 << 20, &h, &why), 0);
    ck_assert_uint_le(h.len, sizeof p);
    if (h.len)
      ck_assert_int_eq(recv(fd, p, h.len, MSG_WAITALL), (ssize_t)h.len);
    ids[i] = h.id;
  }
}

static void on_channel_closed(tt_channel_t *ch) { (*(int *)ch->data)++; }
static void on_outbox_closed(tt_outbox_t *ob) { (*(int *)ob->data)++; }

START_TEST(test_waits_then_delivers_in_order_and_requeues) {
  uv_loop_t loop;
  tt_outbox_t ob;
  tt_channel_t a, b;
  seen_t seen = {0};
  tag_t tags[8];
  uint32_t ids[4];
  int pa, pb, closed = 0, ob_closed = 0;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  for (int i = 0; i < 8; i++) tags[i] = (tag_t){&seen, i};
  ob.data = &ob_closed;
  tt_outbox_init(&loop, &ob, 3);
  /* no target: frames wait, up to the limit */
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(tt_outbox_send(&ob, TT_FRAME_MESSAGE, (uint32_t)i + 1,
                                    "m", 1, 0, on_sent, &tags[i]),
                     0);
  ck_assert_int_eq(tt_outbox_send(&ob, TT_FRAME_MESSAGE, 9, "m", 1, 0, on_sent,
                                  &tags[7]),
                   TT_ERR_QUEUE_FULL);
  ck_assert_uint_eq(tt_outbox_queued(&ob), 3);
  /* a target that ends before writing: the frames come back in order */
  pa = channel_up(&loop, &a);
  a.data = &closed;
  tt_outbox_target(&ob, &a);
  ck_assert_uint_eq(tt_outbox_queued(&ob), 0);
  tt_outbox_target(&ob, NULL);
  tt_channel_close(&a, on_channel_closed);
  tt_test_run_until(&loop, &closed, 5000);
  ck_assert_int_eq(seen.n, 0); /* nothing was lost or told */
  ck_assert_uint_eq(tt_outbox_queued(&ob), 3);
  /* a new target gets them, in the order they were sent */
  pb = channel_up(&loop, &b);
  tt_outbox_target(&ob, &b);
  peer_read_ids(&loop, pb, 3, ids);
  ck_assert_uint_eq(ids[0], 1);
  ck_assert_uint_eq(ids[1], 2);
  ck_assert_uint_eq(ids[2], 3);
  tt_test_run_until_n(&loop, &seen.n, 3, 5000);
  ck_assert_int_eq(seen.order[0], 0);
  ck_assert_int_eq(seen.order[2], 2);
  ck_assert_int_eq(seen.status[1], 0);
  /* the close is deferred and idempotent */
  tt_outbox_close(&ob, on_outbox_closed);
  tt_outbox_close(&ob, on_outbox_closed);
  ck_assert_int_eq(ob_closed, 0);
  ck_assert_int_eq(tt_outbox_send(&ob, TT_FRAME_MESSAGE, 5, "m", 1, 0,
                                  on_sent, &tags[5]),
                   TT_ERR_CLOSED);
  tt_test_run_until(&loop, &ob_closed, 5000);
  closed = 0;
  b.data = &closed;
  tt_channel_close(&b, on_channel_closed);
  tt_test_run_until(&loop, &closed, 5000);
  close(pa);
  close(pb);
  tt_test_loop_close(&loop);
  ck_assert_int_eq(ob_closed, 1);
  ck_assert_int_eq(seen.n, 3);
}
END_TEST

START_TEST(test_deadlines_and_shut) {
  uv_loop_t loop;
  tt_outbox_t ob;
  seen_t seen = {0};
  tag_t tags[8];
  int ob_closed = 0;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  for (int i = 0; i < 8; i++) tags[i] = (tag_t){&seen, i};
  ob.data = &ob_closed;
  tt_outbox_init(&loop, &ob, 0);
  ck_assert_int_eq(tt_outbox_send(&ob, TT_FRAME_MESSAGE, 1, "m", 1, 20,
                                  on_sent, &tags[0]),
                   0);
  ck_assert_int_eq(tt_outbox_send(&ob, TT_FRAME_MESSAGE, 2, "m", 1, 0,
                                  on_sent, &tags[1]),
                   0);
  tt_test_run_until(&loop, &seen.n, 5000);
  ck_assert_int_eq(seen.order[0], 0);
  ck_assert_int_eq(seen.status[0], TT_ERR_TIMEOUT);
  ck_assert_uint_eq(tt_outbox_queued(&ob), 1);
  tt_outbox_shut(&ob, TT_ERR_WORKER_INIT);
  ck_assert_int_eq(seen.n, 2);
  ck_assert_int_eq(seen.status[1], TT_ERR_WORKER_INIT);
  ck_assert_int_eq(tt_outbox_send(&ob, TT_FRAME_MESSAGE, 3, "m", 1, 0,
                                  on_sent, &tags[2]),
                   TT_ERR_CLOSED);
  tt_outbox_close(&ob, on_outbox_closed);
  tt_test_run_until(&loop, &ob_closed, 5000);
  tt_test_loop_close(&loop);
  ck_assert_int_eq(seen.n, 2);
}
END_TEST

Suite *outbox_suite(void) {
  Suite *s = suite_create("outbox");
  TCase *tc = tcase_create("outbox");
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, test_waits_then_delivers_in_order_and_requeues);
  tcase_add_test(tc, test_deadlines_and_shut);
  suite_add_tcase(s, tc);
  return s;
}
