/* A Redis connection on the loop: see tt_redis.h. */
#include "tt_redis.h"

#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <arpa/inet.h>
#include <errno.h>
#include <sys/socket.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "tt_error.h"

/* CONNECTING -> (SELECTING) -> READY; a loss or failure -> WAITING (the
 * reconnect timer) -> CONNECTING; CLOSED for good. */
enum { S_CONNECTING = 0, S_SELECTING, S_READY, S_WAITING, S_CLOSED };

#define READ_CHUNK 65536
#define TICK_MS 100
/* hiredis 0.14 allocates an array of any announced size before a single
 * element came: "*2147483647" from a broken or hostile server would take
 * gigabytes (and freeing it, seconds).  Replies to our commands are far
 * smaller. */
#define MAX_ELEMENTS (1 << 20)

static redisReplyObjectFunctions reader_fns;
static void *(*default_create_array)(const redisReadTask *, int);

static void *create_array(const redisReadTask *task, int elements) {
  if (elements < 0 || elements > MAX_ELEMENTS) return NULL; /* reader error */
  return default_create_array(task, elements);
}

static redisReader *new_reader(void) {
  redisReader *rd = redisReaderCreate();
  if (rd == NULL) return NULL;
  if (default_create_array == NULL) {
    reader_fns = *rd->fn;
    default_create_array = reader_fns.createArray;
    reader_fns.createArray = create_array;
  }
  rd->fn = &reader_fns;
  return rd;
}

typedef struct {
  uv_write_t req;
  size_t len;
  unsigned gen; /* the connection it was written on */
  char data[];
} out_t;

static void drop(tt_redis_t *r, int err);
static void try_connect(tt_redis_t *r);

static uint64_t now(tt_redis_t *r) {
  uv_update_time(r->loop);
  return uv_now(r->loop);
}

/* ---- address ------------------------------------------------------------ */

static int number(const char *s, const char *end_ok, long lo, long hi,
                  long *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (end == s || v < lo || v > hi) return 0;
  if (*end != '\0' && (end_ok == NULL || strchr(end_ok, *end) == NULL))
    return 0;
  *out = v;
  return 1;
}

static char *copy(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d != NULL) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

/* "[USER]:PASSWORD" (a URL's userinfo, up to '@'): kept for AUTH. */
static int parse_userinfo(tt_redis_t *r, const char *u, size_t n) {
  const char *colon = memchr(u, ':', n);
  if (colon == NULL) return UV_EINVAL; /* a user without a password */
  if (colon > u && (r->user = copy(u, (size_t)(colon - u))) == NULL)
    return UV_ENOMEM;
  if ((size_t)(colon + 1 - u) == n) return UV_EINVAL; /* empty password */
  r->password = copy(colon + 1, n - (size_t)(colon + 1 - u));
  return r->password ? 0 : UV_ENOMEM;
}

/* unix:PATH?db=N&user=U&password=P */
static int parse_query(tt_redis_t *r, const char *q) {
  while (*q != '\0') {
    const char *amp = strchr(q, '&');
    size_t n = amp ? (size_t)(amp - q) : strlen(q);
    char buf[16];
    long v;
    if (n > 3 && strncmp(q, "db=", 3) == 0) {
      if (n - 3 >= sizeof buf) return UV_EINVAL;
      memcpy(buf, q + 3, n - 3);
      buf[n - 3] = '\0';
      if (!number(buf, NULL, 0, 1000, &v)) return UV_EINVAL;
      r->db = (int)v;
    } else if (n > 5 && strncmp(q, "user=", 5) == 0 && r->user == NULL) {
      if ((r->user = copy(q + 5, n - 5)) == NULL) return UV_ENOMEM;
    } else if (n > 9 && strncmp(q, "password=", 9) == 0 && r->password == NULL) {
      if ((r->password = copy(q + 9, n - 9)) == NULL) return UV_ENOMEM;
    } else {
      return UV_EINVAL;
    }
    q += n + (amp != NULL);
  }
  return r->user != NULL && r->password == NULL ? UV_EINVAL : 0;
}

