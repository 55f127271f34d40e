/* The zygote's wire and its fork (tt_zygote.h). */
#include "tt_zygote.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#define MAGIC 0x54545a31u /* "TTZ1" */
#define MAX_BODY (4u << 20)

typedef struct {
  uint32_t magic;
  uint32_t body; /* bytes after the header: cwd, argv, env, NUL-ended */
  uint32_t argc, envc, nfds;
  int32_t new_session;
  int32_t targets[TT_ZYGOTE_MAX_FDS];
} wire_t;

/* What the asker reads: a spare's pid as the zygote makes it, and each
 * request's answer, from the spare that took it. */
enum { RECORD_SPARE = 1, RECORD_REPLY = 2 };
typedef struct {
  int32_t kind;
  int32_t err; /* REPLY: 0, or why this request was refused */
  int32_t pid; /* SPARE: the spare; REPLY: the worker, or 0 */
} record_t;

static size_t count(char **list) {
  size_t n = 0;
  while (list != NULL && list[n] != NULL) n++;
  return n;
}

static int write_all(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += n, len -= (size_t)n;
  }
  return 0;
}

static int read_all(int fd, char *p, size_t len) {
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return UV_EOF;
    p += n, len -= (size_t)n;
  }
  return 0;
}

/* ---- the asker ---- */

/* One record, and its sender's pid (SO_PASSCRED: each process that
 * writes to the socket is named by the kernel, so a record cannot name a
 * process other than the one that wrote it).  0, UV_ETIMEDOUT once
 * `deadline` (uv_hrtime) has passed, UV_EOF, UV_EPROTO for a record with
 * no sender or two, or an error. */
static int read_record(int sock, record_t *r, int *sender,
                       uint64_t deadline) {
  size_t got = 0;
  *sender = 0;
  while (got < sizeof *r) {
    char cbuf[CMSG_SPACE(sizeof(struct ucred))];
    struct pollfd pf = {sock, POLLIN, 0};
    struct msghdr m;
    struct iovec iov;
    struct cmsghdr *c;
    uint64_t now = uv_hrtime();
    ssize_t n;
    int k;
    if (now >= deadline) return UV_ETIMEDOUT;
    k = poll(&pf, 1, (int)((deadline - now) / 1000000u) + 1);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return -errno;
    if (k == 0) return UV_ETIMEDOUT;
    memset(&m, 0, sizeof m);
    iov.iov_base = (char *)r + got;
    iov.iov_len = sizeof *r - got;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    do n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    if (n == 0) return UV_EOF;
    for (c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
        struct ucred u;
        memcpy(&u, CMSG_DATA(c), sizeof u);
        if (*sender != 0 && *sender != (int)u.pid) return UV_EPROTO;
        *sender = (int)u.pid;
      } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        /* (nobody sends us descriptors: closed, and out of step) */
        int k2 = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k2; i++) {
          int fd;
          memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          close(fd);
        }
        return UV_EPROTO;
      }
    got += (size_t)n;
  }
  return *sender > 0 ? 0 : UV_EPROTO;
}

static int is_spare(const tt_zygote_t *z, int pid) {
  for (size_t i = 0; i < z->nspares; i++)
    if (z->spares[i] == pid) return 1;
  return 0;
}


