/*
 * tether lock files: one process at a time may hold a path's lock (the
 * `tether` command's daemon holds its directory's, so two clients that
 * both found no daemon cannot start two).  The kernel drops the lock when
 * the holder exits, however it exits, so a stale lock cannot exist.
 */
#ifndef TT_LOCKFILE_H
#define TT_LOCKFILE_H

/* Opens (creating, mode 0600) and locks `path` without waiting; *fd holds
 * the lock until closed (close-on-exec: workers do not inherit it).  0,
 * UV_EAGAIN when another process holds it, or another negative error. */
int tt_lockfile_acquire(const char *path, int *fd);

#endif /* TT_LOCKFILE_H */