static int parse_address(tt_redis_t *r, const char *a) {
  long v;
  int err;
  if (strncmp(a, "unix:", 5) == 0) {
    const char *q = strchr(a + 5, '?');
    size_t n = q ? (size_t)(q - (a + 5)) : strlen(a + 5);
    if (n == 0) return UV_EINVAL;
    if (q && (err = parse_query(r, q + 1)) != 0) return err;
    return (r->path = copy(a + 5, n)) ? 0 : UV_ENOMEM;
  }
  if (strncmp(a, "redis://", 8) == 0) {
    const char *h = a + 8, *colon, *slash, *at;
    size_t n;
    slash = strchr(h, '/');
    at = strchr(h, '@');
    if (at != NULL && (slash == NULL || at < slash)) {
      if ((err = parse_userinfo(r, h, (size_t)(at - h))) != 0) return err;
      h = at + 1;
    }
    colon = strchr(h, ':');
    if (colon && slash && colon > slash) colon = NULL;
    n = colon ? (size_t)(colon - h) : slash ? (size_t)(slash - h) : strlen(h);
    if (n == 0 || memchr(h, '@', n) != NULL) return UV_EINVAL;
    r->port = 6379;
    if (colon) {
      if (!number(colon + 1, "/", 1, 65535, &v)) return UV_EINVAL;
      r->port = (int)v;
    }
    if (slash && slash[1] != '\0') {
      if (!number(slash + 1, NULL, 0, 1000, &v)) return UV_EINVAL;
      r->db = (int)v;
    }
    return (r->host = copy(h, n)) ? 0 : UV_ENOMEM;
  }
  return UV_EINVAL;
}

/* ---- commands ----------------------------------------------------------- */

/* Runs the callbacks of every command in `list` with err (the list is
 * taken first: a callback may issue commands or close). */
static void fail_list(tt_redis_t *r, struct tt_redis_cmd_list *list, int err) {
  struct tt_redis_cmd_list mine = TAILQ_HEAD_INITIALIZER(mine);
  tt_redis_cmd_t *c;
  TAILQ_CONCAT(&mine, list, link);
  while ((c = TAILQ_FIRST(&mine)) != NULL) {
    TAILQ_REMOVE(&mine, c, link);
    c->cb(r, NULL, err, c->arg);
    free(c);
  }
}

static void on_written(uv_write_t *req, int status) {
  out_t *o = (out_t *)req;
  tt_redis_t *r = req->data;
  unsigned gen = o->gen;
  free(o);
  if (gen != r->gen) return; /* a connection dropped since */
  r->writing--;
  if (status < 0 && status != UV_ECANCELED && r->state != S_CLOSED)
    drop(r, TT_ERR_BROKER_DOWN);
}

static void on_idle(uv_idle_t *h) {
  tt_redis_t *r = h->data;
  uv_idle_stop(h);
  /* commands issued while down fail now, from the loop */
  if (!TAILQ_EMPTY(&r->failed)) fail_list(r, &r->failed, TT_ERR_BROKER_DOWN);
  if (r->out_len > 0 && (r->state == S_READY || r->state == S_SELECTING)) {
    out_t *o;
    uv_buf_t b;
    uv_os_fd_t fd;
    size_t done = 0;
    /* straight to the socket first, without SIGPIPE (MSG_NOSIGNAL) when
     * Redis went away; libuv writes the rest once there is room */
    if (r->writing == 0 && uv_fileno(&r->sock.handle, &fd) == 0) {
      ssize_t n;
      do
        n = send(fd, r->out, r->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
      while (n < 0 && errno == EINTR);
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        drop(r, TT_ERR_BROKER_DOWN);
        return;
      }
      done = n > 0 ? (size_t)n : 0;
      if (done > 0) r->progress = now(r);
      if (done == r->out_len) {
        r->out_len = 0;
        return;
      }
    }
    if ((o = malloc(sizeof *o + r->out_len - done)) == NULL) {
      drop(r, UV_ENOMEM);
      return;
    }
    r->progress = now(r);
    memcpy(o->data, r->out + done, r->out_len - done);
    o->len = r->out_len - done;
    o->gen = r->gen;
    r->out_len = 0;
    r->writing++;
    o->req.data = r;
    b = uv_buf_init(o->data, (unsigned)o->len);
    if (uv_write(&o->req, &r->sock.stream, &b, 1, on_written) != 0) {
      free(o);
      r->writing--;
      drop(r, TT_ERR_BROKER_DOWN);
    }
  }
}