void tt_zygote_init(tt_zygote_t *z, int sock) {
  int on = 1;
  memset(z, 0, sizeof *z);
  z->sock = sock;
  z->timeout_ms = TT_ZYGOTE_TIMEOUT_MS;
  /* (without it no record names its sender, and none is taken) */
  if (sock >= 0) (void)setsockopt(sock, SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
}

void tt_zygote_set_pid(tt_zygote_t *z, int zygote_pid) {
  z->zygote_pid = zygote_pid > 0 ? zygote_pid : 0;
}

/* A SPARE record is believed from the spare itself or from the zygote;
 * each spare is named twice (by both), and noted once. */
static int may_name(const tt_zygote_t *z, const record_t *r, int sender) {
  return r->pid == sender || (z->zygote_pid != 0 && sender == z->zygote_pid);
}

static int note_spare(tt_zygote_t *z, int pid) {
  if (pid <= 0) return UV_EPROTO;
  if (is_spare(z, pid)) return 0;
  if (z->nspares == TT_ZYGOTE_MAX_SPARES) return UV_EPROTO;
  z->spares[z->nspares++] = pid;
  return 0;
}

static int forget_spare(tt_zygote_t *z, int pid) {
  for (size_t i = 0; i < z->nspares; i++)
    if (z->spares[i] == pid) {
      z->spares[i] = z->spares[--z->nspares];
      return 1;
    }
  return 0;
}

int tt_zygote_request(tt_zygote_t *z, const tt_zygote_request_t *req,
                      int *pid) {
  size_t argc = count(req->args), envc = count(req->env), body = 0, off;
  const char *cwd = req->cwd != NULL ? req->cwd : "";
  char *buf, cbuf[CMSG_SPACE(sizeof(int) * TT_ZYGOTE_MAX_FDS)];
  wire_t *w;
  struct msghdr m;
  struct iovec iov;
  struct cmsghdr *c;
  record_t r;
  ssize_t n;
  uint64_t deadline;
  int err, sock = z->sock;
  if (sock < 0) return UV_EBADF;
  if (req->nfds == 0 || req->nfds > TT_ZYGOTE_MAX_FDS || argc == 0)
    return UV_EINVAL;
  body = strlen(cwd) + 1;
  for (size_t i = 0; i < argc; i++) body += strlen(req->args[i]) + 1;
  for (size_t i = 0; i < envc; i++) body += strlen(req->env[i]) + 1;
  if (body > MAX_BODY) return UV_EINVAL;
  if ((buf = calloc(1, sizeof *w + body)) == NULL) return UV_ENOMEM;
  w = (wire_t *)buf;
  w->magic = MAGIC;
  w->body = (uint32_t)body;
  w->argc = (uint32_t)argc;
  w->envc = (uint32_t)envc;
  w->nfds = (uint32_t)req->nfds;
  w->new_session = req->new_session != 0;
  for (size_t i = 0; i < req->nfds; i++) w->targets[i] = req->targets[i];
  off = sizeof *w;
#define PUT(s)                                                               \
  do {                                                                       \
    size_t l_ = strlen(s) + 1;                                               \
    memcpy(buf + off, (s), l_);                                              \
    off += l_;                                                               \
  } while (0)
  PUT(cwd);
  for (size_t i = 0; i < argc; i++) PUT(req->args[i]);
  for (size_t i = 0; i < envc; i++) PUT(req->env[i]);
#undef PUT
  /* the descriptors travel with the first byte; the rest follows */
  memset(&m, 0, sizeof m);
  memset(cbuf, 0, sizeof cbuf);
  iov.iov_base = buf;
  iov.iov_len = off;
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = CMSG_SPACE(sizeof(int) * req->nfds);
  c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * req->nfds);
  memcpy(CMSG_DATA(c), req->fds, sizeof(int) * req->nfds);
  do n = sendmsg(sock, &m, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    err = -errno;
    free(buf);
    goto unusable;
  }
  err = write_all(sock, buf + n, off - (size_t)n);
  free(buf);
  if (err != 0) goto unusable;
  /* the spares made meanwhile, then the answer */
  deadline = uv_hrtime() + (uint64_t)z->timeout_ms * 1000000u;
  for (;;) {
    int sender;
    if ((err = read_record(sock, &r, &sender, deadline)) != 0) {
      if (err == UV_EOF) err = UV_ECONNRESET;
      goto unusable;
    }
    if (r.kind == RECORD_SPARE) {
      /* a spare says so itself, and the zygote says so of it */
      if (!may_name(z, &r, sender) || note_spare(z, r.pid) != 0) goto garbled;
      continue;
    }
    if (r.kind != RECORD_REPLY || !is_spare(z, sender)) goto garbled;
    break;
  }
  if (r.pid == 0 && (r.err == UV_EBUSY || r.err == UV_ENOMEM))
    return r.err; /* refused: the spare waits for the next request */
  /* the worker is the spare that answered */
  if (r.pid <= 0 || r.err != 0 || !forget_spare(z, r.pid)) goto garbled;
  *pid = r.pid;
  return 0;
garbled:
  err = UV_EPROTO;
unusable:
  /* gone, or out of step: nothing more can be asked of it, and what it
   * made (a worker whose answer we could not read too) is reaped now */
  tt_zygote_close(z);
  return err;
}

