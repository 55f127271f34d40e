/* Tests of descriptors over a channel (tt_channel_send_fd,
 * tt_channel_take_fd; PROTOCOL.md "Handles"): two channels on one
 * socketpair in one loop, and a hostile peer writing by hand.  Every test
 * counts the open descriptors of the process before and after: none may
 * leak on any path. */
#include <check.h>
#include <fcntl.h>
#include <string.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loop_util.h"
#include "peer_util.h"
#include "suites.h"
#include "tt_channel.h"
#include "tt_error.h"
#include "tt_acceptor.h"
#include "tt_handle.h"
#include "tt_outbox.h"

/* Open descriptors of this process.  libuv keeps two of its own for the
 * process's life from the first loop on: made before any count. */
static int open_fds(void) {
  int n = tt_test_open_fds();
  ck_assert_int_ge(n, 0);
  return n;
}

typedef struct {
  int frames, errors, disconnects, take;
  int take_all;    /* every descriptor of a frame, not only the first */
  int extra[32];   /* then the second and later ones, in order */
  int nextra;
  int fds[8];      /* taken, by frame number */
  unsigned flags[8];
  char why[160];
} side_t;

static void on_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload) {
  side_t *s = ch->data;
  (void)payload;
  if (s->frames < 8) {
    s->flags[s->frames] = h->flags;
    s->fds[s->frames] = s->take ? tt_channel_take_fd(ch) : -1;
  }
  if (s->take_all) {
    int fd;
    while ((fd = tt_channel_take_fd(ch)) >= 0 && s->nextra < 32)
      s->extra[s->nextra++] = fd;
    if (fd >= 0) close(fd);
  }
  s->frames++;
}

static void on_error(tt_channel_t *ch, int err, const char *why) {
  side_t *s = ch->data;
  (void)err;
  s->errors++;
  snprintf(s->why, sizeof s->why, "%s", why ? why : "");
}

static void on_disconnect(tt_channel_t *ch) {
  ((side_t *)ch->data)->disconnects++;
}

static void side_up(uv_loop_t *loop, tt_channel_t *ch, side_t *s, int fd) {
  memset(s, 0, sizeof *s);
  for (int i = 0; i < 8; i++) s->fds[i] = -1;
  ck_assert_int_eq(tt_channel_init(loop, ch, fd, NULL), 0);
  ch->data = s;
  ch->on_frame = on_frame;
  ch->on_error = on_error;
  ch->on_disconnect = on_disconnect;
  tt_channel_ref(ch, 1);
}

/* A loop with channels a -> b on a socket pair, b taking the descriptors
 * that come, and a pipe p whose ends are descriptors to send. */
static void pair_up(uv_loop_t *loop, tt_channel_t *a, side_t *sa,
                    tt_channel_t *b, side_t *sb, int p[2]) {
  int sv[2];
  ck_assert_int_eq(uv_loop_init(loop), 0);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
  side_up(loop, a, sa, sv[0]);
  side_up(loop, b, sb, sv[1]);
  sb->take = 1;
}

static int closed_count;
static void on_closed(tt_channel_t *ch) {
  (void)ch;
  closed_count++;
}

