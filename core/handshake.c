/* The child's side of the handshake: see tt_handshake.h. */
#include "tt_handshake.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "internal.h"

/* The value of `name`, removed from the environment: the caller copies or
 * parses it before the next getenv/setenv. */
static const char *take(const char *name, char *buf, size_t cap) {
  const char *v = getenv(name);
  if (v == NULL) return NULL;
  snprintf(buf, cap, "%s", v);
  unsetenv(name);
  return buf;
}

static unsigned long long number(const char *s, int *ok) {
  char *end;
  unsigned long long v;
  *ok = 0;
  if (s == NULL || *s < '0' || *s > '9') return 0;
  v = strtoull(s, &end, 10);
  *ok = *end == '\0';
  return v;
}

static void read_channel(tt_handshake_t *h) {
  char ours[32], nodes[32], modebuf[32];
  const char *s = take(TT_ENV_CHANNEL_FD, ours, sizeof ours);
  const char *node = take(TT_ENV_NODE_CHANNEL_FD, nodes, sizeof nodes);
  const char *mode = take(TT_ENV_NODE_MODE, modebuf, sizeof modebuf);
  unsigned long long v;
  struct stat st;
  int ok, err;
  h->fd = -1;
  if (s == NULL || *s == '\0') { /* started by Node.js, or by tether in JSON mode */
    s = node;
    h->lines = 1;
  }
  if (s == NULL || *s == '\0') {
    h->lines = 0;
    return;
  }
  h->named = 1;
  v = number(s, &ok);
  /* stdin, stdout and stderr are never a channel: frames written into a
   * terminal or a log would be garbage there */
  if (!ok || v < 3 || v > 65535) {
    h->channel_error = UV_EBADF;
    return;
  }
  if (h->lines && mode != NULL && strcmp(mode, "json") != 0) {
    h->channel_error = UV_ENOTSUP; /* V8's format: not ours */
    return;
  }
  if (fstat((int)v, &st) != 0) {
    h->channel_error = UV_EBADF;
    return;
  }
  if (!S_ISSOCK(st.st_mode)) {
    h->channel_error = UV_ENOTSOCK;
    return;
  }
  if ((err = tt__set_flags((int)v, 1, 1)) != 0) {
    h->channel_error = err;
    return;
  }
  h->fd = (int)v;
}

static tt_handshake_t h;
static int done;

void tt_handshake_reload(void) {
  memset(&h, 0, sizeof h);
  done = 0;
  (void)tt_handshake();
}

const tt_handshake_t *tt_handshake(void) {
  char buf[32];
  unsigned long long v;
  int ok;
  if (done) return &h;
  done = 1;
  read_channel(&h);
  v = number(take(TT_ENV_PARENT_PID, buf, sizeof buf), &ok);
  /* Not started by tether (a Node.js parent): the parent is who we have
   * now, so the first call must come early (the binding makes it when it
   * loads).  Reparented to init already: no parent to watch. */
  h.parent_pid = ok && v > 0 && v < 1u << 30 ? (int)v : (int)getppid();
  if (h.parent_pid == 1) h.parent_pid = 0;
  v = number(take(TT_ENV_MAX_MESSAGE, buf, sizeof buf), &ok);
  h.max_message = ok ? (size_t)v : 0;
  v = number(take(TT_ENV_POOL_CONCURRENCY, buf, sizeof buf), &ok);
  h.concurrency = ok && v < 1u << 20 ? (unsigned)v : 0;
  h.detached = take(TT_ENV_DETACHED, buf, sizeof buf) != NULL &&
               strcmp(buf, "1") == 0;
  {
    /* a list of descriptors: longer than the other values; one cut short
     * would name wrong descriptors, so it is refused */
    static char cluster[4096];
    const char *v = getenv(TT_ENV_CLUSTER);
    h.cluster = v != NULL && strlen(v) < sizeof cluster
                    ? take(TT_ENV_CLUSTER, cluster, sizeof cluster)
                    : NULL;
    if (v != NULL && h.cluster == NULL) unsetenv(TT_ENV_CLUSTER);
    /* the listening sockets it names are ours: not inherited by what we
     * run in turn (until the script takes them, or if it never does) */
    for (const char *c = h.cluster ? strchr(h.cluster, ':') : NULL;
         c != NULL && c[1] != '\0';) {
      char *end;
      long fd = strtol(c + 1, &end, 10);
      if (end == c + 1) break;
      if (fd > 2 && fd < 65536) {
        int fl = fcntl((int)fd, F_GETFD);
        if (fl >= 0) fcntl((int)fd, F_SETFD, fl | FD_CLOEXEC);
      }
      c = *end == ',' ? end : NULL;
    }
  }
  return &h;
}
