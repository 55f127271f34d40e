/*
 * Process: see tt_process.h.
 *
 * Invariants:
 * - open_handles counts every handle of ours not yet closed (process
 *   handle, stdio pipes, channel); on_closed runs when it reaches 0 after
 *   the exit, and close_cb right after that.
 * - The exit is watched by a uv_process_t (uv_spawn) or by a uv_poll_t on
 *   the child's pidfd (posix_spawn; P_POSIX).  Either is uv_close'd only
 *   once the exit was reaped (or when abandoned); the pidfd is closed in
 *   the poll's close callback.  A failed spawn closes a handle too (libuv
 *   requires it of a process handle; a timer stands in otherwise), so the
 *   owner's close callback never runs from inside tt_process_close().
 * - The child gets exactly: fds 0-2, the channel at TT_CHILD_CHANNEL_FD,
 *   pass_fds at their numbers (and, with keep_fds, whatever else of ours
 *   is not close-on-exec).
 */
#include "tt_process.h"
#include "tt_zygote.h"
#include "tt_handshake.h"

#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "internal.h"
#include "tt_error.h"

extern char **environ;

enum {
  P_EXITED = 1u << 0,
  P_CLOSED_EMITTED = 1u << 1,
  P_CLOSING = 1u << 2,
  P_HAS_CHANNEL = 1u << 3,
  P_STDIN_FULL = 1u << 4, /* a write reported backpressure */
  P_POSIX = 1u << 5, /* posix_spawn'd: watched through h.pidfd_poll */
  P_PIPE0 = 1u << 6, /* P_PIPE0 << i: pipes[i] is open (6, 7, 8) */
  P_GROUP = 1u << 9, /* leads a process group of its own (a new session) */
  P_STDIN_ENDED = 1u << 10 /* stdin_end: closes once what is queued is written */
};

/* ---- signals ------------------------------------------------------------ */

#define TT_SIGNAL_MAP(XX)                                                     \
  XX(SIGHUP) XX(SIGINT) XX(SIGQUIT) XX(SIGILL) XX(SIGTRAP) XX(SIGABRT)        \
  XX(SIGBUS) XX(SIGFPE) XX(SIGKILL) XX(SIGUSR1) XX(SIGSEGV) XX(SIGUSR2)       \
  XX(SIGPIPE) XX(SIGALRM) XX(SIGTERM) XX(SIGCHLD) XX(SIGCONT) XX(SIGSTOP)     \
  XX(SIGTSTP) XX(SIGTTIN) XX(SIGTTOU) XX(SIGURG) XX(SIGXCPU) XX(SIGXFSZ)      \
  XX(SIGVTALRM) XX(SIGPROF) XX(SIGWINCH) XX(SIGIO) XX(SIGSYS)

