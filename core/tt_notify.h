/*
 * tether sd_notify: tells a service manager (systemd, or anything that
 * speaks its notify protocol) about the service's state, e.g. "READY=1",
 * "STOPPING=1", "WATCHDOG=1", "STATUS=2 workers running".
 *
 * The manager names its socket in NOTIFY_SOCKET: a filesystem path, or an
 * abstract socket when it begins with '@'.  The state goes as one datagram
 * on an AF_UNIX SOCK_DGRAM socket made for the call (close-on-exec,
 * non-blocking: a manager that does not read never blocks the loop) and
 * closed after.  No library needed, as systemd documents the protocol for
 * this very purpose.
 */
#ifndef TT_NOTIFY_H
#define TT_NOTIFY_H

/* 1 when sent, 0 when NOTIFY_SOCKET is unset (or empty): not under a
 * manager, nothing to do; or a negative error: UV_EINVAL (state NULL, or
 * NOTIFY_SOCKET neither a path nor '@'), UV_ENAMETOOLONG (the socket's
 * name does not fit in sun_path), UV_EAGAIN (the manager's queue is
 * full), or what socket()/sendto() said. */
int tt_sd_notify(const char *state);

#endif /* TT_NOTIFY_H */