static void wake(tt_redis_t *r) {
  if (r->state != S_CLOSED) uv_idle_start(&r->flusher, on_idle);
}

/* Formats and queues; the caller checked the state. */
static int enqueue(tt_redis_t *r, int argc, const char **argv,
                   const size_t *argvlen, uint64_t block_ms, tt_redis_cb cb,
                   void *arg) {
  tt_redis_cmd_t *c = calloc(1, sizeof *c);
  char *cmd = NULL;
  long long n;
  if (c == NULL) return UV_ENOMEM;
  n = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
  if (n < 0 || cmd == NULL) {
    free(c);
    return UV_ENOMEM;
  }
  if (r->out_len + (size_t)n > r->out_cap) {
    size_t cap = r->out_cap ? r->out_cap : 4096;
    char *p;
    while (cap < r->out_len + (size_t)n) cap *= 2;
    if ((p = realloc(r->out, cap)) == NULL) {
      free(cmd);
      free(c);
      return UV_ENOMEM;
    }
    r->out = p;
    r->out_cap = cap;
  }
  memcpy(r->out + r->out_len, cmd, (size_t)n);
  r->out_len += (size_t)n;
  free(cmd);
  c->cb = cb;
  c->arg = arg;
  c->deadline = block_ms; /* (the allowance: see on_tick) */
  if (TAILQ_EMPTY(&r->pending)) r->progress = now(r);
  TAILQ_INSERT_TAIL(&r->pending, c, link);
  wake(r);
  return 0;
}

int tt_redis_command(tt_redis_t *r, int argc, const char **argv,
                     const size_t *argvlen, uint64_t block_ms, tt_redis_cb cb,
                     void *arg) {
  if (cb == NULL || argc < 1) return UV_EINVAL;
  if (r->state == S_CLOSED) return TT_ERR_CLOSED;
  if (r->state != S_READY) {
    tt_redis_cmd_t *c = calloc(1, sizeof *c);
    if (c == NULL) return UV_ENOMEM;
    c->cb = cb;
    c->arg = arg;
    TAILQ_INSERT_TAIL(&r->failed, c, link);
    wake(r);
    return 0;
  }
  return enqueue(r, argc, argv, argvlen, block_ms, cb, arg);
}

int tt_redis_connected(const tt_redis_t *r) { return r->state == S_READY; }

/* ---- replies ------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  tt_redis_t *r = h->data;
  (void)hint;
  *buf = uv_buf_init(r->rbuf, READ_CHUNK);
}

/* "-MOVED <slot> <host>:<port>" from a cluster node (over TCP): the
 * address becomes that node's.  1 when it did. */
