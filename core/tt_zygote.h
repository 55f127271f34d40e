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
 * The zygote keeps spares ready: workers already forked (and warmed by
 * their runtime: random seeds, compiled runner) that wait for a request, so
 * a request costs no fork on the asker's clock.  A spare also takes, while
 * it waits, the copy-on-write faults a worker would take in its first
 * steps (its pages of the zygote's heap, stack and data written once,
 * code mapped), which on a virtual machine are most of a worker's start.
 * One spare at a time is armed and reads the next request; once it has
 * taken one, the zygote arms the next and forks a replacement.  Spares
 * are made with clone(CLONE_PARENT) too: each is the asker's child from
 * its birth, and tells the asker its pid (a SPARE record), so that a
 * spare never used is reaped by tt_zygote_close(), not left a zombie.
 * The zygote writes that record too, once clone() returns: a spare
 * killed before its own record is still known (only both killed within
 * those few system calls would leave a zombie).
 *
 * The asker sends one request on a stream socket: the worker's argv, its
 * whole environment, cwd, whether it gets a new session, and the
 * descriptors it must find at given numbers (stdio, the channel,
 * pass_fds) in an SCM_RIGHTS message.  The spare answers with its pid
 * (a REPLY record), or with the error that keeps it from serving this
 * request (it then waits for the next); it then sets itself up (its
 * descriptors in place, every other one closed, cwd, session, signals at
 * their defaults and unblocked, the environment replaced), or says why
 * not on its stderr and exits 127, as a failed exec does.  A spare that
 * dies unused ends the zygote and its other spares: the asker exec's from
 * then on.
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

/* The asker's end of a zygote: its socket (blocking), and the spares the
 * zygote said it made, which are our children until one serves. */
#define TT_ZYGOTE_MAX_SPARES 64
#define TT_ZYGOTE_TIMEOUT_MS 5000
typedef struct tt_zygote_s {
  int sock; /* -1 once closed */
  int spares[TT_ZYGOTE_MAX_SPARES];
  size_t nspares;
  /* how long a request waits for its answer (a spare stopped, or stuck)
   * before the zygote is given up: TT_ZYGOTE_TIMEOUT_MS */
  unsigned timeout_ms;
  /* the zygote's pid (0: not known): its records may name the spares it
   * makes, where any other writer may name only itself */
  int zygote_pid;
} tt_zygote_t;

/* Takes `sock`, a connected stream socket to the zygote, and asks the
 * kernel to name the sender of everything read from it (SO_PASSCRED):
 * a record naming a spare must come from that spare.  Call it before the
 * other end is written to (what was written before carries no name). */
void tt_zygote_init(tt_zygote_t *z, int sock);

/* Says which process the zygote is (the asker started it), so that its
 * records of the spares it made are believed.  Before the first
 * request. */
void tt_zygote_set_pid(tt_zygote_t *z, int zygote_pid);

/* Sends `req` and waits for the answer.  0 and *pid, or a negative error:
 * the worker's own (UV_EBUSY: a target descriptor the zygote's loop
 * holds), UV_EINVAL for a request that cannot be sent (too many
 * descriptors, too long), UV_ENOMEM (the spare could not take it),
 * UV_EBADF once closed, UV_EPIPE / UV_ECONNRESET / UV_EPROTO /
 * UV_ETIMEDOUT when the zygote is gone, garbled or not answering: it is
 * then closed (tt_zygote_close: what it made is reaped) and the caller
 * spawns the usual way. */
int tt_zygote_request(tt_zygote_t *z, const tt_zygote_request_t *req,
                      int *pid);

/* Closes the socket (the zygote and its spare exit when they see it),
 * then reaps every spare never used, waiting up to about a second for
 * them to go before killing them.  Idempotent. */
void tt_zygote_close(tt_zygote_t *z);

/* What tt_zygote_claim() gives the new worker: argv (NULL-ended, and
 * argc), allocated and its to keep. */
typedef struct {
  char **args;
  int argc;
} tt_zygote_worker_t;

/* The zygote's side: keeps `spares` spares (1 to TT_ZYGOTE_MAX_SPARES)
 * for the asker on `sock` until the asker closes it.  Returns 0 in the
 * zygote at the end (it should exit), a negative error if serving failed
 * (-ECHILD: a spare died unused; out of processes), and, in each new
 * spare, its link to the zygote (> 1), for tt_zygote_claim(). */
int tt_zygote_serve(int sock, unsigned spares);

/* In a spare: warms itself, waits for its turn (`link`) and for a
 * request on `sock`, and becomes its worker.
 * `keep` are descriptors the worker's runtime will still close or use at
 * their numbers (its event loop's, to be renewed): a request that would
 * put a descriptor there is refused (UV_EBUSY: the asker spawns the usual
 * way) and the spare waits for the next.  Returns 1 in the worker, set
 * up, with *out filled (its loop must be told it forked), 0 when the
 * asker is gone (the spare should exit), or a negative error. */
int tt_zygote_claim(int sock, int link, const int *keep, size_t nkeep,
                    tt_zygote_worker_t *out);

#endif /* TT_ZYGOTE_H */
