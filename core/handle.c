/* Handles: see tt_handle.h. */
#include "tt_handle.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "internal.h"

#define TT_LISTEN_DEFAULT_BACKLOG 511

tt_handle_kind_t tt_handle_kind(int fd) {
  int domain = 0, type = 0, listening = 0;
  socklen_t n = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &n) != 0)
    return TT_HANDLE_FD;
  n = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &n) != 0) return TT_HANDLE_FD;
  n = sizeof listening;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &n) != 0)
    listening = 0;
  if (domain == AF_INET || domain == AF_INET6) {
    if (type == SOCK_DGRAM) return TT_HANDLE_UDP;
    if (type == SOCK_STREAM)
      return listening ? TT_HANDLE_TCP_SERVER : TT_HANDLE_TCP;
  } else if (domain == AF_UNIX && type == SOCK_STREAM) {
    return listening ? TT_HANDLE_UNIX_SERVER : TT_HANDLE_UNIX;
  }
  return TT_HANDLE_FD;
}

const char *tt_handle_kind_name(tt_handle_kind_t k) {
  static const char *const names[] = {"fd",  "tcp-server", "unix-server",
                                      "tcp", "unix",       "udp"};
  return (unsigned)k <= TT_HANDLE_UDP ? names[k] : "fd";
}

int tt_handle_address(int fd, char *host, size_t hostlen, int *port) {
  struct sockaddr_storage ss;
  socklen_t n = sizeof ss;
  memset(&ss, 0, sizeof ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &n) != 0) return -errno;
  if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
    const void *a = ss.ss_family == AF_INET
                        ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
                        : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
    if (inet_ntop(ss.ss_family, a, host, (socklen_t)hostlen) == NULL)
      return -errno;
    *port = ntohs(ss.ss_family == AF_INET
                      ? ((struct sockaddr_in *)&ss)->sin_port
                      : ((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
  }
  if (ss.ss_family == AF_UNIX) {
    struct sockaddr_un *un = (struct sockaddr_un *)&ss;
    size_t len = n > offsetof(struct sockaddr_un, sun_path)
                     ? strnlen(un->sun_path, n - offsetof(struct sockaddr_un,
                                                          sun_path))
                     : 0;
    if (len >= hostlen) return UV_ENOBUFS;
    memcpy(host, un->sun_path, len);
    host[len] = '\0';
    *port = -1;
    return 0;
  }
  return UV_ENOTSOCK;
}

/* Binds and listens `s`; closes it on failure. */
static int bind_listen(int s, const struct sockaddr *sa, socklen_t len,
                       int backlog, unsigned flags, int *fd) {
  int on = 1, err = 0;
  if (sa->sa_family != AF_UNIX &&
      setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0)
    err = -errno;
  if (err == 0 && (flags & TT_LISTEN_REUSEPORT) &&
      setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0)
    err = -errno;
  if (err == 0 && bind(s, sa, len) != 0) err = -errno;
  if (err == 0 && listen(s, backlog > 0 ? backlog : TT_LISTEN_DEFAULT_BACKLOG))
    err = -errno;
  if (err != 0) {
    close(s);
    return err;
  }
  *fd = s;
  return 0;
}

/* sockaddr_un for `path`: 0, or UV_EINVAL / UV_ENAMETOOLONG. */
static int unix_address(const char *path, struct sockaddr_un *un,
                        socklen_t *len) {
  size_t n = strlen(path);
  if (n == 0) return UV_EINVAL;
  if (n >= sizeof un->sun_path) return UV_ENAMETOOLONG;
  memset(un, 0, sizeof *un);
  un->sun_family = AF_UNIX;
  memcpy(un->sun_path, path, n);
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
  return 0;
}

static int listen_unix(const char *path, int backlog, unsigned flags,
                       int *fd) {
  struct sockaddr_un un;
  socklen_t len;
  int s, err;
  if ((err = unix_address(path, &un, &len)) != 0) return err;
  s = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  return bind_listen(s, (struct sockaddr *)&un, len, backlog, flags, fd);
}

/* getaddrinfo's failure as libuv names it. */
static int resolve_error(int rc) {
  switch (rc) {
  case EAI_SYSTEM: return -errno;
  case EAI_MEMORY: return UV_ENOMEM;
  case EAI_AGAIN: return UV_EAI_AGAIN;
  case EAI_NONAME: return UV_EAI_NONAME;
  case EAI_FAMILY: return UV_EAI_FAMILY;
  case EAI_SERVICE: return UV_EAI_SERVICE;
  default: return UV_EAI_FAIL;
  }
}

static int listen_tcp(const char *hostport, int backlog, unsigned flags,
                      int *fd) {
  char host[256];
  const char *colon, *port;
  size_t hl;
  struct addrinfo hints, *res = NULL;
  int s, rc;
  if (hostport[0] == '[') { /* [v6]:port */
    const char *close_br = strchr(hostport, ']');
    if (close_br == NULL || close_br[1] != ':') return UV_EINVAL;
    hl = (size_t)(close_br - hostport - 1);
    if (hl == 0 || hl >= sizeof host) return UV_EINVAL; /* "[]" is no host */
    memcpy(host, hostport + 1, hl);
    port = close_br + 2;
  } else {
    if ((colon = strrchr(hostport, ':')) == NULL) return UV_EINVAL;
    hl = (size_t)(colon - hostport);
    if (hl >= sizeof host || memchr(hostport, ':', hl) != NULL)
      return UV_EINVAL; /* a bare IPv6 address must be in brackets */
    memcpy(host, hostport, hl);
    port = colon + 1;
  }
  host[hl] = '\0';
  if (*port == '\0' || strspn(port, "0123456789") != strlen(port) ||
      strtol(port, NULL, 10) > 65535)
    return UV_EINVAL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  rc = getaddrinfo(hl ? host : NULL, port, &hints, &res);
  if (rc != 0) return resolve_error(rc);
  /* the first address that binds (a name may resolve to several) */
  rc = UV_EADDRNOTAVAIL;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    s = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0) {
      rc = -errno;
      continue;
    }
    if ((rc = bind_listen(s, ai->ai_addr, ai->ai_addrlen, backlog, flags,
                          fd)) == 0)
      break;
  }
  freeaddrinfo(res);
  return rc;
}

int tt_connect(const char *address, int *fd) {
  struct sockaddr_un un;
  socklen_t len;
  int s, err;
  if (strncmp(address, "unix:", 5) != 0) return UV_EINVAL;
  if ((err = unix_address(address + 5, &un, &len)) != 0) return err;
  s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  /* blocking: a local connect completes or fails at once (EAGAIN only
   * when the server's backlog is full, said as such) */
  if (connect(s, (struct sockaddr *)&un, len) != 0) {
    err = -errno;
    close(s);
    return err;
  }
  *fd = s;
  return 0;
}

int tt_listen(const char *address, int backlog, unsigned flags, int *fd) {
  if (strncmp(address, "tcp://", 6) == 0)
    return listen_tcp(address + 6, backlog, flags, fd);
  if (strncmp(address, "unix:", 5) == 0)
    return listen_unix(address + 5, backlog, flags, fd);
  return UV_EINVAL;
}