static int moved(tt_redis_t *r, const redisReply *reply) {
  const char *sp, *colon;
  long v;
  char *host;
  if (reply->type != REDIS_REPLY_ERROR || r->host == NULL ||
      reply->len < 8 || strncmp(reply->str, "MOVED ", 6) != 0)
    return 0;
  sp = memchr(reply->str + 6, ' ', reply->len - 6);
  colon = sp ? strrchr(sp, ':') : NULL;
  if (colon == NULL || colon == sp + 1 || !number(colon + 1, NULL, 1, 65535, &v))
    return 0;
  if ((host = copy(sp + 1, (size_t)(colon - sp - 1))) == NULL) return 0;
  free(r->host);
  r->host = host;
  r->port = (int)v;
  r->attempts = 0; /* (the backoff starts afresh: this is no failure) */
  return 1;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  tt_redis_t *r = s->data;
  unsigned gen = r->gen;
  (void)buf;
  if (n == 0) return;
  if (n < 0) {
    drop(r, TT_ERR_BROKER_DOWN);
    return;
  }
  r->progress = now(r);
  if (redisReaderFeed(r->reader, r->rbuf, (size_t)n) != REDIS_OK) {
    drop(r, UV_EPROTO);
    return;
  }
  for (;;) {
    void *reply = NULL;
    tt_redis_cmd_t *c;
    if (redisReaderGetReply(r->reader, &reply) != REDIS_OK) {
      drop(r, UV_EPROTO); /* not RESP: not a Redis server */
      return;
    }
    if (reply == NULL) return; /* needs more bytes */
    if ((c = TAILQ_FIRST(&r->pending)) == NULL) {
      freeReplyObject(reply);
      drop(r, UV_EPROTO); /* a reply nobody asked for */
      return;
    }
    if (moved(r, reply)) {
      /* a Redis Cluster node that does not hold the queue's slot: the
       * connection goes to the one that does; what was pending fails as
       * on any lost connection (the owner resends it, as after any) */
      freeReplyObject(reply);
      drop(r, TT_ERR_BROKER_DOWN);
      return;
    }
    TAILQ_REMOVE(&r->pending, c, link);
    c->cb(r, reply, 0, c->arg);
    free(c);
    freeReplyObject(reply);
    if (r->gen != gen) return; /* dropped or closed by the callback */
  }
}

/* ---- connection --------------------------------------------------------- */

static void ready(tt_redis_t *r) {
  r->state = S_READY;
  r->attempts = 0;
  if (r->on_state) r->on_state(r, 1, 0);
}

/* The first reply on a new connection: the server answers (not LOADING,
 * not "max number of clients"); only then is it up. */
static void on_hello(tt_redis_t *r, redisReply *reply, int err, void *arg) {
  (void)arg;
  if (err != 0) return; /* the loss is being handled */
  if (reply->type == REDIS_REPLY_ERROR) {
    drop(r, TT_ERR_BROKER);
    return;
  }
  ready(r);
}

/* AUTH's answer: refused (a wrong password, an unknown user) is a
 * connection that cannot be used; the next one tries again after the
 * backoff, as the password may be set meanwhile. */
static void on_auth(tt_redis_t *r, redisReply *reply, int err, void *arg) {
  (void)arg;
  if (err != 0) return;
  if (reply->type == REDIS_REPLY_ERROR) drop(r, TT_ERR_BROKER);
}

static void on_tick(uv_timer_t *t) {
  tt_redis_t *r = t->data;
  tt_redis_cmd_t *c = TAILQ_FIRST(&r->pending);
  if (c != NULL &&
      now(r) - r->progress > r->opts.reply_timeout_ms + c->deadline)
    drop(r, TT_ERR_TIMEOUT);
}

