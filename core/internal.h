/* Private helpers shared by core/ files; not installed, not for bindings. */
#ifndef TT_INTERNAL_H
#define TT_INTERNAL_H

/* Sets (or clears) O_NONBLOCK and FD_CLOEXEC on `fd`.  0 or -errno. */
int tt__set_flags(int fd, int nonblock, int cloexec);

#endif
