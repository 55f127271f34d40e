/*
 * sd_notify: see tt_notify.h.
 *
 * The address length counts the name only (no trailing NUL) for abstract
 * sockets, whose names may hold any byte and are not NUL-terminated;
 * a path gets the usual offsetof + strlen + 1.
 */
#include "tt_notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int tt_sd_notify(const char *state) {
  const char *name = getenv("NOTIFY_SOCKET");
  struct sockaddr_un sa;
  socklen_t salen;
  size_t len;
  ssize_t n;
  int fd, err = 0;

  if (state == NULL) return -EINVAL;
  if (name == NULL || name[0] == '\0') return 0;
  if (name[0] != '/' && name[0] != '@') return -EINVAL;
  len = strlen(name);
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (name[0] == '@') {
    if (len > sizeof sa.sun_path) return -ENAMETOOLONG;
    sa.sun_path[0] = '\0'; /* abstract namespace */
    memcpy(sa.sun_path + 1, name + 1, len - 1);
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  } else {
    if (len >= sizeof sa.sun_path) return -ENAMETOOLONG;
    memcpy(sa.sun_path, name, len);
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
  }
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -errno;
  do
    n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
               salen);
  while (n < 0 && errno == EINTR);
  if (n < 0) err = -errno;
  close(fd);
  if (err == -EWOULDBLOCK) err = -EAGAIN;
  return err != 0 ? err : 1;
}
