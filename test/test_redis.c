/* Tests of the Redis connection (core/tt_redis.h) against a real
 * redis-server started by each test on a Unix socket in a temp dir (no TCP
 * port: --port 0): pipelining and order, error replies, Redis down at the
 * start and coming up, a connection killed under a blocking command, a
 * reply timeout, addresses, close with commands pending.  Without a
 * redis-server on the PATH the tests fail (CI installs it). */
#include <check.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "loop_util.h"
#include "suites.h"
#include "tt_error.h"
#include "tt_redis.h"

typedef struct {
  char dir[64];
  char sock[128];
  char addr[160];
  pid_t pid;
} server_t;

/* The temp dir and the paths; no server yet. */
static void server_paths(server_t *s) {
  snprintf(s->dir, sizeof s->dir, "/tmp/tt-redis-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(s->dir));
  snprintf(s->sock, sizeof s->sock, "%s/r.sock", s->dir);
  snprintf(s->addr, sizeof s->addr, "unix:%s", s->sock);
  s->pid = 0;
}

/* redis-server on s->sock; returns once it is there (up to 5 s) when
 * `wait`. */
static const char *server_password; /* --requirepass, when set */

static void server_spawn(server_t *s, int wait) {
  struct stat st;
  s->pid = fork();
  ck_assert_int_ge(s->pid, 0);
  if (s->pid == 0) {
    if (server_password != NULL)
      execlp("redis-server", "redis-server", "--port", "0", "--unixsocket",
             s->sock, "--save", "", "--appendonly", "no", "--dir", s->dir,
             "--loglevel", "warning", "--logfile", "redis.log",
             "--requirepass", server_password, (char *)NULL);
    else
      execlp("redis-server", "redis-server", "--port", "0", "--unixsocket",
             s->sock, "--save", "", "--appendonly", "no", "--dir", s->dir,
             "--loglevel", "warning", "--logfile", "redis.log", (char *)NULL);
    _exit(127);
  }
  for (int i = 0; wait && i < 500; i++) {
    if (stat(s->sock, &st) == 0) return;
    usleep(10000);
  }
  ck_assert_msg(!wait, "redis-server did not start (is it installed?)");
}

static void server_start(server_t *s) {
  server_paths(s);
  server_spawn(s, 1);
}

/* Options that reconnect quickly (tests wait for it). */
static void quick_options(tt_redis_options_t *o) {
  memset(o, 0, sizeof *o);
  o->backoff.initial_ms = 20;
  o->backoff.max_ms = 50;
  o->backoff.factor = 2;
}

static void server_stop(server_t *s) {
  if (s->pid > 0) {
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
  }
  unlink(s->sock);
  {
    char log[160];
    snprintf(log, sizeof log, "%s/redis.log", s->dir);
    unlink(log);
  }
  rmdir(s->dir);
}

typedef struct {
  int ups, downs, last_err, closed;
  int replies, errors, err_codes[8];
  long long ints[1100];
  char str[512];
  int reply_types[8];
} seen_t;

static void on_state(tt_redis_t *r, int up, int err) {
  seen_t *x = r->data;
  if (up)
    x->ups++;
  else
    x->downs++, x->last_err = err;
}

static void on_reply(tt_redis_t *r, redisReply *reply, int err, void *arg) {
  seen_t *x = r->data;
  (void)arg;
  if (err != 0) {
    if (x->errors < 8) x->err_codes[x->errors] = err;
    x->errors++;
    return;
  }
  if (x->replies < 8) x->reply_types[x->replies] = reply->type;
  if (reply->type == REDIS_REPLY_INTEGER && x->replies < 1100)
    x->ints[x->replies] = reply->integer;
  if (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS ||
      reply->type == REDIS_REPLY_ERROR)
    snprintf(x->str, sizeof x->str, "%.*s", (int)reply->len, reply->str);
  x->replies++;
}

static void on_closed(tt_redis_t *r) { ((seen_t *)r->data)->closed = 1; }

static int cmd(tt_redis_t *r, const char *a, const char *b, const char *c) {
  const char *argv[3] = {a, b, c};
  size_t len[3] = {strlen(a), b ? strlen(b) : 0, c ? strlen(c) : 0};
  return tt_redis_command(r, c ? 3 : b ? 2 : 1, argv, len, 0, on_reply, NULL);
}

static void up(uv_loop_t *loop, tt_redis_t *r, seen_t *x, const char *addr,
               const tt_redis_options_t *o) {
  memset(x, 0, sizeof *x);
  memset(r, 0, sizeof *r);
  r->data = x;
  r->on_state = on_state;
  ck_assert_int_eq(tt_redis_start(loop, r, addr, o), 0);
}

static void down(uv_loop_t *loop, tt_redis_t *r, seen_t *x) {
  tt_redis_close(r, on_closed);
  tt_test_run_until(loop, &x->closed, 5000);
}

/* 1000 pipelined commands issued in one go come back in order. */
START_TEST(test_pipelined_in_order) {
  uv_loop_t loop;
  tt_redis_t r;
  seen_t x;
  server_t s;
  server_start(&s);
  uv_loop_init(&loop);
  up(&loop, &r, &x, s.addr, NULL);
  tt_test_run_until(&loop, &x.ups, 5000);
  ck_assert(tt_redis_connected(&r));
  for (int i = 0; i < 1000; i++) ck_assert_int_eq(cmd(&r, "INCR", "n", NULL), 0);
  tt_test_run_until_n(&loop, &x.replies, 1000, 10000);
  for (int i = 0; i < 1000; i++) ck_assert_int_eq(x.ints[i], i + 1);
  /* binary-safe arguments, and an error reply is a reply */
  {
    const char *argv[3] = {"SET", "bin", "a\0b\r\n"};
    size_t len[3] = {3, 3, 5};
    ck_assert_int_eq(tt_redis_command(&r, 3, argv, len, 0, on_reply, NULL), 0);
  }
  ck_assert_int_eq(cmd(&r, "STRLEN", "bin", NULL), 0);
  ck_assert_int_eq(cmd(&r, "LPUSH", "n", "x"), 0); /* n is a string */
  tt_test_run_until_n(&loop, &x.replies, 1003, 5000);
  ck_assert_int_eq(x.ints[1001], 5);
  ck_assert_str_eq(x.str, "WRONGTYPE Operation against a key holding the wrong kind of value");
  ck_assert_int_eq(x.errors, 0);
  down(&loop, &r, &x);
  tt_test_loop_close(&loop);
  server_stop(&s);
}
END_TEST

/* Redis not there: commands fail with ERR_BROKER_DOWN from the loop (not
 * inside the call), on_state says so; once it is up, the connection
 * comes by itself. */
START_TEST(test_down_then_up) {
  uv_loop_t loop;
  tt_redis_t r;
  seen_t x;
  server_t s;
  tt_redis_options_t o;
  quick_options(&o);
  server_paths(&s); /* no server on the socket yet */
  uv_loop_init(&loop);
  up(&loop, &r, &x, s.addr, &o);
  ck_assert_int_eq(cmd(&r, "PING", NULL, NULL), 0);
  ck_assert_int_eq(x.errors, 0); /* not from inside the call */
  tt_test_run_until(&loop, &x.errors, 5000);
  ck_assert_int_eq(x.err_codes[0], TT_ERR_BROKER_DOWN);
  tt_test_run_until(&loop, &x.downs, 5000);
  ck_assert_int_eq(x.last_err, TT_ERR_BROKER_DOWN);
  ck_assert(!tt_redis_connected(&r));
  server_spawn(&s, 0);
  tt_test_run_until(&loop, &x.ups, 10000);
  ck_assert_int_eq(cmd(&r, "PING", NULL, NULL), 0);
  tt_test_run_until(&loop, &x.replies, 5000);
  ck_assert_str_eq(x.str, "PONG");
  down(&loop, &r, &x);
  tt_test_loop_close(&loop);
  server_stop(&s);
}
END_TEST

/* CLIENT KILL under a blocking command: it fails ERR_BROKER_DOWN, and the
 * connection comes back (on_state 0 then 1). */
START_TEST(test_killed_connection_comes_back) {
  uv_loop_t loop;
  tt_redis_t r, k;
  seen_t x, y;
  server_t s;
  tt_redis_options_t o;
  quick_options(&o);
  server_start(&s);
  uv_loop_init(&loop);
  up(&loop, &r, &x, s.addr, &o);
  up(&loop, &k, &y, s.addr, &o);
  tt_test_run_until(&loop, &x.ups, 5000);
  tt_test_run_until(&loop, &y.ups, 5000);
  {
    const char *argv[3] = {"BLPOP", "nothing", "10"};
    size_t len[3] = {5, 7, 2};
    ck_assert_int_eq(tt_redis_command(&r, 3, argv, len, 10000, on_reply, NULL), 0);
  }
  ck_assert_int_eq(cmd(&k, "CLIENT", "KILL", NULL), 0); /* needs arguments */
  {
    const char *argv[4] = {"CLIENT", "KILL", "TYPE", "normal"};
    size_t len[4] = {6, 4, 4, 6};
    /* kills every normal client, k's own connection included */
    ck_assert_int_eq(tt_redis_command(&k, 4, argv, len, 0, on_reply, NULL), 0);
  }
  tt_test_run_until(&loop, &x.errors, 5000);
  ck_assert_int_eq(x.err_codes[0], TT_ERR_BROKER_DOWN);
  ck_assert_int_ge(x.downs, 1);
  tt_test_run_until_n(&loop, &x.ups, 2, 5000);
  ck_assert_int_eq(cmd(&r, "PING", NULL, NULL), 0);
  tt_test_run_until(&loop, &x.replies, 5000);
  ck_assert_str_eq(x.str, "PONG");
  down(&loop, &r, &x);
  down(&loop, &k, &y);
  tt_test_loop_close(&loop);
  server_stop(&s);
}
END_TEST

/* A server that does not answer (CLIENT PAUSE from another connection):
 * the command fails ERR_TIMEOUT after reply_timeout_ms and the connection
 * is replaced; a blocking command's BLOCK time is not a timeout. */
START_TEST(test_reply_timeout) {
  uv_loop_t loop;
  tt_redis_t r, k;
  seen_t x, y;
  server_t s;
  tt_redis_options_t o;
  quick_options(&o);
  o.reply_timeout_ms = 300;
  server_start(&s);
  uv_loop_init(&loop);
  up(&loop, &r, &x, s.addr, &o);
  up(&loop, &k, &y, s.addr, NULL);
  tt_test_run_until(&loop, &x.ups, 5000);
  tt_test_run_until(&loop, &y.ups, 5000);
  {
    /* BLOCK 800 ms > the 300 ms timeout: still a reply (nil) */
    const char *argv[3] = {"BLPOP", "nothing", "0.8"};
    size_t len[3] = {5, 7, 3};
    ck_assert_int_eq(tt_redis_command(&r, 3, argv, len, 800, on_reply, NULL), 0);
    tt_test_run_until(&loop, &x.replies, 5000);
    ck_assert_int_eq(x.reply_types[0], REDIS_REPLY_NIL);
    ck_assert_int_eq(x.errors, 0);
  }
  ck_assert_int_eq(cmd(&k, "CLIENT", "PAUSE", "1500"), 0);
  tt_test_run_until(&loop, &y.replies, 5000);
  ck_assert_int_eq(cmd(&r, "PING", NULL, NULL), 0);
  tt_test_run_until(&loop, &x.errors, 5000);
  ck_assert_int_eq(x.err_codes[0], TT_ERR_TIMEOUT);
  ck_assert_int_eq(x.last_err, TT_ERR_TIMEOUT);
  /* after the pause it works again (a PING that may wait it out) */
  tt_test_run_until_n(&loop, &x.ups, 2, 10000);
  {
    const char *argv[1] = {"PING"};
    size_t len[1] = {4};
    ck_assert_int_eq(tt_redis_command(&r, 1, argv, len, 2000, on_reply, NULL), 0);
  }
  tt_test_run_until_n(&loop, &x.replies, 2, 5000);
  ck_assert_str_eq(x.str, "PONG");
  down(&loop, &r, &x);
  down(&loop, &k, &y);
  tt_test_loop_close(&loop);
  server_stop(&s);
}
END_TEST

/* Addresses; close with commands pending runs their callbacks with
 * ERR_CLOSED; commands after close are refused. */
START_TEST(test_addresses_and_close) {
  uv_loop_t loop;
  tt_redis_t r;
  seen_t x;
  server_t s;
  static const char *const bad[] = {"", "redis://", "redis://:6379",
                                    "redis://h:0", "redis://h:x",
                                    "redis://h:1/x", "unix:", "unix:/p?db=x",
                                    "tcp://h:1", "redis://u@h:1",
                                    "redis://u:@h:1", "unix:/p?password=",
                                    "unix:/p?user=u", "unix:/p?bogus=1"};
  uv_loop_init(&loop);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    memset(&r, 0, sizeof r);
    ck_assert_msg(tt_redis_start(&loop, &r, bad[i], NULL) == UV_EINVAL, "%s",
                  bad[i]);
  }
  server_start(&s);
  up(&loop, &r, &x, s.addr, NULL);
  tt_test_run_until(&loop, &x.ups, 5000);
  ck_assert_int_eq(cmd(&r, "SELECT", "1", NULL), 0);
  ck_assert_int_eq(cmd(&r, "PING", NULL, NULL), 0);
  tt_redis_close(&r, on_closed);
  ck_assert_int_eq(x.errors, 2);
  ck_assert_int_eq(x.err_codes[0], TT_ERR_CLOSED);
  ck_assert_int_eq(cmd(&r, "PING", NULL, NULL), TT_ERR_CLOSED);
  tt_test_run_until(&loop, &x.closed, 5000);
  /* a database number is SELECTed on connecting */
  {
    char addr[200];
    snprintf(addr, sizeof addr, "%s?db=3", s.addr);
    up(&loop, &r, &x, addr, NULL);
    tt_test_run_until(&loop, &x.ups, 5000);
    ck_assert_int_eq(cmd(&r, "CLIENT", "INFO", NULL), 0);
    tt_test_run_until(&loop, &x.replies, 5000);
    ck_assert_ptr_nonnull(strstr(x.str, "db=3") ? x.str : NULL);
    down(&loop, &r, &x);
  }
  tt_test_loop_close(&loop);
  server_stop(&s);
}
END_TEST