void tt_zygote_close(tt_zygote_t *z) {
  uint64_t deadline;
  if (z->sock < 0) return;
  /* the spare sees the end of requests and exits, the zygote sees it and
   * exits: the socket then ends, and every SPARE record is in */
  shutdown(z->sock, SHUT_WR);
  deadline = uv_hrtime() + (uint64_t)1000 * 1000000u;
  for (;;) {
    record_t r;
    int sender, k = read_record(z->sock, &r, &sender, deadline);
    if (k == UV_EPROTO) continue; /* (garbled: skipped, the rest read) */
    if (k != 0) break;
    /* (a REPLY read here is a worker nobody will hear of: it stays
     * among the spares, and is killed and reaped with them) */
    if (r.kind == RECORD_SPARE && may_name(z, &r, sender))
      (void)note_spare(z, r.pid);
  }
  close(z->sock);
  z->sock = -1;
  for (size_t i = 0; i < z->nspares; i++) {
    pid_t r;
    do r = waitpid(z->spares[i], NULL, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == 0) {
      kill(z->spares[i], SIGKILL);
      while (waitpid(z->spares[i], NULL, 0) < 0 && errno == EINTR) {
      }
    }
  }
  z->nspares = 0;
}


/* ---- a spare's warm-up ----
 *
 * A forked spare shares every page with the zygote copy-on-write: its
 * first write to each (the heap, the stack, the libraries' data) is a
 * fault that copies the page, and its first run of each code page maps
 * it.  On a virtual machine such a fault costs 10-20 us, and a worker's
 * set-up and its first Lua steps take a hundred or more of them: most of
 * its start.  The spare takes them while it waits instead: it copies the
 * pages it still shares with the zygote (present, anonymous, not yet its
 * own: /proc/self/pagemap says which) by MADV_POPULATE_WRITE, which
 * reports a page it cannot write as an error where a write would raise a
 * signal, then writes to each (an atomic add of zero, changing nothing)
 * so the machine's own tables are filled too; and it maps the code the
 * zygote has in memory (MADV_POPULATE_READ).  Its stack and the
 * libraries' data come first, then the rest, up to WARM_MAX_WRITE pages:
 * a zygote with a large heap is not copied whole into every worker (a
 * worker writes to a few hundred pages in its first steps, not to all).
 * It stops as soon as a request is waiting. */
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define WARM_MAX_WRITE 512u  /* pages copied (2 MiB) */
#define WARM_MAX_CODE 2048u  /* pages of code mapped */
#define WARM_SMALL_MAPPING ((uintptr_t)256 << 10)
#define WARM_MAX_MAPPING ((uintptr_t)1 << 30) /* (sanitizers' shadows) */
#define WARM_CHUNK 8u /* pages between looks at the socket */
#define PM_PRESENT (1ull << 63)
#define PM_FILE_OR_SHARED (1ull << 61)
#define PM_EXCLUSIVE (1ull << 56)

/* (a write that changes nothing, out of the sanitizers' sight: the page
 * is anybody's, a redzone included) */
__attribute__((no_sanitize_address, noinline)) static void touch(char *p) {
  __atomic_fetch_add(p, 0, __ATOMIC_RELAXED);
}

static int readable(int fd) {
  struct pollfd pf = {fd, POLLIN, 0};
  return poll(&pf, 1, 0) > 0;
}

/* Warms until done or a request waits for this spare: an unarmed spare
 * only looks at its link (and reads "g" there: *armed), an armed one at
 * the asker's socket. */
static int request_waiting(int sock, int link, int *armed) {
  if (!*armed) {
    char b = 0;
    if (!readable(link)) return 0;
    if (read(link, &b, 1) != 1 || b != 'g') return 1; /* (wait_armed says) */
    *armed = 1;
  }
  return readable(sock);
}

/* A spare lets WARM_DELAY_MS go by before it warms, unless a request
 * comes first (then it serves without): it is made just as the last
 * spare took a request, and warming then would take a core from that
 * new worker and from the asker, for a spare not needed yet. */
#define WARM_DELAY_MS 5

static int settle(int sock, int link, int *armed) {
  uint64_t deadline = uv_hrtime() + (uint64_t)WARM_DELAY_MS * 1000000u;
  for (;;) {
    struct pollfd pf = {*armed ? sock : link, POLLIN, 0};
    uint64_t now = uv_hrtime();
    int k;
    if (now >= deadline) return 0;
    k = poll(&pf, 1, (int)((deadline - now) / 1000000u) + 1);
    if (k < 0 && errno != EINTR) return 1;
    if (k > 0 && request_waiting(sock, link, armed)) return 1;
  }
}