int tt_signal_number(const char *name) {
#define XX(s)                                                                 \
  if (strcmp(name, #s) == 0 || strcmp(name, &#s[3]) == 0) return s;
  TT_SIGNAL_MAP(XX)
#undef XX
  return 0;
}

const char *tt_signal_name(int signum) {
  switch (signum) {
#define XX(s)                                                                 \
  case s:                                                                     \
    return #s;
    TT_SIGNAL_MAP(XX)
#undef XX
  default:
    return NULL;
  }
}

/* ---- environment -------------------------------------------------------- */

static size_t env_key_len(const char *kv) {
  const char *eq = strchr(kv, '=');
  return eq ? (size_t)(eq - kv) : strlen(kv);
}

static int in_list(const char *kv, char **list) {
  size_t n = env_key_len(kv);
  for (char **e = list; e && *e; e++)
    if (env_key_len(*e) == n && strncmp(*e, kv, n) == 0) return 1;
  return 0;
}

static int env_overridden(const char *kv, char **extra) {
  /* the handshake's variables are ours to set, for our children only */
  static const char *const own[] = {
      TT_ENV_CHANNEL_FD, TT_ENV_PARENT_PID,  TT_ENV_NODE_CHANNEL_FD,
      TT_ENV_NODE_MODE,  TT_ENV_MAX_MESSAGE, TT_ENV_DETACHED,
      TT_ENV_POOL_CONCURRENCY, TT_ENV_CLUSTER};
  size_t n = env_key_len(kv);
  for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
    if (n == strlen(own[i]) && strncmp(kv, own[i], n) == 0) return 1;
  return in_list(kv, extra);
}

/* Ours, minus what `extra` replaces, plus `extra` and the handshake's
 * variables (`hs` and the caller's `more`, NULL-terminated) that `extra`
 * does not set itself.  The strings are borrowed; only the array is
 * allocated. */
static char **build_env(char **extra, char **hs, char **more) {
  size_t n = 0, k = 0;
  char **env;
  for (char **e = environ; *e; e++) n++;
  for (char **e = extra; e && *e; e++) n++;
  for (char **e = hs; *e; e++) n++;
  for (char **e = more; e && *e; e++) n++;
  env = malloc((n + 1) * sizeof *env);
  if (env == NULL) return NULL;
  for (char **e = environ; *e; e++)
    if (!env_overridden(*e, extra)) env[k++] = *e;
  for (char **e = extra; e && *e; e++) env[k++] = *e;
  for (char **e = hs; *e; e++)
    if (!in_list(*e, extra)) env[k++] = *e;
  for (char **e = more; e && *e; e++)
    if (!in_list(*e, extra)) env[k++] = *e;
  env[k] = NULL;
  return env;
}

/* ---- lifecycle ---------------------------------------------------------- */

static void maybe_closed(tt_process_t *p) {
  if (p->open_handles > 0 || !(p->flags & P_EXITED)) return;
  if (!(p->flags & P_CLOSED_EMITTED)) {
    p->flags |= P_CLOSED_EMITTED;
    if (p->on_closed) p->on_closed(p);
  }
  if ((p->flags & P_CLOSING) && p->close_cb) {
    tt_process_event_cb cb = p->close_cb;
    p->close_cb = NULL;
    cb(p);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  tt_process_t *p = h->data;
  p->open_handles--;
  maybe_closed(p);
}

/* The channel is embedded, so its owner is found without using ch->data
 * (which belongs to whoever handles the frames). */
static tt_process_t *channel_owner(tt_channel_t *ch) {
  return (tt_process_t *)((char *)ch - offsetof(tt_process_t, channel_storage));
}

static void on_channel_closed(tt_channel_t *ch) {
  tt_process_t *p = channel_owner(ch);
  p->open_handles--;
  maybe_closed(p);
}

static void on_channel_disconnect(tt_channel_t *ch) {
  tt_process_t *p = channel_owner(ch);
  if (p->on_disconnect) p->on_disconnect(p);
  tt_channel_close(ch, on_channel_closed);
}

static void close_pipe(tt_process_t *p, int i) {
  if (!(p->flags & (P_PIPE0 << i))) return;
  p->flags &= ~(P_PIPE0 << i);
  uv_close((uv_handle_t *)&p->pipes[i], on_handle_closed);
}

static void on_pidfd_closed(uv_handle_t *h) {
  tt_process_t *p = h->data;
  close(p->pidfd);
  p->pidfd = -1;
  on_handle_closed(h);
}


/* Stops watching for the exit: the process handle or the pidfd's. */
static void close_watch(tt_process_t *p) {
  if (p->flags & P_POSIX)
    uv_close((uv_handle_t *)&p->h.pidfd_poll, on_pidfd_closed);
  else
    uv_close((uv_handle_t *)&p->h.proc, on_handle_closed);
}

static void process_exited(tt_process_t *p, int64_t status,
                           int term_signal) {
  p->flags |= P_EXITED;
  p->exit_status = status;
  p->term_signal = term_signal;
  /* Everything the child wrote is in the socket now: deliver it first. */
  if (p->channel) tt_channel_finish(p->channel);
  if (p->on_exit) p->on_exit(p, status, term_signal);
  close_watch(p);
  /* Nobody is left to read our stdin; stdout/stderr close at their EOF
   * (a grandchild may still be writing to them), or now if closing. */
  close_pipe(p, 0);
  if (p->flags & P_CLOSING) close_pipe(p, 1), close_pipe(p, 2);
}

static void on_exit_cb(uv_process_t *h, int64_t status, int term_signal) {
  process_exited(h->data, status, term_signal);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  buf->base = malloc(suggested);
  buf->len = buf->base ? suggested : 0;
}

static void on_pipe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  tt_process_t *p = s->data;
  int fd = s == (uv_stream_t *)&p->pipes[1] ? 1 : 2;
  if (n > 0 && p->on_data) p->on_data(p, fd, buf->base, n);
  free(buf->base);
  if (n < 0) {
    if (p->on_data) p->on_data(p, fd, NULL, UV_EOF);
    close_pipe(p, fd);
  }
}

/* ---- fds the child must not inherit -------------------------------------- */

/* Lua's io.open and most libraries do not set close-on-exec, so every file
 * the parent has open would reach every program it starts.  Around the
 * spawn (fork + exec in one call), each fd of ours above stdio that would be
 * inherited is marked close-on-exec, and the mark is taken off again once
 * the child has exec'd: the parent's own fds are as they were.  Fds passed
 * on are made inheritable for the spawn the same way. */
typedef struct {
  int *fd;
  unsigned char *had; /* passed fds: whether it had FD_CLOEXEC */
  size_t n, cap;
} tt_fdmarks_t;

static int marks_add(tt_fdmarks_t *m, int fd, int had) {
  if (m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 32;
    int *nf = realloc(m->fd, cap * sizeof *nf);
    unsigned char *nh;
    if (nf == NULL) return UV_ENOMEM;
    m->fd = nf;
    nh = realloc(m->had, cap);
    if (nh == NULL) return UV_ENOMEM;
    m->had = nh;
    m->cap = cap;
  }
  m->fd[m->n] = fd;
  m->had[m->n++] = (unsigned char)had;
  return 0;
}

static int is_passed(const tt_process_options_t *o, int fd) {
  for (size_t i = 0; i < o->pass_fds_count; i++)
    if (o->pass_fds[i] == fd) return 1;
  return 0;
}

static int mark_fd(tt_fdmarks_t *m, const tt_process_options_t *o, int fd) {
  int fl = fcntl(fd, F_GETFD);
  if (fl < 0) return 0; /* not open (any more) */
  if (is_passed(o, fd)) {
    if ((fl & FD_CLOEXEC) && fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC) == 0)
      return marks_add(m, fd, 1);
    return 0;
  }
  if (o->keep_fds || (fl & FD_CLOEXEC)) return 0;
  if (fcntl(fd, F_SETFD, fl | FD_CLOEXEC) != 0) return 0;
  return marks_add(m, fd, 0);
}

static int mark_fds(tt_fdmarks_t *m, const tt_process_options_t *o) {
  DIR *d;
  struct dirent *e;
  int err = 0;
  if (o->keep_fds) {
    for (size_t i = 0; i < o->pass_fds_count && err == 0; i++)
      err = mark_fd(m, o, o->pass_fds[i]);
    return err;
  }
  if ((d = opendir("/proc/self/fd")) == NULL) {
    /* no /proc: the usual range */
    for (int fd = 3; fd < 1024 && err == 0; fd++) err = mark_fd(m, o, fd);
    return err;
  }
  while (err == 0 && (e = readdir(d)) != NULL) {
    char *end;
    long fd = strtol(e->d_name, &end, 10);
    if (*end != '\0' || end == e->d_name || fd < 3 || fd == dirfd(d)) continue;
    err = mark_fd(m, o, (int)fd);
  }
  closedir(d);
  return err;
}

static void unmark_fds(tt_fdmarks_t *m) {
  for (size_t i = 0; i < m->n; i++) {
    int fl = fcntl(m->fd[i], F_GETFD);
    if (fl < 0) continue;
    fcntl(m->fd[i], F_SETFD, m->had[i] ? (fl | FD_CLOEXEC) : (fl & ~FD_CLOEXEC));
  }
  free(m->fd);
  free(m->had);
  memset(m, 0, sizeof *m);
}

static int open_stdio_file(const char *path, int fd) {
  int flags = fd == 0 ? O_RDONLY : (O_WRONLY | O_CREAT | O_APPEND);
  int f = open(path, flags | O_CLOEXEC, 0644);
  return f < 0 ? -errno : f;
}

/* ---- uv_spawn: fork + exec ------------------------------------------------ */

/* `files` are the TT_STDIO_FILE fds, `chan` the child's end of the channel
 * (-1: none). */
static int spawn_uv(uv_loop_t *loop, tt_process_t *p,
                    const tt_process_options_t *opts, char **env,
                    const int files[3], int chan) {
  uv_process_options_t o;
  uv_stdio_container_t stdio[4];
  tt_fdmarks_t marks = {NULL, NULL, 0, 0};
  int err, i;

  memset(&o, 0, sizeof o);
  memset(stdio, 0, sizeof stdio);
  for (i = 0; i < 3; i++) {
    switch (opts->stdio[i]) {
    case TT_STDIO_PIPE:
      uv_pipe_init(loop, &p->pipes[i], 0);
      p->pipes[i].data = p;
      p->flags |= P_PIPE0 << i;
      p->open_handles++;
      stdio[i].flags = UV_CREATE_PIPE |
                       (i == 0 ? UV_READABLE_PIPE : UV_WRITABLE_PIPE);
      stdio[i].data.stream = (uv_stream_t *)&p->pipes[i];
      break;
    case TT_STDIO_IGNORE:
      stdio[i].flags = UV_IGNORE;
      break;
    case TT_STDIO_FILE:
      stdio[i].flags = UV_INHERIT_FD;
      stdio[i].data.fd = files[i];
      break;
    default:
      stdio[i].flags = UV_INHERIT_FD;
      stdio[i].data.fd = i;
    }
  }
  o.stdio_count = 3;
  if (chan >= 0) {
    stdio[3].flags = UV_INHERIT_FD;
    stdio[3].data.fd = chan;
    o.stdio_count = 4;
  }
  o.file = opts->file;
  o.args = opts->args;
  o.env = env;
  o.cwd = opts->cwd;
  o.stdio = stdio;
  o.exit_cb = on_exit_cb;
  o.flags = opts->detached || opts->new_session ? UV_PROCESS_DETACHED : 0;
  p->h.proc.data = p;
  if ((err = mark_fds(&marks, opts)) != 0) {
    unmark_fds(&marks);
    return err;
  }
  err = uv_spawn(loop, &p->h.proc, &o);
  unmark_fds(&marks);
  /* libuv wants the handle closed even after a failed spawn; it owns no
   * child then, so nothing can be reaped late. */
  p->open_handles++;
  if (err != 0) uv_close((uv_handle_t *)&p->h.proc, on_handle_closed);
  else p->pid = p->h.proc.pid;
  if (err == 0 && (opts->detached || opts->new_session)) p->flags |= P_GROUP;
  return err;
}

/* ---- posix_spawn + pidfd ---------------------------------------------- */

#if defined(__linux__) && defined(SYS_pidfd_open) &&                          \
    defined(__GLIBC__) && (__GLIBC__ > 2 ||                                   \
                           (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
#define TT_HAVE_PIDFD_SPAWN 1

/* Whether to spawn with posix_spawn: yes unless TETHER_SPAWN=uv, or the
 * kernel has no pidfd_open (Linux < 5.3; or a seccomp filter that refuses
 * it with EPERM), which is probed once. */
static int posix_spawn_wanted(void) {
  static volatile sig_atomic_t probed; /* 0: not yet, 1: works, -1: no */
  const char *m = getenv("TETHER_SPAWN");
  int fd;
  if (m != NULL && strcmp(m, "uv") == 0) return 0;
  if (probed != 0) return probed > 0;
  fd = (int)syscall(SYS_pidfd_open, (pid_t)getpid(), 0u);
  if (fd >= 0) {
    close(fd);
    probed = 1;
  } else if (errno == ENOSYS || errno == EPERM) {
    probed = -1;
  }
  return fd >= 0 || probed == 0; /* EMFILE etc.: try, and fail there */
}

/* -errno as execve(2) would fail on `path` once the child is in `cwd`
 * (NULL: ours), checked before spawning: then a program that is missing or
 * not executable is refused synchronously even where the clone cannot
 * report exec errors (valgrind runs CLONE_VFORK as a plain fork). */
static int exec_check(const char *cwd, const char *path) {
  char buf[PATH_MAX];
  struct stat st;
  if (path[0] != '/' && cwd != NULL) {
    int n = snprintf(buf, sizeof buf, "%s/%s", cwd, path);
    if (n < 0 || (size_t)n >= sizeof buf) return UV_ENAMETOOLONG;
    path = buf;
  }
  if (stat(path, &st) != 0) return -errno;
  if (S_ISDIR(st.st_mode)) return UV_EACCES;
  if (faccessat(AT_FDCWD, path, X_OK, AT_EACCESS) != 0) return -errno;
  return 0;
}

/* The path execvp(3) would run for `file` in the child: searched in the
 * child's PATH (`env`'s; glibc's default when it has none), as uv_spawn's
 * execvp does; a bad `cwd` fails first, with chdir's error.  *out is
 * malloc'd. */
static int resolve_program(const char *file, const char *cwd, char **env,
                           char **out) {
  const char *path = "/bin:/usr/bin", *d;
  size_t flen = strlen(file);
  int err, eacces = 0;
  struct stat st;
  *out = NULL;
  if (cwd != NULL) {
    if (stat(cwd, &st) != 0) return -errno;
    if (!S_ISDIR(st.st_mode)) return UV_ENOTDIR;
    if (faccessat(AT_FDCWD, cwd, X_OK, AT_EACCESS) != 0) return -errno;
  }
  if (flen == 0) return UV_ENOENT;
  if (strchr(file, '/') != NULL) {
    if ((err = exec_check(cwd, file)) != 0) return err;
    return (*out = strdup(file)) == NULL ? UV_ENOMEM : 0;
  }
  if (flen > NAME_MAX) return UV_ENAMETOOLONG;
  for (char **e = env; *e; e++)
    if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
  for (d = path;; d++) {
    const char *end = strchrnul(d, ':');
    size_t dlen = (size_t)(end - d);
    char *cand = malloc(dlen + flen + 2);
    if (cand == NULL) return UV_ENOMEM;
    /* an empty element is the working directory, as in execvp */
    if (dlen > 0) memcpy(cand, d, dlen), cand[dlen++] = '/';
    memcpy(cand + dlen, file, flen + 1);
    err = exec_check(cwd, cand);
    if (err == 0) {
      *out = cand;
      return 0;
    }
    free(cand);
    if (err == UV_EACCES) eacces = 1;
    else if (err != UV_ENOENT && err != UV_ENOTDIR && err != UV_ENODEV &&
             err != UV_ETIMEDOUT && err != -ESTALE)
      return err;
    if (*end == '\0') break;
    d = end;
  }
  return eacces ? UV_EACCES : UV_ENOENT;
}

/* Moves `*fd` to a number above the child's channel: no fd the child gets
 * is overwritten by an earlier dup2 of the spawn's. */
static int lift_fd(int *fd) {
  int nfd;
  if (*fd < 0 || *fd > TT_CHILD_CHANNEL_FD) return 0;
  if ((nfd = fcntl(*fd, F_DUPFD_CLOEXEC, TT_CHILD_CHANNEL_FD + 1)) < 0)
    return -errno;
  close(*fd);
  *fd = nfd;
  return 0;
}

static int fd_open(int fd) { return fcntl(fd, F_GETFD) >= 0; }

/* The child's fds, in the order they are made: stdio and the channel at
 * their numbers, `pass_fds` at theirs, then every other fd closed (unless
 * keep_fds); then the working directory.  Positive errno, as posix_spawn's
 * functions return. */
static int add_file_actions(posix_spawn_file_actions_t *fa,
                            const tt_process_options_t *o,
                            const int src[3], int chan) {
  int err = 0, top = chan >= 0 ? TT_CHILD_CHANNEL_FD : 2;
  for (int i = 0; i < 3 && err == 0; i++) {
    if (o->stdio[i] == TT_STDIO_IGNORE) {
      err = posix_spawn_file_actions_addopen(fa, i, "/dev/null",
                                             i == 0 ? O_RDONLY : O_RDWR, 0);
    } else if (src[i] >= 0) {
      err = posix_spawn_file_actions_adddup2(fa, src[i], i);
    } else if (fd_open(i)) {
      /* inherited: dup2 onto itself clears FD_CLOEXEC; and blocking, as
       * uv_spawn's child makes its stdio (the description is shared) */
      int fl = fcntl(i, F_GETFL);
      if (fl >= 0 && (fl & O_NONBLOCK)) fcntl(i, F_SETFL, fl & ~O_NONBLOCK);
      err = posix_spawn_file_actions_adddup2(fa, i, i);
    }
  }
  if (err == 0 && chan >= 0)
    err = posix_spawn_file_actions_adddup2(fa, chan, TT_CHILD_CHANNEL_FD);
  for (size_t k = 0; k < o->pass_fds_count && err == 0; k++) {
    int fd = o->pass_fds[k];
    if (!fd_open(fd)) continue; /* gone: as uv_spawn's, the child lacks it */
    err = posix_spawn_file_actions_adddup2(fa, fd, fd);
    if (fd > top) top = fd;
  }
  if (!o->keep_fds) {
    for (int fd = chan >= 0 ? TT_CHILD_CHANNEL_FD + 1 : 3;
         fd < top && err == 0; fd++)
      if (!is_passed(o, fd)) err = posix_spawn_file_actions_addclose(fa, fd);
    if (err == 0) err = posix_spawn_file_actions_addclosefrom_np(fa, top + 1);
  }
  if (err == 0 && o->cwd != NULL)
    err = posix_spawn_file_actions_addchdir_np(fa, o->cwd);
  return err;
}

/* The child from the zygote: what add_file_actions gives, as descriptors
 * and their numbers.  0, or the error (tt_zygote_request's). */
static int spawn_by_zygote(const tt_process_options_t *o, const int src[3],
                           int chan, char **env, pid_t *pid) {
  int fds[TT_ZYGOTE_MAX_FDS], targets[TT_ZYGOTE_MAX_FDS], null_fd = -1;
  size_t n = 0;
  tt_zygote_request_t req;
  int err, got;
  for (int i = 0; i < 3; i++) {
    int fd = -1;
    if (o->stdio[i] == TT_STDIO_IGNORE) {
      if (null_fd < 0 && (null_fd = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0)
        return -errno;
      fd = null_fd;
    } else if (src[i] >= 0) {
      fd = src[i];
    } else if (fd_open(i)) {
      fd = i;
    }
    if (fd >= 0) fds[n] = fd, targets[n++] = i;
  }
  if (chan >= 0) fds[n] = chan, targets[n++] = TT_CHILD_CHANNEL_FD;
  for (size_t k = 0; k < o->pass_fds_count; k++) {
    if (n == TT_ZYGOTE_MAX_FDS) {
      if (null_fd >= 0) close(null_fd);
      return UV_EINVAL;
    }
    if (fd_open(o->pass_fds[k]))
      fds[n] = o->pass_fds[k], targets[n++] = o->pass_fds[k];
  }
  memset(&req, 0, sizeof req);
  req.args = o->args;
  req.env = env;
  req.cwd = o->cwd;
  req.new_session = o->detached || o->new_session;
  req.fds = fds;
  req.targets = targets;
  req.nfds = n;
  err = tt_zygote_request(o->zygote, &req, &got);
  if (null_fd >= 0) close(null_fd);
  if (err == 0) *pid = got;
  return err;
}

/* The zygote cannot serve (gone, or out of step): spawn the usual way. */
static int zygote_unusable(int err) {
  return err == UV_EPIPE || err == UV_ECONNRESET || err == UV_EPROTO ||
         err == UV_EBADF || err == UV_ENOTSOCK || err == UV_ENOTCONN ||
         err == UV_EINVAL || err == UV_EBUSY || err == UV_ENOMEM ||
         err == UV_ETIMEDOUT;
}

/* The zygote failed after our request went out: a spare may have taken
 * the descriptors and run (until tt_zygote_close killed it), writing to
 * the channel or the pipes.  The exec'd child gets new ones, or its
 * parent would read a dead worker's frames as its own. */
#define ZYGOTE_TAINTED 0x7a7970 /* (positive: posix_spawn's error space) */
static int zygote_tainted(int err) {
  return err == UV_EPROTO || err == UV_ECONNRESET || err == UV_ETIMEDOUT ||
         err == UV_EPIPE;
}

static void process_exited(tt_process_t *p, int64_t status, int term_signal);

static void on_pidfd(uv_poll_t *h, int status, int events) {
  tt_process_t *p = h->data;
  int ws = 0;
  pid_t r;
  (void)status;
  (void)events;
  do
    r = waitpid(p->pid, &ws, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0) return; /* not yet */
  uv_poll_stop(h);
  if (r < 0) ws = 0; /* ECHILD: SIGCHLD ignored, reaped by the kernel */
  process_exited(p, WIFEXITED(ws) ? WEXITSTATUS(ws) : 0,
                 WIFSIGNALED(ws) ? WTERMSIG(ws) : 0);
}

static int spawn_posix(uv_loop_t *loop, tt_process_t *p,
                       const tt_process_options_t *o, char **env,
                       int files[3], int *chan, int use_zygote) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  sigset_t set;
  int sp[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
  int src[3] = {-1, -1, -1};
  char *path = NULL, **sh_argv = NULL;
  short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
  pid_t pid = -1;
  int err, i, pidfd, forked = 0;

  if ((err = resolve_program(o->file, o->cwd, env, &path)) != 0) return err;
  for (i = 0; i < 3; i++) {
    if (o->stdio[i] == TT_STDIO_PIPE) {
      /* a socketpair, as uv_spawn's pipes are */
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp[i]) != 0) {
        err = -errno;
        goto done;
      }
      if ((err = lift_fd(&sp[i][1])) != 0) goto done;
      src[i] = sp[i][1];
    } else if (o->stdio[i] == TT_STDIO_FILE) {
      if ((err = lift_fd(&files[i])) != 0) goto done;
      src[i] = files[i];
    }
  }
  if ((err = lift_fd(chan)) != 0) goto done;

  if ((err = posix_spawn_file_actions_init(&fa)) != 0) {
    err = -err;
    goto done;
  }
  if ((err = posix_spawnattr_init(&at)) != 0) {
    posix_spawn_file_actions_destroy(&fa);
    err = -err;
    goto done;
  }
  /* The child starts clean, as uv_spawn's does: every signal at its
   * default action (an ignored SIGPIPE would survive exec), none blocked. */
  sigfillset(&set);
  sigdelset(&set, SIGKILL);
  sigdelset(&set, SIGSTOP);
  posix_spawnattr_setsigdefault(&at, &set);
  sigemptyset(&set);
  posix_spawnattr_setsigmask(&at, &set);
  if (o->detached || o->new_session) flags |= POSIX_SPAWN_SETSID;
  err = posix_spawnattr_setflags(&at, flags);
  if (err == 0) err = add_file_actions(&fa, o, src, *chan);
  if (err == 0 && use_zygote && o->zygote != NULL && o->zygote->sock >= 0) {
    int zerr = spawn_by_zygote(o, src, *chan, env, &pid);
    if (zerr == 0) forked = 1;
    else if (zygote_tainted(zerr)) err = ZYGOTE_TAINTED;
    else if (!zygote_unusable(zerr)) err = -zerr;
  }
  if (err == 0 && !forked) err = posix_spawn(&pid, path, &fa, &at, o->args, env);
  if (err == ENOEXEC && !forked) {
    /* no #! line: a shell script, as execvp runs it */
    size_t n = 0;
    while (o->args[n] != NULL) n++;
    if ((sh_argv = malloc((n + 2) * sizeof *sh_argv)) == NULL) {
      err = ENOMEM;
    } else {
      sh_argv[0] = "/bin/sh";
      sh_argv[1] = path;
      memcpy(sh_argv + 2, o->args + (n > 0), (n - (n > 0) + 1) * sizeof *sh_argv);
      err = posix_spawn(&pid, "/bin/sh", &fa, &at, sh_argv, env);
    }
  }
  posix_spawnattr_destroy(&at);
  posix_spawn_file_actions_destroy(&fa);
  if (err != 0) {
    err = -err;
    goto done;
  }

  /* The pidfd is readable once the child has exited; the child is ours to
   * reap (libuv's SIGCHLD handler waits only for its own handles' pids). */
  pidfd = (int)syscall(SYS_pidfd_open, pid, 0u);
  if (pidfd < 0) err = -errno;
  else if ((err = uv_poll_init(loop, &p->h.pidfd_poll, pidfd)) != 0)
    close(pidfd);
  if (err != 0) {
    /* a child we could not watch: gone before anyone sees it */
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    goto done;
  }
  p->pid = pid;
  p->pidfd = pidfd;
  p->flags |= P_POSIX;
  if (o->detached || o->new_session) p->flags |= P_GROUP;
  p->open_handles++;
  p->h.pidfd_poll.data = p;
  uv_poll_start(&p->h.pidfd_poll, UV_READABLE, on_pidfd);
  for (i = 0; i < 3; i++) {
    if (sp[i][0] < 0) continue;
    uv_pipe_init(loop, &p->pipes[i], 0);
    p->pipes[i].data = p;
    p->flags |= P_PIPE0 << i;
    p->open_handles++;
    if (uv_pipe_open(&p->pipes[i], sp[i][0]) != 0) {
      close(sp[i][0]); /* the child sees EOF there */
      close_pipe(p, i);
    }
    sp[i][0] = -1;
  }

done:
  for (i = 0; i < 3; i++) {
    if (sp[i][0] >= 0) close(sp[i][0]);
    if (sp[i][1] >= 0) close(sp[i][1]);
  }
  free(sh_argv);
  free(path);
  return err;
}
#else
static int posix_spawn_wanted(void) { return 0; }
static int spawn_posix(uv_loop_t *loop, tt_process_t *p,
                       const tt_process_options_t *o, char **env,
                       int files[3], int *chan, int use_zygote) {
  (void)loop, (void)p, (void)o, (void)env, (void)files, (void)chan;
  (void)use_zygote;
  return UV_ENOSYS;
}
#endif

/* ---- spawn ---------------------------------------------------------------- */

int tt_process_spawn(uv_loop_t *loop, tt_process_t *p,
                     const tt_process_options_t *opts) {
  int sv[2] = {-1, -1};
  int files[3] = {-1, -1, -1};
  char fdvar[32], ppidvar[48], maxvar[48];
  char modevar[] = TT_ENV_NODE_MODE "=json", detvar[] = TT_ENV_DETACHED "=1";
  char *hs[6] = {NULL};
  int nhs = 0;
  char **env = NULL;
  int err = 0, i;

  memset(p, 0, sizeof *p);
  p->loop = loop;
  p->pidfd = -1;

  if (opts->file == NULL || opts->args == NULL) {
    err = UV_EINVAL;
    goto fail;
  }
  for (size_t k = 0; k < opts->pass_fds_count; k++) {
    if (opts->pass_fds[k] < 0 ||
        opts->pass_fds[k] < (opts->channel ? 4 : 3)) {
      err = UV_EINVAL; /* stdio and the channel have their own numbers */
      goto fail;
    }
    if (!fd_open(opts->pass_fds[k])) {
      err = UV_EBADF; /* a child told to expect it would not find it */
      goto fail;
    }
  }
  for (i = 0; i < 3; i++)
    if (opts->stdio[i] == TT_STDIO_FILE &&
        (files[i] = open_stdio_file(opts->stdio_path[i], i)) < 0) {
      err = files[i];
      goto fail;
    }
  if (opts->channel) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      err = -errno;
      goto fail;
    }
    /* A JSON-lines channel is Node's: a Node child finds it there (and a
     * tether child knows its format from the name). */
    snprintf(fdvar, sizeof fdvar, "%s=%d",
             opts->channel_options.lines ? "NODE_CHANNEL_FD"
                                         : "TETHER_CHANNEL_FD",
             TT_CHILD_CHANNEL_FD);
    snprintf(ppidvar, sizeof ppidvar, TT_ENV_PARENT_PID "=%d", (int)getpid());
    hs[nhs++] = fdvar;
    hs[nhs++] = ppidvar;
    if (opts->channel_options.lines) hs[nhs++] = modevar;
    if (opts->channel_options.max_message > 0) {
      /* the child's limit is ours unless told otherwise */
      snprintf(maxvar, sizeof maxvar, TT_ENV_MAX_MESSAGE "=%llu",
               (unsigned long long)tt_channel_options_max_message(
                   &opts->channel_options));
      hs[nhs++] = maxvar;
    }
    if (opts->detached) hs[nhs++] = detvar; /* it outlives us, as in Node */
  }
  env = build_env(opts->env, hs, opts->handshake);
  if (env == NULL) {
    err = UV_ENOMEM;
    goto fail;
  }
  if (posix_spawn_wanted()) {
    err = spawn_posix(loop, p, opts, env, files, &sv[1], 1);
    if (err == -ZYGOTE_TAINTED) {
      if (opts->channel) {
        close(sv[0]);
        close(sv[1]);
        sv[0] = sv[1] = -1;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
          err = -errno;
          goto fail;
        }
      }
      err = spawn_posix(loop, p, opts, env, files, &sv[1], 0);
    }
  } else
    err = spawn_uv(loop, p, opts, env, files, sv[1]);
  if (err != 0) goto fail;
  free(env);
  for (i = 0; i < 3; i++)
    if (files[i] >= 0) close(files[i]);
  if (opts->channel) {
    close(sv[1]);
    err = tt_channel_init(loop, &p->channel_storage, sv[0],
                          &opts->channel_options);
    if (err != 0) {
      /* The child is running without a usable channel: it sees EOF. */
      close(sv[0]);
    } else {
      p->channel = &p->channel_storage;
      p->channel->on_disconnect = on_channel_disconnect;
      p->flags |= P_HAS_CHANNEL;
      p->open_handles++;
    }
  }
  for (i = 1; i < 3; i++)
    if (p->flags & (P_PIPE0 << i))
      uv_read_start((uv_stream_t *)&p->pipes[i], on_alloc, on_pipe_read);
  return 0;

