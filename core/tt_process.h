/*
 * tether process: spawn a program with an optional channel on fd 3
 * (TETHER_CHANNEL_FD=3 in its environment) and optional stdio pipes.
 *
 * Lifecycle, in this order: channel frames, then `on_disconnect` (once, if
 * there was a channel), then `on_exit` (the channel is read to EOF first, so
 * nothing the child sent before exiting is lost), then `on_closed` once the
 * process handle, the channel and every stdio pipe are closed.  The process
 * handle is closed only after the exit was reaped: no zombies.  A failed
 * spawn returns the error and leaves no fd open; as with uv_spawn, the caller
 * still calls tt_process_close() and frees the memory in its callback.
 *
 * On Linux >= 5.3 the child is started with posix_spawn (glibc clones with
 * CLONE_VM|CLONE_VFORK: the parent's page tables are never copied, so the
 * cost does not grow with the parent's memory) and watched through a pidfd;
 * elsewhere, or with TETHER_SPAWN=uv in our environment, with uv_spawn
 * (fork + exec).  Both give the child the same things: its stdio, the
 * channel, `pass_fds`, `env`, `cwd`, a new session if asked, every signal
 * at its default action and none blocked.
 */
#ifndef TT_PROCESS_H
#define TT_PROCESS_H

#include <stdint.h>
#include <uv.h>

#include "tt_channel.h"

/* fd number of the channel in the child. */
#define TT_CHILD_CHANNEL_FD 3

typedef enum {
  TT_STDIO_INHERIT = 0,
  TT_STDIO_PIPE,
  TT_STDIO_IGNORE,
  TT_STDIO_FILE /* stdout/stderr: opened for append; stdin: for reading */
} tt_stdio_mode_t;

typedef struct {
  const char *file;  /* program; searched in PATH when it has no slash */
  char **args;       /* argv, NULL-terminated; args[0] is the program name */
  char **env;        /* "K=V" added to (or replacing in) ours; NULL-ended */
  /* More handshake variables ("K=V", NULL-ended; tt_handshake.h), e.g. a
   * pool's TETHER_POOL_CONCURRENCY: like tether's own, set unless `env`
   * sets them (the caller wins). */
  char **handshake;
  const char *cwd;   /* NULL: ours */
  tt_stdio_mode_t stdio[3];
  const char *stdio_path[3]; /* for TT_STDIO_FILE */
  int detached;              /* new session; not killed with us */
  /* New session, yet it dies with us (the runner's parent-death watch):
   * a supervisor's workers, whom a terminal's Ctrl-C must not reach
   * directly, and who must not outlive a supervisor killed with -9. */
  int new_session;
  int channel;               /* create the channel */
  /* The child gets only its stdio, its channel and `pass_fds` (at the
   * same numbers): every other fd of ours is closed in it, as Python's
   * subprocess does (close_fds), unless `keep_fds` is set. */
  int keep_fds;
  const int *pass_fds;
  size_t pass_fds_count;
  tt_channel_options_t channel_options;
  /* Not NULL: a zygote (tt_zygote.h) that runs `file` already: the child
   * is forked from it instead of started by exec (`keep_fds` does not
   * apply: it gets only its stdio, channel and pass_fds).  When the zygote
   * is gone or closed, the child is spawned the usual way. */
  struct tt_zygote_s *zygote;
} tt_process_options_t;

typedef struct tt_process_s tt_process_t;
typedef void (*tt_process_exit_cb)(tt_process_t *p, int64_t exit_status,
                                   int term_signal);
typedef void (*tt_process_event_cb)(tt_process_t *p);
/* Output of a piped stdout (fd 1) or stderr (fd 2); n == UV_EOF at the end. */
typedef void (*tt_process_data_cb)(tt_process_t *p, int fd, const char *buf,
                                   ssize_t n);

