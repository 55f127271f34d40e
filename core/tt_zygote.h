/*
 * tether zygote: a warmed process (an interpreter that has loaded tether and
 * the user's modules) that makes workers on request by forking itself,
 * without exec, so a worker is ready in about the time of a fork of a small
 * process instead of an interpreter start and its `require`s.
 *
 * The worker is made with clone(CLONE_PARENT): it is the child of the
 * process that asked (the zygote's parent), not of the zygote, so the
 * asker reaps it, gets its exit status and signals it exactly as a child
 * it spawned itself (tt_process.h watches it through a pidfd).
 *
 * The asker sends one request on a stream socket: the worker's argv, its
 * whole environment, cwd, whether it gets a new session, and the
 * descriptors it must find at given numbers (stdio, the channel,
 * pass_fds) in an SCM_RIGHTS message.  The zygote answers with the pid,
 * once the worker has set itself up (its descriptors in place, every other
 * one closed, cwd, session, signals at their defaults and unblocked, the
 * environment replaced), or with the error that stopped it.
 *
 * What a worker made this way does not get, unlike one started by exec:
 * a fresh address-space layout (it shares the zygote's, ASLR included),
 * fresh module state (what the preloaded modules did at load time is
 * there, copied), and the interpreter's start-up options; its random
 * seeds are the binding's to renew.
 */
#ifndef TT_ZYGOTE_H
#define TT_ZYGOTE_H

#include <stddef.h>

#define TT_ZYGOTE_MAX_FDS 64

typedef struct {
  char **args;      /* argv, NULL-ended */
  char **env;       /* the whole environment, "K=V", NULL-ended */
  const char *cwd;  /* NULL: the zygote's */
  int new_session;
  /* fds[i] (ours) is found at targets[i] in the worker */
  const int *fds;
  const int *targets;
  size_t nfds;
} tt_zygote_request_t;

/* The asker's side: sends `req` on `sock` (a blocking stream socket to the
 * zygote) and waits for the answer.  0 and *pid, or a negative error: the
 * worker's own (UV_ENOENT for a missing cwd, ...), UV_EINVAL for a request
 * that cannot be sent (too many descriptors, too long), UV_EPIPE /
 * UV_ECONNRESET / UV_EPROTO when the zygote is gone or garbled: the
 * caller then spawns the usual way. */
int tt_zygote_request(int sock, const tt_zygote_request_t *req, int *pid);

/* What tt_zygote_serve() gives the new worker: argv (NULL-ended, and
 * argc), allocated and its to keep. */
typedef struct {
  char **args;
  int argc;
} tt_zygote_worker_t;

/* The zygote's side: serves requests on `sock` until its peer closes it.
 * `keep` are descriptors the worker's runtime will still close or use at
 * their numbers after the fork (its event loop's, to be renewed): a
 * request that would put a descriptor there is refused (UV_EBUSY: the
 * asker spawns the usual way).
 * Returns 0 in the zygote at the end (it should exit), a negative error
 * if serving failed, and 1 in each new worker, with *out filled: the
 * worker goes on from there (its loop must be told it forked). */
int tt_zygote_serve(int sock, const int *keep, size_t nkeep,
                    tt_zygote_worker_t *out);

#endif /* TT_ZYGOTE_H */