fail:
  free(env);
  for (i = 0; i < 3; i++)
    if (files[i] >= 0) close(files[i]);
  if (sv[0] >= 0) close(sv[0]);
  if (sv[1] >= 0) close(sv[1]);
  for (i = 0; i < 3; i++)
    close_pipe(p, i);
  /* Nothing to report, only handles to let close: tt_process_close()
   * finishes once they have, never from inside itself. */
  if (p->open_handles == 0) {
    uv_timer_init(loop, &p->h.unused);
    p->h.unused.data = p;
    p->open_handles++;
    uv_close((uv_handle_t *)&p->h.unused, on_handle_closed);
  }
  p->flags = P_EXITED | P_CLOSED_EMITTED;
  return err;
}

int tt_process_kill(tt_process_t *p, int signum) {
  if (p->flags & P_EXITED) return UV_ESRCH;
  /* not reaped yet, so the pid is still our child's */
  if (p->flags & P_POSIX) return kill(p->pid, signum) == 0 ? 0 : -errno;
  return uv_process_kill(&p->h.proc, signum);
}

int tt_process_kill_group(tt_process_t *p, int signum) {
  if (p->flags & P_EXITED) return UV_ESRCH;
  if (!(p->flags & P_GROUP)) return tt_process_kill(p, signum);
  /* the leader is not reaped yet: its group id is still its pid */
  return kill(-p->pid, signum) == 0 ? 0 : -errno;
}

