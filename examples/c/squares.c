/*
 * tether's core from C, without Lua: a pool of 4 workers squares 1..1000.
 *
 * This is what a binding for another language (Python, Node, Go) starts
 * from: it includes only core/ headers and links only libuv.  The workers
 * are this program run again with the argument "worker"; tasks and answers
 * are opaque bytes to the pool (here decimal text; the Lua binding puts
 * its value codec there).
 *
 *   make squares && build/squares
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tt_channel.h"
#include "tt_error.h"
#include "tt_peer.h"
#include "tt_pool.h"

#define TASKS 1000
#define WORKERS 4

/* ---- the worker: answers each REQUEST "n" with a REPLY "n*n" ------------ */

static void worker_frame(tt_channel_t *ch, const tt_frame_header_t *h,
                         const char *payload) {
  char in[32], out[32];
  int n;
  /* heartbeats, if the owner asks: the peer protocol answers them */
  if (tt_peer_heartbeat(ch, h, NULL, NULL)) return;
  if (h->kind != TT_FRAME_REQUEST || h->len >= sizeof in) return;
  memcpy(in, payload, h->len);
  in[h->len] = '\0';
  n = snprintf(out, sizeof out, "%" PRId64,
               (int64_t)(atoll(in) * atoll(in)));
  tt_peer_answer(ch, h->id, TT_ANSWER_REPLY, out, (size_t)n);
}

/* the pool closed our channel: we are done */
static void worker_disconnect(tt_channel_t *ch) { tt_channel_close(ch, NULL); }

static int worker(void) {
  uv_loop_t loop;
  tt_channel_t ch;
  int fd, lines, err;
  /* the channel's fd and mode come from the environment tether set */
  if ((err = tt_channel_inherited_fd(&fd, &lines)) != 0) {
    fprintf(stderr, "worker: no channel: %s\n", tt_strerror(err));
    return 1;
  }
  uv_loop_init(&loop);
  if ((err = tt_channel_init(&loop, &ch, fd, NULL)) != 0) {
    fprintf(stderr, "worker: %s\n", tt_strerror(err));
    return 1;
  }
  ch.on_frame = worker_frame;
  ch.on_disconnect = worker_disconnect;
  tt_channel_ref(&ch, 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return 0;
}

/* ---- the owner ---------------------------------------------------------- */

typedef struct {
  int answered, failed, stopped, freed;
  uint64_t sum;
} totals_t;

static void on_answer(void *arg, int status, unsigned kind,
                      const char *payload, size_t len, tt_channel_t *ch) {
  totals_t *t = arg;
  char buf[32];
  (void)ch;
  if (status != 0 || kind != TT_FRAME_REPLY || len >= sizeof buf) {
    fprintf(stderr, "task failed: %s\n",
            status ? tt_strerror(status) : "a fault");
    t->failed++;
    return;
  }
  memcpy(buf, payload, len);
  buf[len] = '\0';
  t->sum += strtoull(buf, NULL, 10);
  t->answered++;
}

static void on_stopped(tt_pool_t *p) { ((totals_t *)p->data)->stopped = 1; }
static void on_freed(tt_pool_t *p) { ((totals_t *)p->data)->freed = 1; }

int main(int argc, char **argv) {
  static char exe[4096];
  char *args[] = {exe, "worker", NULL};
  uv_loop_t loop;
  tt_pool_t pool;
  tt_pool_options_t o;
  totals_t t = {0, 0, 0, 0, 0};
  uint64_t want = (uint64_t)TASKS * (TASKS + 1) * (2 * TASKS + 1) / 6;
  ssize_t n;
  int err;

  if (argc == 2 && strcmp(argv[1], "worker") == 0) return worker();
  if ((n = readlink("/proc/self/exe", exe, sizeof exe - 1)) <= 0) return 1;
  exe[n] = '\0';

  uv_loop_init(&loop);
  memset(&o, 0, sizeof o);
  tt_supervisor_options_init(&o.workers);
  o.workers.instances = WORKERS;
  o.workers.process.file = exe;
  o.workers.process.args = args;
  o.workers.process.channel = 1;
  o.timeout_ms = 10000;
  memset(&pool, 0, sizeof pool);
  pool.data = &t;
  pool.on_stopped = on_stopped;
  if ((err = tt_pool_start(&loop, &pool, &o)) != 0) {
    fprintf(stderr, "pool: %s\n", tt_strerror(err));
    return 1;
  }
  for (int i = 1; i <= TASKS; i++) {
    char task[16];
    int len = snprintf(task, sizeof task, "%d", i);
    if ((err = tt_pool_submit(&pool, task, (size_t)len, on_answer, &t)) != 0) {
      fprintf(stderr, "submit: %s\n", tt_strerror(err));
      return 1;
    }
  }
  tt_pool_drain(&pool); /* the queued tasks finish, then the workers stop */
  while (!t.stopped) uv_run(&loop, UV_RUN_ONCE);
  tt_pool_close(&pool, on_freed);
  while (!t.freed) uv_run(&loop, UV_RUN_ONCE);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0) {
    fprintf(stderr, "handles left open\n");
    return 1;
  }
  printf("squares: %d tasks on %d workers, sum %" PRIu64 " (%s)\n",
         t.answered, WORKERS, t.sum, t.sum == want ? "right" : "WRONG");
  return t.answered == TASKS && t.failed == 0 && t.sum == want ? 0 : 1;
}
