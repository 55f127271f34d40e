/*
 * The children of the C tests: this binary run again as
 * "run_c_tests --child NAME".  They use only core/ headers, as a binding in
 * another language would:
 *
 *   echo        echoes messages, answers requests with a reply of the same
 *               payload and pings with pongs; exits 0 at EOF; a request
 *               "die" makes it exit 1 at once (a crash mid-task)
 *   ready       sends the ready frame (a pong with id 0), then as echo
 *   exit3       exits with code 3 at once
 *   send-exit   sends 1000 messages "0".."999" and exits at once
 *   stubborn    ignores SIGTERM, sends the ready frame, then reads and
 *               answers nothing, never exits
 *   silent      reads nothing, exits at SIGTERM
 *   handshake   sends what tt_handshake() read, then exits
 *   inspect     sends what it started with: its open fds, whether it leads
 *               its session, how many signals it found ignored or
 *               blocked ("fds=0,1,2,3 sid=0 ign=0 blocked=0"), then exits
 */
#include <signal.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "loop_util.h"
#include "tt_channel.h"
#include "tt_frame.h"
#include "tt_handshake.h"
#include "tt_peer.h"

static int answer(tt_channel_t *ch, const tt_frame_header_t *h,
                  const char *payload) {
  switch (h->kind) {
  case TT_FRAME_MESSAGE:
    return tt_channel_send(ch, TT_FRAME_MESSAGE, 0, payload, h->len, NULL,
                           NULL);
  case TT_FRAME_REQUEST:
    if (h->len == 3 && memcmp(payload, "die", 3) == 0) _exit(1);
    return tt_peer_answer(ch, h->id, TT_ANSWER_REPLY, payload, h->len);
  default:
    return 0;
  }
}

static void on_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                     const char *payload) {
  if (tt_peer_heartbeat(ch, h, NULL, NULL)) return; /* pings, pongs */
  answer(ch, h, payload);
}

static void on_disconnect(tt_channel_t *ch) { tt_channel_close(ch, NULL); }

static int open_channel(uv_loop_t *loop, tt_channel_t *ch) {
  int fd, lines;
  if (tt_channel_inherited_fd(&fd, &lines) != 0) return -1;
  if (tt_channel_init(loop, ch, fd, NULL) != 0) return -1;
  ch->on_disconnect = on_disconnect;
  tt_channel_ref(ch, 1);
  return 0;
}