int tt_process_can_prefork(void) { return posix_spawn_wanted(); }

void tt_process_ref(tt_process_t *p, int on) {
  uv_handle_t *h = (uv_handle_t *)&p->h;
  if (p->flags & (P_EXITED | P_CLOSING)) return;
  if (uv_is_closing(h)) return;
  if (on) uv_ref(h);
  else uv_unref(h);
}

int tt_process_has_exited(const tt_process_t *p) {
  return (p->flags & P_EXITED) != 0;
}

static void on_stdin_written(uv_write_t *req, int status) {
  tt_process_t *p = req->handle->data;
  (void)status; /* EPIPE: the child closed stdin; nothing to tell. */
  free(req);
  if ((p->flags & P_STDIN_FULL) && (p->flags & P_PIPE0) &&
      p->pipes[0].write_queue_size <= TT_STDIN_HIGH_WATER / 2) {
    p->flags &= ~P_STDIN_FULL;
    if (p->on_stdin_drain) p->on_stdin_drain(p);
  }
}

int tt_process_stdin_write(tt_process_t *p, const char *buf, size_t len) {
  uv_write_t *req;
  uv_buf_t b;
  int err;
  if (!(p->flags & P_PIPE0) || (p->flags & P_STDIN_ENDED)) return UV_EPIPE;
  req = malloc(sizeof *req + len);
  if (req == NULL) return UV_ENOMEM;
  memcpy(req + 1, buf, len);
  b = uv_buf_init((char *)(req + 1), (unsigned)len);
  err = uv_write(req, (uv_stream_t *)&p->pipes[0], &b, 1, on_stdin_written);
  if (err != 0) {
    free(req);
    return err;
  }
  if (p->pipes[0].write_queue_size > TT_STDIN_HIGH_WATER) {
    p->flags |= P_STDIN_FULL;
    return 0;
  }
  return 1;
}