typedef struct {
  int sock, link, *armed, pagemap;
  size_t page, written, mapped;
} warm_t;

/* One mapping: 0, or 1 when a request waits (stop warming). */
static int warm_mapping(warm_t *w, uintptr_t lo, uintptr_t hi, int code) {
  for (uintptr_t at = lo; at < hi;) {
    size_t n = (hi - at) / w->page, run;
    uint64_t pm[WARM_CHUNK];
    unsigned char vec[WARM_CHUNK];
    if (n > WARM_CHUNK) n = WARM_CHUNK;
    if (request_waiting(w->sock, w->link, w->armed)) return 1;
    if (code) {
      if (w->mapped >= WARM_MAX_CODE) return 0;
      if (mincore((void *)at, n * w->page, vec) != 0) return 0;
    } else {
      ssize_t want = (ssize_t)(n * sizeof *pm);
      if (w->written >= WARM_MAX_WRITE) return 0;
      if (pread(w->pagemap, pm, (size_t)want,
                (off_t)(at / w->page * sizeof *pm)) != want)
        return 0;
    }
    for (size_t i = 0; i < n; i += run) {
      char *pg = (char *)(at + i * w->page);
#define WANTED(k)                                                            \
  (code ? (vec[k] & 1) != 0                                                  \
        : (pm[k] & (PM_PRESENT | PM_FILE_OR_SHARED | PM_EXCLUSIVE)) ==       \
              PM_PRESENT)
      run = 1;
      if (!WANTED(i)) continue;
      while (i + run < n && WANTED(i + run)) run++;
#undef WANTED
      if (code) {
        (void)madvise(pg, run * w->page, MADV_POPULATE_READ);
        w->mapped += run;
      } else {
        /* (before 5.14 there is no populate: these pages are anonymous
         * and present, the write alone copies them) */
        if (madvise(pg, run * w->page, MADV_POPULATE_WRITE) == 0 ||
            errno == EINVAL)
          for (size_t k = 0; k < run; k++) touch(pg + k * w->page);
        w->written += run;
      }
    }
    at += n * w->page;
  }
  return 0;
}

static void warm(int sock, int link, int *armed) {
  char line[512];
  warm_t w = {sock, link, armed, -1, (size_t)sysconf(_SC_PAGESIZE), 0, 0};
  FILE *maps = NULL;
  if (settle(sock, link, armed)) return;
  if ((maps = fopen("/proc/self/maps", "re")) == NULL ||
      (w.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)) < 0)
    goto out;
  /* first the stack, the libraries' data and small mappings, then the
   * large ones (the heap) */
  for (int pass = 0; pass < 2; pass++) {
    rewind(maps);
    while (fgets(line, sizeof line, maps) != NULL) {
      uintptr_t lo, hi;
      char perm[5], path[256] = "";
      int writable, code, small;
      if (strchr(line, '\n') == NULL) { /* (a long path: skip its rest) */
        int ch;
        while ((ch = fgetc(maps)) != EOF && ch != '\n') {
        }
      }
      if (sscanf(line, "%lx-%lx %4s %*s %*s %*s %255s", &lo, &hi, perm,
                 path) < 3)
        continue;
      writable = perm[0] == 'r' && perm[1] == 'w' && perm[3] == 'p';
      code = perm[0] == 'r' && perm[2] == 'x' && perm[3] == 'p' &&
             path[0] == '/';
      if ((!writable && !code) || hi <= lo || hi - lo > WARM_MAX_MAPPING)
        continue;
      /* ([vvar], [vdso] and the like are the kernel's; devices and huge
       * pages are not memory to copy) */
      if ((path[0] == '[' && strcmp(path, "[heap]") != 0 &&
           strcmp(path, "[stack]") != 0) ||
          strncmp(path, "/dev/", 5) == 0 ||
          strncmp(path, "/anon_hugepage", 14) == 0)
        continue;
      small = hi - lo <= WARM_SMALL_MAPPING || path[0] == '/' ||
              strcmp(path, "[stack]") == 0;
      if ((pass == 0) != small) continue;
      if (warm_mapping(&w, lo, hi, code && !writable)) goto out;
    }
  }
