/*
 * notify_listen PATH TIMEOUT_MS: a stand-in for systemd's notify socket,
 * for the specs of `tether run` (and tt_sd_notify's own checks).
 *
 * Binds an AF_UNIX datagram socket at PATH (an abstract name when it
 * begins with '@'; a stale file at PATH is replaced) and prints each
 * datagram received on stdout followed by a newline, flushed at once (a
 * datagram holding several "K=V\n" assignments prints as several lines).
 * Exits 0 after a datagram containing "STOPPING=1", 2 when TIMEOUT_MS
 * pass (counted from the start) without one, 1 on a usage or socket
 * error.  The socket file exists from the moment it is bound: a caller
 * waits for it before starting the notifier.  The file is removed on exit.
 */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
  struct sockaddr_un sa;
  socklen_t salen;
  const char *path;
  size_t len;
  long long deadline;
  int fd, abstract, status = 2;
  static char buf[65536];

  if (argc != 3) {
    fprintf(stderr, "usage: %s PATH TIMEOUT_MS\n", argv[0]);
    return 1;
  }
  path = argv[1];
  len = strlen(path);
  abstract = path[0] == '@';
  deadline = now_ms() + atoll(argv[2]);
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (len == 0 || len >= sizeof sa.sun_path) {
    fprintf(stderr, "notify_listen: bad path length\n");
    return 1;
  }
  memcpy(sa.sun_path, path, len);
  if (abstract) sa.sun_path[0] = '\0';
  salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
                      (abstract ? 0 : 1));
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("notify_listen: socket");
    return 1;
  }
  if (!abstract) unlink(path);
  if (bind(fd, (struct sockaddr *)&sa, salen) != 0) {
    perror("notify_listen: bind");
    return 1;
  }
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    long long left = deadline - now_ms();
    ssize_t n;
    int r;
    if (left <= 0) break;
    r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      perror("notify_listen: poll");
      status = 1;
      break;
    }
    if (r == 0) continue;
    n = recv(fd, buf, sizeof buf - 1, 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      perror("notify_listen: recv");
      status = 1;
      break;
    }
    buf[n] = '\0';
    fwrite(buf, 1, (size_t)n, stdout);
    if (n == 0 || buf[n - 1] != '\n') fputc('\n', stdout);
    fflush(stdout);
    if (memmem(buf, (size_t)n, "STOPPING=1", 10) != NULL) {
      status = 0;
      break;
    }
  }
  close(fd);
  if (!abstract) unlink(path);
  return status;
}