/* Every queued write has gone (or failed: the child closed its end, or
 * exited and the pipe was closed, UV_ECANCELED): the pipe closes now. */
static void on_stdin_shut(uv_shutdown_t *req, int status) {
  tt_process_t *p = req->handle->data;
  (void)status;
  free(req);
  close_pipe(p, 0);
}

int tt_process_stdin_end(tt_process_t *p) {
  uv_shutdown_t *req;
  if (!(p->flags & P_PIPE0) || (p->flags & P_STDIN_ENDED)) return UV_EPIPE;
  p->flags |= P_STDIN_ENDED;
  /* what was written before the end goes first, as in a shell's pipe:
   * closing the handle now would cancel the writes still queued */
  req = malloc(sizeof *req);
  if (req == NULL ||
      uv_shutdown(req, (uv_stream_t *)&p->pipes[0], on_stdin_shut) != 0) {
    free(req);
    close_pipe(p, 0);
  }
  return 0;
}

void tt_process_close(tt_process_t *p, tt_process_event_cb cb) {
  if (p->flags & P_CLOSING) return;
  p->flags |= P_CLOSING;
  p->close_cb = cb;
  if (p->flags & P_EXITED) {
    for (int i = 0; i < 3; i++) close_pipe(p, i);
    if (p->channel) tt_channel_close(p->channel, on_channel_closed);
  }
  maybe_closed(p);
}

