/* Private helpers shared by core/ files; not installed, not for bindings. */
#ifndef TT_INTERNAL_H
#define TT_INTERNAL_H

#include <uv.h>

/* Sets (or clears) O_NONBLOCK and FD_CLOEXEC on `fd`.  0 or -errno. */
int tt__set_flags(int fd, int nonblock, int cloexec);
/* Duplicates `n` descriptors (close-on-exec, 3 or above) into a new array:
 * 0 and *out (NULL for n 0), or a negative error with none left open. */
int tt__dup_fds(const int *fds, unsigned n, int **out);
/* Closes `n` descriptors and frees their array (NULL: nothing). */
void tt__free_fds(int *fds, unsigned n);

/* uv_timer_start() with the loop's clock brought up to date first: libuv
 * counts from the time the iteration began, so a deadline armed after a
 * long callback would otherwise expire early by the callback's length. */
static inline int tt__timer_start(uv_timer_t *t, uv_timer_cb cb,
                                  uint64_t timeout, uint64_t repeat) {
  uv_update_time(t->loop);
  return uv_timer_start(t, cb, timeout, repeat);
}

#endif