/* With a password, AUTH opens every connection: a wrong one never comes
 * up (TT_ERR_BROKER, retried), the right one does, with a user too. */
START_TEST(test_auth) {
  uv_loop_t loop;
  tt_redis_t r;
  seen_t x;
  server_t s;
  tt_redis_options_t o;
  char addr[240];
  quick_options(&o);
  uv_loop_init(&loop);
  server_password = "s3cret";
  server_start(&s);
  server_password = NULL;
  snprintf(addr, sizeof addr, "%s?password=wrong", s.addr);
  up(&loop, &r, &x, addr, &o);
  tt_test_run_until(&loop, &x.downs, 5000);
  ck_assert_int_eq(x.ups, 0);
  ck_assert_int_eq(x.last_err, TT_ERR_BROKER);
  down(&loop, &r, &x);
  snprintf(addr, sizeof addr, "%s?db=2&password=s3cret", s.addr);
  up(&loop, &r, &x, addr, &o);
  tt_test_run_until(&loop, &x.ups, 5000);
  ck_assert_int_eq(cmd(&r, "CLIENT", "INFO", NULL), 0);
  tt_test_run_until(&loop, &x.replies, 5000);
  ck_assert_ptr_nonnull(strstr(x.str, "db=2") ? x.str : NULL);
  down(&loop, &r, &x);
  snprintf(addr, sizeof addr, "%s?user=default&password=s3cret", s.addr);
  up(&loop, &r, &x, addr, &o);
  tt_test_run_until(&loop, &x.ups, 5000);
  ck_assert_int_eq(x.downs, 0);
  down(&loop, &r, &x);
  tt_test_loop_close(&loop);
  server_stop(&s);
}
END_TEST

Suite *redis_suite(void) {
  Suite *s = suite_create("redis");
  TCase *tc = tcase_create("connection");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_pipelined_in_order);
  tcase_add_test(tc, test_down_then_up);
  tcase_add_test(tc, test_killed_connection_comes_back);
  tcase_add_test(tc, test_reply_timeout);
  tcase_add_test(tc, test_addresses_and_close);
  tcase_add_test(tc, test_auth);
  suite_add_tcase(s, tc);
  return s;
}