void tt_process_abandon(tt_process_t *p, tt_process_event_cb cb) {
  if (!(p->flags & P_EXITED)) {
    p->flags |= P_EXITED | P_CLOSED_EMITTED;
    close_watch(p);
  }
  p->flags &= ~P_CLOSING;
  tt_process_close(p, cb);
}

/* ---- resources ---------------------------------------------------------- */

uint64_t tt_process_rss(int pid) {
  char path[64], buf[128];
  unsigned long long size, resident;
  ssize_t n;
  int fd;
  snprintf(path, sizeof path, "/proc/%d/statm", pid);
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return 0;
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  if (sscanf(buf, "%llu %llu", &size, &resident) != 2) return 0;
  return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* ---- parent watch (child side) ------------------------------------------ */

/* Our parent's pid as tether passed it down; read once and removed from the
 * environment, so our own children never see it.  0 when not a tether
 * child. */
static int parent_pid(void) { return tt_handshake()->parent_pid; }

int tt_process_parent_alive(void) {
  return parent_pid() > 0 && parent_pid() == (int)getppid();
}

#ifdef __linux__
static unsigned watch_grace_s = 1;

static void on_parent_death(int sig) {
  (void)sig;
  /* The loop should see EOF on the channel and exit by itself; a stuck one
   * is ended by SIGALRM's default action.  alarm() is async-signal-safe. */
  signal(SIGALRM, SIG_DFL);
  alarm(watch_grace_s);
}

int tt_process_watch_parent(int on, int grace_ms) {
  int sig = SIGRTMIN + 3;
  int pp = parent_pid();
  if (!on) return prctl(PR_SET_PDEATHSIG, 0) == 0 ? 0 : -errno;
  watch_grace_s = grace_ms <= 1000 ? 1 : (unsigned)((grace_ms + 999) / 1000);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_parent_death;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(sig, &sa, NULL) != 0) return -errno;
  if (prctl(PR_SET_PDEATHSIG, sig) != 0) return -errno;
  /* The parent may have died before prctl: then nobody will signal us. */
  if (pp > 0 && pp != (int)getppid()) raise(sig);
  return 0;
}
#else
int tt_process_watch_parent(int on, int grace_ms) {
  (void)on;
  (void)grace_ms;
  return 0;
}
#endif