out:
  if (w.pagemap >= 0) close(w.pagemap);
  if (maps != NULL) fclose(maps);
}

/* ---- the zygote ---- */

/* In the new worker: everything tt_zygote.h promises, or the error. */
static int setup(const wire_t *w, const int *fds, const char *cwd,
                 char **env) {
  sigset_t none;
  int maxt = 2, lifted[TT_ZYGOTE_MAX_FDS];
  sigemptyset(&none);
  for (int s = 1; s < NSIG; s++)
    if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
  sigprocmask(SIG_SETMASK, &none, NULL);
  if (w->new_session && setsid() < 0) return -errno;
  if (cwd[0] != '\0' && chdir(cwd) != 0) return -errno;
  for (uint32_t i = 0; i < w->nfds; i++)
    if (w->targets[i] > maxt) maxt = w->targets[i];
  /* out of the way of every target first, then into place */
  for (uint32_t i = 0; i < w->nfds; i++)
    if ((lifted[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, maxt + 1)) < 0)
      return -errno;
  for (uint32_t i = 0; i < w->nfds; i++)
    if (dup2(lifted[i], w->targets[i]) < 0) return -errno;
  /* every other descriptor of the zygote's (its loop, its socket) goes */
  for (int fd = 0; fd <= maxt; fd++) {
    int wanted = 0;
    for (uint32_t i = 0; i < w->nfds && !wanted; i++)
      wanted = w->targets[i] == fd;
    if (!wanted) close(fd);
  }
  if (syscall(SYS_close_range, (unsigned)maxt + 1, ~0u, 0) != 0) {
    for (int fd = maxt + 1; fd < 65536; fd++) close(fd);
  }
  clearenv();
  for (size_t i = 0; env[i] != NULL; i++) putenv(env[i]);
  return 0;
}

static int collides(const wire_t *w, const int *keep, size_t nkeep) {
  for (uint32_t i = 0; i < w->nfds; i++)
    for (size_t k = 0; k < nkeep; k++)
      if (keep[k] >= 0 && w->targets[i] == keep[k]) return 1;
  return 0;
}

/* The zygote keeps up to `want` spares, each joined to it by a link (a
 * socket pair): one at a time is armed (told "g" on its link: it alone
 * reads the asker's socket, so no two read parts of one request), and
 * says "c" when it has taken a request; the zygote then arms the next,
 * already warm, and forks a replacement.  A link that ends otherwise is a
 * spare dead unused: the zygote ends, and so do the others when their
 * links end (the armed one too, rather than read a request), so that the
 * socket closes and the asker spawns the usual way, instead of waiting
 * for an answer nobody may give. */
typedef struct {
  int pid;
  int link;
} spare_t;

/* Each sees the end of its link and exits (never killed: one just made
 * may not have told the asker of itself yet, and would be left a zombie
 * the asker does not know of). */
static void end_spares(spare_t *sp, size_t n) {
  for (size_t i = 0; i < n; i++) close(sp[i].link);
}

/* 0 in the zygote (sp[n] made), a negative error, or in the new spare
 * its end of the link (> 1). */
static int make_spare(int sock, spare_t *sp, size_t n) {
  int sv[2];
  long pid;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return -errno;
  /* a fork whose child is our parent's: it reaps and signals it */
  pid = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
  if (pid == 0) {
    record_t rec;
    /* the others' links are the zygote's alone: a spare sees the
     * zygote's end as the end of its link */
    for (size_t i = 0; i < n; i++) close(sp[i].link);
    close(sv[0]);
    /* it tells the asker of itself, first thing: were the zygote killed
     * between the fork and a record of its own, the asker would have a
     * child it never heard of, a zombie nobody reaps */
    memset(&rec, 0, sizeof rec);
    rec.kind = RECORD_SPARE;
    rec.pid = (int32_t)getpid();
    if (write_all(sock, (char *)&rec, sizeof rec) != 0)
      _exit(0); /* (the asker is gone; nothing of ours to flush) */
    return sv[1];
  }
  close(sv[1]);
  if (pid < 0) {
    int err = -errno;
    close(sv[0]);
    return err;
  }
  sp[n].pid = (int)pid;
  sp[n].link = sv[0];
  {
    /* ours too, before the spare is armed (so before its answer to a
     * request): were it killed before its own record, the asker would
     * not know of it.  A failed write is the asker gone: the loop sees
     * that on the socket. */
    record_t rec;
    memset(&rec, 0, sizeof rec);
    rec.kind = RECORD_SPARE;
    rec.pid = (int32_t)pid;
    (void)write_all(sock, (char *)&rec, sizeof rec);
  }
  return 0;
}