static void on_connect(uv_connect_t *req, int status) {
  tt_redis_t *r = req->data;
  if (r->state != S_CONNECTING) return; /* dropped meanwhile */
  uv_timer_stop(&r->timer);
  if (status < 0) {
    drop(r, TT_ERR_BROKER_DOWN);
    return;
  }
  if (uv_read_start(&r->sock.stream, on_alloc, on_read) != 0) {
    drop(r, TT_ERR_BROKER_DOWN);
    return;
  }
  uv_timer_start(&r->ticker, on_tick, TICK_MS, TICK_MS);
  r->state = S_SELECTING;
  if (r->password != NULL) {
    const char *argv[3] = {"AUTH", r->user ? r->user : r->password,
                           r->password};
    size_t len[3] = {4, strlen(argv[1]), strlen(r->password)};
    int argc = r->user ? 3 : 2;
    if (enqueue(r, argc, argv, len, 0, on_auth, NULL) != 0) {
      drop(r, UV_ENOMEM);
      return;
    }
  }
  if (r->db > 0) {
    char db[16];
    const char *argv[2] = {"SELECT", db};
    size_t len[2] = {6, 0};
    len[1] = (size_t)snprintf(db, sizeof db, "%d", r->db);
    if (enqueue(r, 2, argv, len, 0, on_hello, NULL) != 0) drop(r, UV_ENOMEM);
  } else {
    const char *argv[1] = {"PING"};
    size_t len[1] = {4};
    if (enqueue(r, 1, argv, len, 0, on_hello, NULL) != 0) drop(r, UV_ENOMEM);
  }
}

static void on_connect_timeout(uv_timer_t *t) {
  drop(t->data, TT_ERR_TIMEOUT);
}

static void on_reconnect(uv_timer_t *t) { try_connect(t->data); }

static void on_sock_closed(uv_handle_t *h) {
  tt_redis_t *r = h->data;
  r->sock_open = 0;
  if (r->state == S_CLOSED && --r->pending_closes == 0 && r->close_cb)
    r->close_cb(r);
}

static void try_connect(tt_redis_t *r) {
  int err;
  if (r->state == S_CLOSED) return;
  if (r->sock_open) { /* the last socket is still closing */
    tt__timer_start(&r->timer, on_reconnect, 1, 0);
    return;
  }
  if (r->reader == NULL && (r->reader = new_reader()) == NULL) {
    tt__timer_start(&r->timer, on_reconnect, 100, 0); /* out of memory */
    return;
  }
  r->state = S_CONNECTING;
  r->connect_req.data = r;
  if (r->path != NULL) {
    uv_pipe_init(r->loop, &r->sock.pipe, 0);
    r->sock_open = 1;
    r->sock.handle.data = r;
    uv_pipe_connect(&r->connect_req, &r->sock.pipe, r->path, on_connect);
    err = 0;
  } else {
    struct sockaddr_storage ss;
    uv_tcp_init(r->loop, &r->sock.tcp);
    r->sock_open = 1;
    r->sock.handle.data = r;
    uv_tcp_nodelay(&r->sock.tcp, 1);
    if ((err = uv_ip4_addr(r->host, r->port, (struct sockaddr_in *)&ss)) != 0 &&
        (err = uv_ip6_addr(r->host, r->port, (struct sockaddr_in6 *)&ss)) != 0) {
      /* a name: resolved now (synchronously: rare, at connect only) */
      uv_getaddrinfo_t gai;
      struct addrinfo hints;
      memset(&hints, 0, sizeof hints);
      hints.ai_socktype = SOCK_STREAM;
      if ((err = uv_getaddrinfo(r->loop, &gai, NULL, r->host, NULL, &hints)) == 0) {
        memcpy(&ss, gai.addrinfo->ai_addr, gai.addrinfo->ai_addrlen);
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)r->port);
        uv_freeaddrinfo(gai.addrinfo);
      }
    }
    if (err == 0)
      err = uv_tcp_connect(&r->connect_req, &r->sock.tcp,
                           (const struct sockaddr *)&ss, on_connect);
  }
  if (err != 0) {
    drop(r, TT_ERR_BROKER_DOWN);
    return;
  }
  tt__timer_start(&r->timer, on_connect_timeout, r->opts.connect_timeout_ms, 0);
}

/* The connection is gone (or never came): every command waiting fails,
 * and a new one is tried after the backoff. */