/* ---- why a spawn failed ---------------------------------------------------- */

const char *tt_process_spawn_error(const tt_process_options_t *o, int err,
                                   char *buf, size_t size) {
  static const char *const names[3] = {"stdin", "stdout", "stderr"};
  struct stat st;
  if (size == 0) return buf;
  if (err == UV_ENOENT || err == UV_EACCES || err == UV_ENOTDIR ||
      err == UV_EISDIR) {
    /* what is missing: a stdio file, the cwd, or else the program */
    for (int i = 0; i < 3; i++) {
      int fd;
      if (o->stdio[i] != TT_STDIO_FILE || o->stdio_path[i] == NULL) continue;
      fd = open(o->stdio_path[i],
                i == 0 ? O_RDONLY : (O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC),
                0644);
      if (fd >= 0) {
        close(fd);
        continue;
      }
      snprintf(buf, size, "stdio.%s '%s': %s", names[i], o->stdio_path[i],
               strerror(errno));
      return buf;
    }
    if (o->cwd != NULL) {
      int bad = stat(o->cwd, &st) != 0 ? -errno
                : !S_ISDIR(st.st_mode)   ? UV_ENOTDIR
                                         : 0;
      if (bad != 0) {
        snprintf(buf, size, "cwd '%s': %s", o->cwd, uv_strerror(bad));
        return buf;
      }
    }
    snprintf(buf, size, "cannot run '%s': %s%s",
             o->file != NULL ? o->file : "?", uv_strerror(err),
             o->file != NULL && strchr(o->file, '/') == NULL
                 ? " (searched in PATH)"
                 : "");
    return buf;
  }
  if (err == UV_EBADF) {
    for (size_t k = 0; k < o->pass_fds_count; k++)
      if (!fd_open(o->pass_fds[k])) {
        snprintf(buf, size, "pass_fds: descriptor %d is not open",
                 o->pass_fds[k]);
        return buf;
      }
  }
  snprintf(buf, size, "spawn: %s", uv_strerror(err));
  return buf;
}