/* Same file? */
static int same_file(int a, int b) {
  struct stat sa, sb;
  ck_assert_int_eq(fstat(a, &sa), 0);
  ck_assert_int_eq(fstat(b, &sb), 0);
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* Frames with and without descriptors, queued in one iteration (so they
 * are coalesced), arrive each with its own, in order; the sender's copies
 * stay open; a descriptor nobody takes is closed by the channel. */
START_TEST(test_descriptors_travel_with_their_frames) {
  uv_loop_t loop;
  tt_channel_t a, b;
  side_t sa, sb;
  int sv[2], p1[2], p2[2], before;
  char buf[8];
  before = open_fds();
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ck_assert_int_eq(pipe2(p1, O_CLOEXEC), 0);
  ck_assert_int_eq(pipe2(p2, O_CLOEXEC), 0);
  side_up(&loop, &a, &sa, sv[0]);
  side_up(&loop, &b, &sb, sv[1]);
  sb.take = 1;
  ck_assert_int_ge(tt_channel_send(&a, TT_FRAME_MESSAGE, 0, "a", 1, NULL,
                                   NULL), 0);
  ck_assert_int_ge(tt_channel_send_fd(&a, TT_FRAME_MESSAGE, 0, "b", 1, p1[1],
                                      NULL, NULL), 0);
  ck_assert_int_ge(tt_channel_send(&a, TT_FRAME_MESSAGE, 0, "c", 1, NULL,
                                   NULL), 0);
  ck_assert_int_ge(tt_channel_send_fd(&a, TT_FRAME_REQUEST, 9, "d", 1, p2[1],
                                      NULL, NULL), 0);
  /* kinds that cannot carry one, and JSON lines, are refused */
  ck_assert_int_eq(tt_channel_send_fd(&a, TT_FRAME_PING, 1, NULL, 0, p1[1],
                                      NULL, NULL), UV_EINVAL);
  ck_assert_int_eq(tt_channel_send_fd(&a, TT_FRAME_MESSAGE, 0, "x", 1, -1,
                                      NULL, NULL), UV_EBADF);
  tt_test_run_until_n(&loop, &sb.frames, 4, 5000);
  ck_assert_int_eq(sb.errors, 0);
  ck_assert_int_eq(sb.fds[0], -1);
  ck_assert_int_eq(sb.fds[2], -1);
  ck_assert_int_ge(sb.fds[1], 0);
  ck_assert_int_ge(sb.fds[3], 0);
  ck_assert_uint_eq(sb.flags[1], TT_FRAME_F_HANDLE);
  ck_assert(same_file(sb.fds[1], p1[1]));
  ck_assert(same_file(sb.fds[3], p2[1]));
  ck_assert_int_eq(fcntl(sb.fds[1], F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  /* it works: what goes in the received end comes out of our pipe */
  ck_assert_int_eq(write(sb.fds[3], "hi", 2), 2);
  ck_assert_int_eq(read(p2[0], buf, sizeof buf), 2);
  close(sb.fds[1]);
  close(sb.fds[3]);
  /* one not taken is closed for the receiver */
  sb.take = 0;
  ck_assert_int_ge(tt_channel_send_fd(&a, TT_FRAME_MESSAGE, 0, "e", 1, p1[1],
                                      NULL, NULL), 0);
  tt_test_run_until_n(&loop, &sb.frames, 5, 5000);
  ck_assert_uint_eq(sb.flags[4], TT_FRAME_F_HANDLE);
  /* a control frame may carry one too (a cluster's connections) */
  sb.take = 1;
  ck_assert_int_ge(tt_channel_send_fd(&a, TT_FRAME_CONTROL, 0, "f", 1, p1[1],
                                      NULL, NULL), 0);
  tt_test_run_until_n(&loop, &sb.frames, 6, 5000);
  ck_assert_int_eq(sb.errors, 0);
  ck_assert_uint_eq(sb.flags[5], TT_FRAME_F_HANDLE);
  ck_assert(same_file(sb.fds[5], p1[1]));
  close(sb.fds[5]);
  closed_count = 0;
  tt_channel_close(&a, on_closed);
  tt_channel_close(&b, on_closed);
  tt_test_run_until_n(&loop, &closed_count, 2, 5000);
  tt_test_loop_close(&loop);
  close(p1[0]), close(p1[1]), close(p2[0]), close(p2[1]);
  ck_assert_int_eq(open_fds(), before);
}
END_TEST

/* One sendmsg() of `n` bytes as a hostile peer writes it, with descriptor
 * `fd` attached when fd >= 0: what it returns. */
static ssize_t peer_sendmsg(int s, const void *p, size_t n, int fd) {
  return tt_test_sendmsg_fd(s, p, n, fd, 0);
}

/* A frame that says it carries a descriptor and comes without one, and a
 * descriptor that comes without its frame, are protocol errors; the
 * descriptor is closed, nothing leaks. */
static void hostile(unsigned kind, unsigned flags, int with_fd,
                    const char *want) {
  uv_loop_t loop;
  tt_channel_t b;
  side_t sb;
  int sv[2], p[2], before;
  unsigned char h[TT_FRAME_HEADER_SIZE];
  before = open_fds();
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
  side_up(&loop, &b, &sb, sv[1]);
  sb.take = 1;
  tt_frame_header_pack(h, kind, flags, 1, 0);
  ck_assert_int_eq(peer_sendmsg(sv[0], h, sizeof h, with_fd ? p[1] : -1),
                   (ssize_t)sizeof h);
  if (with_fd && !flags) { /* the frame after the descriptor's */
    tt_frame_header_pack(h, TT_FRAME_MESSAGE, 0, 0, 0);
    ck_assert_int_eq(write(sv[0], h, sizeof h), (ssize_t)sizeof h);
  }
  close(p[1]);
  tt_test_run_until(&loop, &sb.disconnects, 5000);
  ck_assert_int_eq(sb.errors, 1);
  ck_assert_str_eq(sb.why, want);
  closed_count = 0;
  tt_channel_close(&b, on_closed);
  tt_test_run_until(&loop, &closed_count, 5000);
  tt_test_loop_close(&loop);
  /* every copy of the pipe's write end is gone: its reader sees EOF */
  {
    char c;
    ck_assert_int_eq(read(p[0], &c, 1), 0);
  }
  close(p[0]);
  close(sv[0]);
  ck_assert_int_eq(open_fds(), before);
}

START_TEST(test_flagged_frame_without_descriptor) {
  hostile(TT_FRAME_MESSAGE, TT_FRAME_F_HANDLE, 0,
          "a frame that carries a descriptor came without one");
}
END_TEST

START_TEST(test_frame_with_fewer_descriptors) {
  hostile(TT_FRAME_MESSAGE, tt_frame_fd_flags(2), 1,
          "a frame came with fewer descriptors than its header says");
}
END_TEST

START_TEST(test_descriptor_on_a_ping) {
  hostile(TT_FRAME_PING, TT_FRAME_F_HANDLE, 1,
          "a descriptor on a frame kind that cannot carry one");
}
END_TEST

START_TEST(test_descriptor_without_its_frame) {
  hostile(TT_FRAME_MESSAGE, 0, 1, "a descriptor came without its frame");
}
END_TEST

/* A peer cannot make us hold descriptors: a flagged frame whose payload
 * trickles in a byte at a time, each byte with a descriptor, ends the
 * channel once 32 wait (two frames' worth); all are closed. */
START_TEST(test_descriptors_waiting_are_bounded) {
  uv_loop_t loop;
  tt_channel_t b;
  side_t sb;
  int sv[2], p[2], before;
  unsigned char h[TT_FRAME_HEADER_SIZE];
  before = open_fds();
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
  side_up(&loop, &b, &sb, sv[1]);
  tt_frame_header_pack(h, TT_FRAME_MESSAGE, TT_FRAME_F_HANDLE, 0, 1 << 20);
  ck_assert_int_eq(write(sv[0], h, sizeof h), (ssize_t)sizeof h);
  for (int i = 0; i < 40 && !sb.disconnects; i++) {
    if (peer_sendmsg(sv[0], "x", 1, p[1]) < 0) break; /* (it closed) */
    for (int k = 0; k < 5; k++) uv_run(&loop, UV_RUN_NOWAIT);
  }
  tt_test_run_until(&loop, &sb.disconnects, 5000);
  ck_assert_str_eq(sb.why, "too many descriptors waiting for their frames");
  closed_count = 0;
  tt_channel_close(&b, on_closed);
  tt_test_run_until(&loop, &closed_count, 5000);
  tt_test_loop_close(&loop);
  close(sv[0]), close(p[0]), close(p[1]);
  ck_assert_int_eq(open_fds(), before);
}
END_TEST

/* Descriptors queued when the channel closes (the peer never read) are
 * closed: none leaks. */
START_TEST(test_unsent_descriptors_are_closed) {
  uv_loop_t loop;
  tt_channel_t a;
  side_t sa;
  int sv[2], p[2], before, mid;
  before = open_fds();
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
  side_up(&loop, &a, &sa, sv[0]);
  mid = open_fds();
  /* (a small frame first waits to be coalesced: the others queue behind
   * it, descriptors and all) */
  ck_assert_int_ge(tt_channel_send(&a, TT_FRAME_MESSAGE, 0, "q", 1, NULL,
                                   NULL), 0);
  for (int i = 0; i < 3; i++)
    ck_assert_int_ge(tt_channel_send_fd(&a, TT_FRAME_MESSAGE, 0, "m", 1, p[1],
                                        NULL, NULL), 0);
  ck_assert_int_eq(open_fds(), mid + 3); /* 3 duplicates wait */
  closed_count = 0;
  tt_channel_close(&a, on_closed); /* before the loop wrote anything */
  tt_test_run_until(&loop, &closed_count, 5000);
  tt_test_loop_close(&loop);
  close(sv[1]);
  close(p[0]);
  close(p[1]);
  ck_assert_int_eq(open_fds(), before);
}
END_TEST



/* With nothing queued, a frame with a descriptor is written at once and
 * our duplicate closed then: a burst of sends holds no descriptor per
 * frame (EMFILE).  The peer still gets each descriptor with its frame. */
START_TEST(test_descriptor_frames_go_at_once) {
  uv_loop_t loop;
  tt_channel_t a, b;
  side_t sa, sb;
  int p[2], before, mid;
  before = open_fds();
  pair_up(&loop, &a, &sa, &b, &sb, p);
  mid = open_fds();
  for (int i = 0; i < 6; i++) {
    ck_assert_int_ge(tt_channel_send_fd(&a, TT_FRAME_MESSAGE, 0, "m", 1, p[1],
                                        NULL, NULL), 0);
    ck_assert_int_eq(tt_channel_queued(&a), 0);
  }
  /* nothing of ours held (in flight, they are the kernel's) */
  ck_assert_int_eq(open_fds(), mid);
  while (sb.frames < 6) uv_run(&loop, UV_RUN_ONCE);
  for (int i = 0; i < 6; i++) {
    ck_assert_uint_eq(sb.flags[i] & TT_FRAME_F_HANDLE, TT_FRAME_F_HANDLE);
    ck_assert_int_ge(sb.fds[i], 0);
    close(sb.fds[i]);
  }
  closed_count = 0;
  tt_channel_close(&a, on_closed);
  tt_channel_close(&b, on_closed);
  while (closed_count < 2) uv_run(&loop, UV_RUN_ONCE);
  tt_test_loop_close(&loop);
  close(p[0]), close(p[1]);
  ck_assert_int_eq(open_fds(), before);
}
END_TEST

/* A frame carries up to 16 descriptors, which the receiver takes in the
 * order they were sent, whether the frame was queued (behind a small one)
 * or written at once; those it does not take are closed; 17 are refused. */
START_TEST(test_several_descriptors_per_frame) {
  uv_loop_t loop;
  tt_channel_t a, b;
  side_t sa, sb;
  int p[2], q[2], before, three[3], many[17];
  before = open_fds();
  pair_up(&loop, &a, &sa, &b, &sb, p);
  ck_assert_int_eq(pipe2(q, O_CLOEXEC), 0);
  three[0] = p[1], three[1] = q[1], three[2] = p[0];
  sb.take_all = 1;
  ck_assert_int_ge(tt_channel_send(&a, TT_FRAME_MESSAGE, 0, "q", 1, NULL,
                                   NULL), 0);
  ck_assert_int_ge(tt_channel_send_fds(&a, TT_FRAME_REQUEST, 7, "m", 1, three,
                                       3, NULL, NULL), 0);
  ck_assert_int_ge(tt_channel_send_fds(&a, TT_FRAME_MESSAGE, 0, "n", 1, NULL,
                                       0, NULL, NULL), 0);
  for (int i = 0; i < 17; i++) many[i] = p[1];
  ck_assert_int_eq(tt_channel_send_fds(&a, TT_FRAME_MESSAGE, 0, "x", 1, many,
                                       17, NULL, NULL), UV_EINVAL);
  tt_test_run_until_n(&loop, &sb.frames, 3, 5000);
  ck_assert_int_eq(sb.errors, 0);
  ck_assert_int_eq(sb.fds[0], -1);
  ck_assert_uint_eq(sb.flags[1], tt_frame_fd_flags(3));
  ck_assert_uint_eq(tt_frame_fd_count(sb.flags[1]), 3);
  ck_assert_int_eq(sb.nextra, 2);
  ck_assert(same_file(sb.fds[1], p[1]));
  ck_assert(same_file(sb.extra[0], q[1]));
  ck_assert(same_file(sb.extra[1], p[0]));
  ck_assert_int_eq(sb.fds[2], -1);
  close(sb.fds[1]), close(sb.extra[0]), close(sb.extra[1]);
  /* 16 written at once, none taken: the channel closes them */
  sb.take = sb.take_all = 0;
  ck_assert_int_ge(tt_channel_send_fds(&a, TT_FRAME_MESSAGE, 0, "o", 1, many,
                                       16, NULL, NULL), 0);
  ck_assert_int_eq(tt_channel_queued(&a), 0);
  tt_test_run_until_n(&loop, &sb.frames, 4, 5000);
  ck_assert_uint_eq(tt_frame_fd_count(sb.flags[3]), 16);
  ck_assert_int_eq(sb.errors, 0);
  closed_count = 0;
  tt_channel_close(&a, on_closed);
  tt_channel_close(&b, on_closed);
  tt_test_run_until_n(&loop, &closed_count, 2, 5000);
  tt_test_loop_close(&loop);
  close(p[0]), close(p[1]), close(q[0]), close(q[1]);
  ck_assert_int_eq(open_fds(), before);
}
END_TEST

/* tt_listen, tt_handle_kind, tt_handle_address. */
START_TEST(test_listen_kinds_and_addresses) {
  int l, c, a, p[2], u, port = 0, before = open_fds();
  char host[128], path[64], addr[96];
  struct sockaddr_in sin;
  ck_assert_int_eq(tt_listen("tcp://127.0.0.1:0", 0, 0, &l), 0);
  ck_assert_int_eq(tt_handle_kind(l), TT_HANDLE_TCP_SERVER);
  ck_assert_str_eq(tt_handle_kind_name(tt_handle_kind(l)), "tcp-server");
  ck_assert_int_eq(tt_handle_address(l, host, sizeof host, &port), 0);
  ck_assert_str_eq(host, "127.0.0.1");
  ck_assert_int_gt(port, 0);
  ck_assert_int_eq(fcntl(l, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  ck_assert_int_eq(fcntl(l, F_GETFL) & O_NONBLOCK, O_NONBLOCK);
  /* a connection: both ends are "tcp" */
  c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_port = htons((uint16_t)port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(connect(c, (struct sockaddr *)&sin, sizeof sin), 0);
  while ((a = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0) usleep(1000);
  ck_assert_int_eq(tt_handle_kind(c), TT_HANDLE_TCP);
  ck_assert_int_eq(tt_handle_kind(a), TT_HANDLE_TCP);
  /* the port is taken now: a second listener on it fails */
  snprintf(addr, sizeof addr, "tcp://127.0.0.1:%d", port);
  ck_assert_int_eq(tt_listen(addr, 0, 0, &u), UV_EADDRINUSE);
  close(a), close(c), close(l);
  /* Unix paths */
  snprintf(path, sizeof path, "/tmp/tt-handle-%d.sock", (int)getpid());
  unlink(path);
  snprintf(addr, sizeof addr, "unix:%s", path);
  ck_assert_int_eq(tt_listen(addr, 16, 0, &l), 0);
  ck_assert_int_eq(tt_handle_kind(l), TT_HANDLE_UNIX_SERVER);
  ck_assert_int_eq(tt_handle_address(l, host, sizeof host, &port), 0);
  ck_assert_str_eq(host, path);
  ck_assert_int_eq(port, -1);
  close(l);
  unlink(path);
  /* other descriptors */
  ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
  ck_assert_int_eq(tt_handle_kind(p[0]), TT_HANDLE_FD);
  ck_assert_int_eq(tt_handle_address(p[0], host, sizeof host, &port),
                   UV_ENOTSOCK);
  close(p[0]), close(p[1]);
  u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ck_assert_int_eq(tt_handle_kind(u), TT_HANDLE_UDP);
  close(u);
  /* malformed addresses */
  ck_assert_int_eq(tt_listen("127.0.0.1:80", 0, 0, &l), UV_EINVAL);
  ck_assert_int_eq(tt_listen("tcp://127.0.0.1", 0, 0, &l), UV_EINVAL);
  ck_assert_int_eq(tt_listen("tcp://127.0.0.1:99999", 0, 0, &l), UV_EINVAL);
  ck_assert_int_eq(tt_listen("tcp://::1:0", 0, 0, &l), UV_EINVAL);
  ck_assert_int_eq(tt_listen("tcp://[::1:0", 0, 0, &l), UV_EINVAL);
  ck_assert_int_eq(tt_listen("tcp://[]:0", 0, 0, &l), UV_EINVAL);
  /* a name: resolved (localhost is in /etc/hosts, no DNS needed) */
  ck_assert_int_eq(tt_listen("tcp://localhost:0", 0, 0, &l), 0);
  ck_assert_int_eq(tt_handle_kind(l), TT_HANDLE_TCP_SERVER);
  close(l);
  ck_assert_int_eq(tt_listen("unix:", 0, 0, &l), UV_EINVAL);
  memset(path, 'x', sizeof path - 1);
  path[sizeof path - 1] = '\0';
  {
    char longp[200];
    snprintf(longp, sizeof longp, "unix:/tmp/%s%s", path, path);
    ck_assert_int_eq(tt_listen(longp, 0, 0, &l), UV_ENAMETOOLONG);
  }
  ck_assert_int_eq(open_fds(), before);
}
END_TEST

static int sent_status = 1;
static void on_sent(void *arg, int status) {
  (void)arg;
  sent_status = status;
}

static void on_outbox_closed(tt_outbox_t *ob) {
  (void)ob;
  closed_count++;
}

/* An outbox keeps a duplicate while the frame waits for a channel, hands
 * it over with the frame, and closes it; a kind that cannot carry one is
 * refused at once. */
START_TEST(test_outbox_carries_descriptors) {
  uv_loop_t loop;
  tt_outbox_t ob;
  tt_channel_t a, b;
  side_t sa, sb;
  int p[2], before, mid;
  before = open_fds();
  pair_up(&loop, &a, &sa, &b, &sb, p);
  memset(&ob, 0, sizeof ob);
  tt_outbox_init(&loop, &ob, 0);
  mid = open_fds();
  ck_assert_int_eq(tt_outbox_send_fd(&ob, TT_FRAME_PING, 1, NULL, 0, p[1], 0,
                                     on_sent, NULL),
                   UV_EINVAL);
  ck_assert_int_eq(tt_outbox_send_fd(&ob, TT_FRAME_MESSAGE, 0, "m", 1, p[1],
                                     0, on_sent, NULL),
                   0);
  ck_assert_int_eq(open_fds(), mid + 1); /* the duplicate waits */
  tt_outbox_target(&ob, &a);
  tt_test_run_until(&loop, &sb.frames, 5000);
  ck_assert_int_ge(sb.fds[0], 0);
  ck_assert(same_file(sb.fds[0], p[1]));
  close(sb.fds[0]);
  ck_assert_int_eq(sent_status, 0);
  ck_assert_int_eq(open_fds(), mid); /* ours closed once delivered */
  closed_count = 0;
  tt_outbox_close(&ob, on_outbox_closed);
  tt_channel_close(&a, on_closed);
  tt_channel_close(&b, on_closed);
  tt_test_run_until_n(&loop, &closed_count, 3, 5000);
  tt_test_loop_close(&loop);
  close(p[0]), close(p[1]);
  ck_assert_int_eq(open_fds(), before);
}
END_TEST

static int accepted[8], n_accepted, acceptor_closed;
static void on_connection(tt_acceptor_t *a, int fd) {
  (void)a;
  if (n_accepted < 8) accepted[n_accepted] = fd;
  else close(fd);
  n_accepted++;
}
static void on_acceptor_closed(tt_acceptor_t *a) {
  (void)a;
  acceptor_closed = 1;
}

static int connect_to(int port) {
  struct sockaddr_in sin;
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_port = htons((uint16_t)port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(connect(c, (struct sockaddr *)&sin, sizeof sin), 0);
  return c;
}

/* The acceptor hands out connections as they come; paused, they wait in
 * the backlog and come once resumed; its close is deferred and leaves the
 * listening socket open. */
START_TEST(test_acceptor_hands_out_connections) {
  uv_loop_t loop;
  tt_acceptor_t a;
  int l, port, clients[4], before = open_fds();
  char host[64];
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(tt_listen("tcp://127.0.0.1:0", 0, 0, &l), 0);
  ck_assert_int_eq(tt_handle_address(l, host, sizeof host, &port), 0);
  memset(&a, 0, sizeof a);
  n_accepted = acceptor_closed = 0;
  ck_assert_int_eq(tt_acceptor_start(&loop, &a, l), UV_EINVAL); /* no cb */
  a.on_connection = on_connection;
  ck_assert_int_eq(tt_acceptor_start(&loop, &a, l), 0);
  clients[0] = connect_to(port);
  clients[1] = connect_to(port);
  tt_test_run_until_n(&loop, &n_accepted, 2, 5000);
  ck_assert_int_eq(tt_handle_kind(accepted[0]), TT_HANDLE_TCP);
  ck_assert_int_eq(fcntl(accepted[0], F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  tt_acceptor_pause(&a, 1);
  clients[2] = connect_to(port); /* (the kernel completes it: backlog) */
  clients[3] = connect_to(port);
  for (int i = 0; i < 20; i++) uv_run(&loop, UV_RUN_NOWAIT);
  ck_assert_int_eq(n_accepted, 2);
  tt_acceptor_pause(&a, 0);
  tt_test_run_until_n(&loop, &n_accepted, 4, 5000);
  tt_acceptor_close(&a, on_acceptor_closed);
  tt_acceptor_close(&a, on_acceptor_closed);
  ck_assert_int_eq(acceptor_closed, 0);
  tt_test_run_until(&loop, &acceptor_closed, 5000);
  tt_test_loop_close(&loop);
  ck_assert_int_eq(tt_handle_kind(l), TT_HANDLE_TCP_SERVER); /* still ours */
  for (int i = 0; i < 4; i++) close(accepted[i]), close(clients[i]);
  close(l);
  ck_assert_int_eq(open_fds(), before);
}
END_TEST

static int acceptor_errors, last_acceptor_err;
static void on_acceptor_error(tt_acceptor_t *a, int err) {
  (void)a;
  acceptor_errors++;
  last_acceptor_err = err;
}

/* Out of descriptors: accepting stalls (the connections wait), the owner
 * is told once, and it goes on by itself once descriptors are free. */
START_TEST(test_acceptor_survives_emfile) {
  uv_loop_t loop;
  tt_acceptor_t a;
  struct rlimit old, low;
  int l, port, clients[3];
  char host[64];
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  ck_assert_int_eq(tt_listen("tcp://127.0.0.1:0", 0, 0, &l), 0);
  ck_assert_int_eq(tt_handle_address(l, host, sizeof host, &port), 0);
  memset(&a, 0, sizeof a);
  n_accepted = acceptor_closed = acceptor_errors = 0;
  a.on_connection = on_connection;
  a.on_error = on_acceptor_error;
  ck_assert_int_eq(tt_acceptor_start(&loop, &a, l), 0);
  for (int i = 0; i < 3; i++) clients[i] = connect_to(port);
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
  low = old;
  {
    int lowest = dup(0); /* the lowest free number: every one below it is */
    close(lowest);       /* taken, so with it as the limit none is free */
    low.rlim_cur = (rlim_t)lowest;
  }
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
  for (int i = 0; i < 20 && acceptor_errors == 0; i++) {
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  ck_assert_int_eq(acceptor_errors, 1);
  ck_assert_int_eq(last_acceptor_err, UV_EMFILE);
  ck_assert_int_eq(n_accepted, 0);
  ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
  tt_test_run_until_n(&loop, &n_accepted, 3, 5000); /* after the retry */
  ck_assert_int_eq(acceptor_errors, 1);
  tt_acceptor_close(&a, on_acceptor_closed);
  tt_test_run_until(&loop, &acceptor_closed, 5000);
  tt_test_loop_close(&loop);
  for (int i = 0; i < 3; i++) close(accepted[i]), close(clients[i]);
  close(l);
}
END_TEST

Suite *handles_suite(void) {
  Suite *s = suite_create("handles");
  TCase *tc = tcase_create("handles");
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, test_descriptors_travel_with_their_frames);
  tcase_add_test(tc, test_flagged_frame_without_descriptor);
  tcase_add_test(tc, test_frame_with_fewer_descriptors);
  tcase_add_test(tc, test_several_descriptors_per_frame);
  tcase_add_test(tc, test_descriptor_without_its_frame);
  tcase_add_test(tc, test_descriptor_on_a_ping);
  tcase_add_test(tc, test_descriptors_waiting_are_bounded);
  tcase_add_test(tc, test_unsent_descriptors_are_closed);
  tcase_add_test(tc, test_descriptor_frames_go_at_once);
  tcase_add_test(tc, test_listen_kinds_and_addresses);
  tcase_add_test(tc, test_outbox_carries_descriptors);
  tcase_add_test(tc, test_acceptor_hands_out_connections);
  tcase_add_test(tc, test_acceptor_survives_emfile);
  suite_add_tcase(s, tc);
  return s;
}