static void drop(tt_redis_t *r, int err) {
  uint64_t delay;
  if (r->state == S_WAITING || r->state == S_CLOSED) return;
  r->gen++;
  r->state = S_WAITING;
  uv_timer_stop(&r->ticker);
  uv_timer_stop(&r->timer);
  if (r->sock_open && !uv_is_closing(&r->sock.handle))
    uv_close(&r->sock.handle, on_sock_closed);
  redisReaderFree(r->reader);
  r->reader = new_reader();
  r->out_len = 0;
  r->writing = 0; /* the new socket has none (the old ones are cancelled) */
  delay = tt_backoff_delay(&r->opts.backoff, ++r->attempts, &r->seed);
  tt__timer_start(&r->timer, on_reconnect, delay ? delay : 1, 0);
  fail_list(r, &r->pending, err == TT_ERR_TIMEOUT ? err : TT_ERR_BROKER_DOWN);
  if (r->state == S_WAITING && r->on_state) r->on_state(r, 0, err);
}

int tt_redis_start(uv_loop_t *loop, tt_redis_t *r, const char *address,
                   const tt_redis_options_t *opts) {
  void *data = r->data;
  void (*on_state)(tt_redis_t *, int, int) = r->on_state;
  int err;
  memset(r, 0, sizeof *r);
  r->data = data;
  r->on_state = on_state;
  r->loop = loop;
  if (opts != NULL) r->opts = *opts;
  if (r->opts.connect_timeout_ms == 0) r->opts.connect_timeout_ms = 2000;
  if (r->opts.reply_timeout_ms == 0) r->opts.reply_timeout_ms = 5000;
  if (r->opts.backoff.initial_ms == 0) {
    r->opts.backoff.initial_ms = 100;
    r->opts.backoff.max_ms = 5000;
    r->opts.backoff.factor = 2;
    r->opts.backoff.jitter_ms = 25;
  }
  TAILQ_INIT(&r->pending);
  TAILQ_INIT(&r->failed);
  r->seed = uv_hrtime() ^ (uint64_t)(uintptr_t)r;
  if ((err = tt_backoff_check(&r->opts.backoff)) != 0 ||
      (err = parse_address(r, address)) != 0)
    goto fail;
  r->reader = new_reader();
  r->rbuf = malloc(READ_CHUNK);
  if (r->reader == NULL || r->rbuf == NULL) {
    err = UV_ENOMEM;
    goto fail;
  }
  uv_timer_init(loop, &r->timer);
  uv_timer_init(loop, &r->ticker);
  uv_idle_init(loop, &r->flusher);
  r->timer.data = r->ticker.data = r->flusher.data = r;
  try_connect(r);
  return 0;
fail:
  if (r->reader) redisReaderFree(r->reader);
  free(r->rbuf);
  free(r->host);
  free(r->path);
  free(r->user);
  free(r->password);
  r->reader = NULL;
  r->rbuf = r->host = r->path = r->user = r->password = NULL;
  return err;
}

static void on_part_closed(uv_handle_t *h) {
  tt_redis_t *r = h->data;
  if (--r->pending_closes == 0 && r->close_cb) r->close_cb(r);
}

void tt_redis_close(tt_redis_t *r, void (*cb)(tt_redis_t *r)) {
  if (r->state == S_CLOSED) return;
  r->gen++;
  r->state = S_CLOSED;
  fail_list(r, &r->pending, TT_ERR_CLOSED);
  fail_list(r, &r->failed, TT_ERR_CLOSED);
  redisReaderFree(r->reader);
  r->reader = NULL;
  free(r->rbuf);
  free(r->out);
  free(r->host);
  free(r->path);
  free(r->user);
  free(r->password);
  r->rbuf = r->out = r->host = r->path = r->user = r->password = NULL;
  r->close_cb = cb;
  r->pending_closes = 3;
  uv_close((uv_handle_t *)&r->timer, on_part_closed);
  uv_close((uv_handle_t *)&r->ticker, on_part_closed);
  uv_close((uv_handle_t *)&r->flusher, on_part_closed);
  if (r->sock_open) {
    r->pending_closes++;
    if (!uv_is_closing(&r->sock.handle))
      uv_close(&r->sock.handle, on_sock_closed);
  }
}