struct tt_process_s {
  void *data; /* owner's */
  /* Set by the owner right after spawn; the channel's on_frame, on_error and
   * on_drain are set on `channel` directly. */
  tt_process_exit_cb on_exit;
  tt_process_event_cb on_disconnect;
  tt_process_event_cb on_closed;
  tt_process_data_cb on_data;
  /* A piped stdin that reported backpressure has room again. */
  tt_process_event_cb on_stdin_drain;
  tt_channel_t *channel; /* NULL without a channel */
  int pid;
  int64_t exit_status;
  int term_signal;

  /* private */
  unsigned flags;
  int open_handles;
  uv_loop_t *loop;
  union {
    uv_process_t proc;    /* uv_spawn's child */
    uv_poll_t pidfd_poll; /* posix_spawn's child: its pidfd, readable at exit */
    uv_timer_t unused;    /* a failed spawn: closed at once */
  } h;
  int pidfd;
  uv_pipe_t pipes[3];
  tt_channel_t channel_storage;
  tt_process_event_cb close_cb;
};

int tt_process_spawn(uv_loop_t *loop, tt_process_t *p,
                     const tt_process_options_t *opts);
/* Why tt_process_spawn(opts) failed with `err`, naming what is missing
 * (a stdio file, the cwd, the program, a pass_fds descriptor), written to
 * buf (always NUL-ended) and returned. */
const char *tt_process_spawn_error(const tt_process_options_t *opts, int err,
                                   char *buf, size_t size);
/* UV_ESRCH once the exit was seen: a reaped pid is never signalled. */
int tt_process_kill(tt_process_t *p, int signum);
/* The same to the child's whole process group when it leads one (spawned
 * in a new session), so what it started goes too; else as
 * tt_process_kill. */
int tt_process_kill_group(tt_process_t *p, int signum);
/* Piped stdin: queue bytes (copied): 1 while what waits is under
 * TT_STDIN_HIGH_WATER, 0 over it (still queued: wait for
 * on_stdin_drain), or a negative error (UV_EPIPE once ended).  / End it:
 * the child reads everything queued before, then EOF; the pipe closes
 * once that is written (or the child is gone). */
int tt_process_stdin_write(tt_process_t *p, const char *buf, size_t len);
int tt_process_stdin_end(tt_process_t *p);
int tt_process_has_exited(const tt_process_t *p);
/* Whether `zygote_fd` can be used here: children are watched through
 * pidfds (Linux >= 5.3, not under valgrind, not TETHER_SPAWN=uv). */
int tt_process_can_prefork(void);
/* Whether waiting for the exit keeps the loop alive (it does by default);
 * e.g. a zygote, which lives as long as its asker and no longer. */
void tt_process_ref(tt_process_t *p, int on);
/* Resident set size of process `pid` in bytes (Linux /proc); 0 when it is
 * unknown (no such process, or no /proc). */
uint64_t tt_process_rss(int pid);
/* Idempotent.  Does not kill: the memory is released (cb) once the child
 * has exited and every handle is closed. */
void tt_process_close(tt_process_t *p, tt_process_event_cb cb);

/* Closes everything now without waiting for the exit: the child is no
 * longer watched (it is reaped by init once we exit).  Only for tearing the
 * whole loop down; `cb` as for tt_process_close. */
void tt_process_abandon(tt_process_t *p, tt_process_event_cb cb);

/* "SIGTERM" <-> 15.  0 / NULL when unknown. */
int tt_signal_number(const char *name);
const char *tt_signal_name(int signum);

/* In a child: arrange for the kernel to signal us when the parent dies
 * (PR_SET_PDEATHSIG), ending the process within `grace_ms` unless the loop
 * exits first.  on == 0 disarms it.  No-op off Linux. */
int tt_process_watch_parent(int on, int grace_ms);

/* In a child: whether the parent that started us is still our parent (it
 * has not died).  0 when we were not started by tether. */
int tt_process_parent_alive(void);

#endif /* TT_PROCESS_H */
