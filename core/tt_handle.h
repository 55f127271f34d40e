/*
 * tether handles: what a descriptor passed over a channel is, and the
 * listening sockets tether makes to pass (tether.listen, clusters).  Only
 * descriptors: the loop that serves them is the user's (luv, LuaSocket,
 * another language's), so nothing here touches libuv.
 */
#ifndef TT_HANDLE_H
#define TT_HANDLE_H

#include <stddef.h>

typedef enum {
  TT_HANDLE_FD = 0,      /* anything else: a file, a pipe, ... */
  TT_HANDLE_TCP_SERVER,  /* listening TCP (v4 or v6) */
  TT_HANDLE_UNIX_SERVER, /* listening AF_UNIX stream */
  TT_HANDLE_TCP,         /* connected TCP */
  TT_HANDLE_UNIX,        /* connected AF_UNIX stream */
  TT_HANDLE_UDP          /* a datagram socket of AF_INET/AF_INET6 */
} tt_handle_kind_t;

/* What `fd` is (asked of the kernel each time). */
tt_handle_kind_t tt_handle_kind(int fd);
/* "fd", "tcp-server", "unix-server", "tcp", "unix", "udp". */
const char *tt_handle_kind_name(tt_handle_kind_t k);

/* The local address of socket `fd`: for TCP and UDP the numeric host into
 * `host` and the port into *port; for AF_UNIX the path into `host` (empty
 * when unnamed) and *port -1.  0, or a negative error (UV_ENOTSOCK for a
 * descriptor that is not a socket, UV_ENOBUFS when `host` is too small). */
int tt_handle_address(int fd, char *host, size_t hostlen, int *port);

enum { TT_LISTEN_REUSEPORT = 1u << 0 /* SO_REUSEPORT before bind */ };

/* A listening socket on `address`: "tcp://HOST:PORT" (HOST an IPv4
 * address, "[IPv6]" or a name; PORT 0 picks one), or "unix:PATH".
 * `backlog` 0: 511 (libuv's and Node's).  On success *fd is non-blocking
 * and close-on-exec.  0, or a negative error: UV_EINVAL (a malformed
 * address, with no `why` beyond it), UV_EAI_NONAME and the other UV_EAI_*
 * (a name that does not resolve), UV_ENAMETOOLONG (a Unix path),
 * UV_EADDRINUSE, UV_EACCES, ...  A name is bound at the first of its
 * addresses that takes it. */
int tt_listen(const char *address, int backlog, unsigned flags, int *fd);

/* A connected socket on "unix:PATH" (blocking, close-on-exec; a local
 * connect never waits).  0, or a negative error: UV_EINVAL (not a unix:
 * address), UV_ENAMETOOLONG, UV_ENOENT / UV_ECONNREFUSED (nobody
 * listens), UV_EAGAIN (the listener's backlog is full), ... */
int tt_connect(const char *address, int *fd);

#endif /* TT_HANDLE_H */