static int arm(const spare_t *s) {
  return send(s->link, "g", 1, MSG_NOSIGNAL) == 1 ? 0 : -ECHILD;
}

/* One spare is always there; the others are made again once requests
 * have paused this long: a fork of the zygote takes a core for a
 * millisecond or more (its page tables), which a burst of requests (a
 * pool starting) needs for the workers it is making. */
#define REFILL_QUIET_MS 5

int tt_zygote_serve(int sock, unsigned want) {
  spare_t sp[TT_ZYGOTE_MAX_SPARES];
  size_t n = 0;
  uint64_t last_claim = 0, quiet = (uint64_t)REFILL_QUIET_MS * 1000000u;
  int on = 1;
  /* our records and the spares' carry their writer's pid, whenever the
   * asker turned SO_PASSCRED on at its end */
  (void)setsockopt(sock, SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
  if (want < 1) want = 1;
  if (want > TT_ZYGOTE_MAX_SPARES) want = TT_ZYGOTE_MAX_SPARES;
  for (;;) {
    struct pollfd pf[TT_ZYGOTE_MAX_SPARES + 1];
    int r, timeout = -1;
    while (n < want && (n == 0 || uv_hrtime() - last_claim >= quiet)) {
      r = make_spare(sock, sp, n);
      if (r > 1) return r; /* (in the spare) */
      if (r != 0) {
        end_spares(sp, n);
        return r;
      }
      if (n++ == 0 && arm(&sp[0]) != 0) {
        end_spares(sp, n);
        return -ECHILD;
      }
    }
    if (n < want) timeout = (int)((last_claim + quiet - uv_hrtime()) / 1000000u) + 1;
    pf[0].fd = sock;
    pf[0].events = POLLRDHUP;
    for (size_t i = 0; i < n; i++) {
      pf[i + 1].fd = sp[i].link;
      pf[i + 1].events = POLLIN;
    }
    if (poll(pf, n + 1, timeout) < 0) {
      if (errno == EINTR) continue;
      r = -errno;
      end_spares(sp, n);
      return r;
    }
    /* the asker's close first: it is also why spares exit unused (each
     * sees it, or the end of its link) */
    if (pf[0].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
      end_spares(sp, n);
      return 0;
    }
    for (size_t i = 0; i < n; i++) {
      char b = 0;
      ssize_t k;
      if (pf[i + 1].revents == 0) continue;
      do k = read(sp[i].link, &b, 1);
      while (k < 0 && errno == EINTR);
      if (k != 1 || b != 'c' || i != 0) {
        end_spares(sp, n);
        return -ECHILD;
      }
      /* the armed one took a request: the next is armed at once, and a
       * replacement forked when the loop comes round (if none is left)
       * or once requests pause */
      last_claim = uv_hrtime();
      close(sp[0].link);
      memmove(&sp[0], &sp[1], (n - 1) * sizeof *sp);
      if (--n > 0 && arm(&sp[0]) != 0) {
        end_spares(sp, n);
        return -ECHILD;
      }
      break; /* (pf no longer matches sp) */
    }
  }
}

/* The armed spare waits for a request: 1, or 0 when the zygote is gone
 * (anything on the link: the zygote says nothing more to an armed spare),
 * since a request may then never be answered by anyone (or a negative
 * error). */
static int wait_request(int sock, int link) {
  for (;;) {
    struct pollfd pf[2] = {{sock, POLLIN, 0}, {link, POLLIN, 0}};
    if (poll(pf, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (pf[1].revents != 0) return 0;
    if (pf[0].revents != 0) return 1;
  }
}

/* An unarmed spare waits for its turn: 1 armed, 0 when the zygote or
 * the asker is gone (the spare should exit). */
static int wait_armed(int sock, int link) {
  for (;;) {
    struct pollfd pf[2] = {{link, POLLIN, 0}, {sock, POLLRDHUP, 0}};
    char b = 0;
    ssize_t n;
    if (poll(pf, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (pf[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) return 0;
    if (pf[0].revents != 0) {
      do n = read(link, &b, 1);
      while (n < 0 && errno == EINTR);
      return n == 1 && b == 'g' ? 1 : 0;
    }
  }
}

int tt_zygote_claim(int sock, int link, const int *keep, size_t nkeep,
                    tt_zygote_worker_t *out) {
  int armed = 0, st;
  warm(sock, link, &armed);
  if (!armed && (st = wait_armed(sock, link)) <= 0) return st;
  for (;;) {
    char cbuf[CMSG_SPACE(sizeof(int) * TT_ZYGOTE_MAX_FDS)];
    int fds[TT_ZYGOTE_MAX_FDS], nfds = 0, err = 0;
    wire_t w;
    struct msghdr m;
    struct iovec iov;
    struct cmsghdr *c;
    char *body = NULL, **args = NULL, **env = NULL, *p;
    record_t r;
    ssize_t n;
    memset(&m, 0, sizeof m);
    memset(&r, 0, sizeof r);
    iov.iov_base = &w;
    iov.iov_len = sizeof w;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    if ((st = wait_request(sock, link)) <= 0) return st;
    do n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    /* the asker is gone (ECONNRESET: it closed with our records unread) */
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return 0;
    if (n < 0) return -errno;
    for (c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k && nfds < TT_ZYGOTE_MAX_FDS; i++)
          memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      }
    if ((size_t)n < sizeof w &&
        read_all(sock, (char *)&w + n, sizeof w - (size_t)n) != 0)
      err = UV_EPROTO;
    if (err == 0 && (w.magic != MAGIC || w.body > MAX_BODY || w.argc == 0 ||
                     w.nfds != (uint32_t)nfds || (m.msg_flags & MSG_CTRUNC)))
      err = UV_EPROTO;
    if (err == 0) {
      body = malloc(w.body + 1u);
      args = calloc(w.argc + 1u, sizeof *args);
      env = calloc(w.envc + 1u, sizeof *env);
      if (body == NULL || args == NULL || env == NULL) err = UV_ENOMEM;
    }
    if (err == UV_ENOMEM) {
      /* refused, but read whole: the next request starts after it */
      char sink[4096];
      for (size_t left = w.body; left > 0 && err == UV_ENOMEM;) {
        size_t k = left < sizeof sink ? left : sizeof sink;
        if (read_all(sock, sink, k) != 0) err = UV_EPROTO;
        left -= k;
      }
    }
    if (err == 0 && read_all(sock, body, w.body) != 0) err = UV_EPROTO;
    if (err == 0) {
      body[w.body] = '\0';
      p = body + strlen(body) + 1; /* after cwd */
      for (uint32_t i = 0; i < w.argc + w.envc && err == 0; i++) {
        if (p >= body + w.body) {
          err = UV_EPROTO;
          break;
        }
        if (i < w.argc) args[i] = p;
        else env[i - w.argc] = p;
        p += strlen(p) + 1;
      }
    }
    if (err == 0 && collides(&w, keep, nkeep)) err = UV_EBUSY;
    r.kind = RECORD_REPLY;
    if (err == 0) {
      /* the answer goes at once, then the zygote makes the next spare;
       * a worker that cannot set itself up (the asker checked cwd and
       * the program already) says why on its stderr and exits 127, as a
       * failed exec does */
      r.pid = (int32_t)getpid();
      if (write_all(sock, (char *)&r, sizeof r) != 0) return 0;
      (void)!write(link, "c", 1);
      if ((st = setup(&w, fds, body, env)) < 0) {
        /* (stderr is the worker's own by now, if that step went well) */
        char msg[160];
        int k = snprintf(msg, sizeof msg,
                         "tether zygote: the worker cannot be set up: %s\n",
                         strerror(-st));
        (void)!write(2, msg, (size_t)k);
        _exit(127);
      }
      out->args = args;
      out->argc = (int)w.argc;
      free(env); /* (putenv keeps the strings, which live in body) */
      return 1;
    }
    for (int i = 0; i < nfds; i++) close(fds[i]);
    free(body);
    free(args);
    free(env);
    r.err = err;
    if (write_all(sock, (char *)&r, sizeof r) != 0) return 0;
    if (err == UV_EPROTO) return err; /* out of step with the asker */
  }
}