static int run_echo(int ready) {
  uv_loop_t loop;
  tt_channel_t ch;
  uv_loop_init(&loop);
  if (open_channel(&loop, &ch) != 0) return 90;
  ch.on_frame = on_frame;
  if (ready) tt_peer_ready(&ch, NULL, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return 0;
}

static int run_send_exit(void) {
  uv_loop_t loop;
  tt_channel_t ch;
  char buf[16];
  uv_loop_init(&loop);
  if (open_channel(&loop, &ch) != 0) return 90;
  for (int i = 0; i < 1000; i++) {
    int n = snprintf(buf, sizeof buf, "%d", i);
    tt_channel_send(&ch, TT_FRAME_MESSAGE, 0, buf, (size_t)n, NULL, NULL);
  }
  /* what was queued goes to the kernel, then we are gone */
  tt_channel_flush_sync(&ch, 5000);
  _exit(0);
}

/* Sends what the handshake gave us, and how many of its variables are
 * still in our environment (none should be). */
static int run_handshake(void) {
  static const char *const vars[] = {
      TT_ENV_CHANNEL_FD,  TT_ENV_NODE_CHANNEL_FD, TT_ENV_NODE_MODE,
      TT_ENV_PARENT_PID,  TT_ENV_MAX_MESSAGE,     TT_ENV_DETACHED,
      TT_ENV_POOL_CONCURRENCY, TT_ENV_CLUSTER};
  const tt_handshake_t *h = tt_handshake();
  uv_loop_t loop;
  tt_channel_t ch;
  char buf[256];
  int left = 0, n, fd, lines, open_fds = 0;
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
    left += getenv(vars[i]) != NULL;
  /* a cluster's sockets, "MODE:fd,fd": how many of them we have open */
  if (h->cluster != NULL) {
    const char *c = strchr(h->cluster, ':');
    while (c != NULL && *c != '\0') {
      char *end;
      long v = strtol(c + 1, &end, 10);
      if (end != c + 1 && fcntl((int)v, F_GETFD) >= 0) open_fds++;
      c = *end == ',' ? end : NULL;
    }
  }
  uv_loop_init(&loop);
  if (open_channel(&loop, &ch) != 0) return 90;
  n = snprintf(buf, sizeof buf, "named=%d lines=%d max=%zu conc=%u det=%d "
               "parent=%d left=%d again=%d",
               h->named, h->lines, h->max_message, h->concurrency,
               h->detached, h->parent_pid == (int)getppid(), left,
               tt_channel_inherited_fd(&fd, &lines));
  if (h->cluster != NULL)
    n += snprintf(buf + n, sizeof buf - (size_t)n, " cluster=%s open=%d",
                  h->cluster, open_fds);
  tt_channel_send(&ch, TT_FRAME_MESSAGE, 0, buf, (size_t)n, NULL, NULL);
  tt_channel_flush_sync(&ch, 5000);
  _exit(0);
}

static int run_inspect(void) {
  char buf[256];
  int n = 0, ign = 0, blocked = 0;
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  sigset_t cur;
  uv_loop_t loop;
  tt_channel_t ch;
  n += snprintf(buf, sizeof buf, "fds=");
  while (d != NULL && (e = readdir(d)) != NULL && n < 200) {
    if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d)) continue;
    n += snprintf(buf + n, sizeof buf - (size_t)n, "%s%s",
                  buf[n - 1] == '=' ? "" : ",", e->d_name);
  }
  if (d != NULL) closedir(d);
  sigprocmask(SIG_SETMASK, NULL, &cur);
  for (int sig = 1; sig < NSIG; sig++) {
    struct sigaction sa;
    if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN) ign++;
    if (sigismember(&cur, sig) == 1) blocked++;
  }
  n += snprintf(buf + n, sizeof buf - (size_t)n, " sid=%d ign=%d blocked=%d",
                getsid(0) == getpid(), ign, blocked);
  uv_loop_init(&loop);
  if (open_channel(&loop, &ch) != 0) return 90;
  tt_channel_send(&ch, TT_FRAME_MESSAGE, 0, buf, (size_t)n, NULL, NULL);
  tt_channel_flush_sync(&ch, 5000);
  _exit(0);
}

int tt_test_child_main(const char *name) {
  /* a failed or killed test must not leave "stubborn" behind */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 98;
  if (strcmp(name, "echo") == 0) return run_echo(0);
  if (strcmp(name, "ready") == 0) return run_echo(1);
  if (strcmp(name, "exit3") == 0) return 3;
  if (strcmp(name, "send-exit") == 0) return run_send_exit();
  if (strcmp(name, "handshake") == 0) return run_handshake();
  if (strcmp(name, "inspect") == 0) return run_inspect();
  if (strcmp(name, "stubborn") == 0) {
    uv_loop_t loop;
    tt_channel_t ch;
    signal(SIGTERM, SIG_IGN);
    /* ready only once SIGTERM is ignored (a slow start, e.g. under ASan,
     * must not take the supervisor's SIGTERM for the escalation's) */
    uv_loop_init(&loop);
    if (open_channel(&loop, &ch) != 0) return 90;
    tt_peer_ready(&ch, NULL, NULL);
    tt_channel_flush_sync(&ch, 5000);
    for (;;) pause();
  }
  if (strcmp(name, "silent") == 0) {
    for (;;) pause();
  }
  fprintf(stderr, "no child named %s\n", name);
  return 99;
}
