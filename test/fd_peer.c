/* A hostile peer for the buffer specs (spec/buffer_spec.lua): writes on
 * fd 3 one native frame whose value is a BUFFER tag of 4096 bytes, with
 * descriptors as MODE says, then waits for EOF.
 *   good      a sealed memfd of 4096 bytes starting "ok"
 *   none      no descriptor
 *   pipe      a pipe's end
 *   unsealed  a memfd of 4096 bytes, not sealed
 *   short     a sealed memfd of 4095 bytes
 *   twotags   a table holding two BUFFER tags, one descriptor
 *   two       a table holding two BUFFER tags, two good memfds
 *   fewer     the same tags, a header that says two descriptors, and one
 *   extra     one BUFFER tag, two good memfds (the second is left over)
 * With a second argument "reply", the frame is the REPLY to the first
 * REQUEST read from fd 3 (same id) instead of a MESSAGE. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "peer_util.h"

#define SIZE 4096

static int memfd(size_t size, int seal) {
  int fd = memfd_create("peer", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || ftruncate(fd, (off_t)size) != 0) return -1;
  if (write(fd, "ok", 2) != 2) return -1;
  if (seal &&
      fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW) != 0)
    return -1;
  return fd;
}

/* Reads a whole frame's header (and skips its payload): 0, or -1 at EOF. */
static int read_request(unsigned char head[12]) {
  char skip[4096];
  size_t got = 0, len;
  while (got < 12) {
    ssize_t n = read(3, head + got, 12 - got);
    if (n <= 0) return -1;
    got += (size_t)n;
  }
  len = head[0] | (size_t)head[1] << 8 | (size_t)head[2] << 16 |
        (size_t)head[3] << 24;
  while (len > 0) {
    ssize_t n = read(3, skip, len < sizeof skip ? len : sizeof skip);
    if (n <= 0) return -1;
    len -= (size_t)n;
  }
  return 0;
}

static int is(const char *mode, const char *name) {
  return strcmp(mode, name) == 0;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "good";
  int reply = argc > 2 && strcmp(argv[2], "reply") == 0;
  unsigned char frame[64], *p = frame + 12, req[12];
  int fds[2], nfds = 0, said, pp[2];
  size_t len;
  char buf[256];
  if (reply && read_request(req) != 0) return 1;
  /* the value: 0x08 varint(4096) = 08 80 20; or {buf, buf}: 06 02 00 ... */
  if (is(mode, "twotags") || is(mode, "two") || is(mode, "fewer")) {
    *p++ = 0x06, *p++ = 0x02, *p++ = 0x00;
    *p++ = 0x08, *p++ = 0x80, *p++ = 0x20;
  }
  *p++ = 0x08, *p++ = 0x80, *p++ = 0x20;
  len = (size_t)(p - frame) - 12;
  frame[0] = (unsigned char)len, frame[1] = frame[2] = frame[3] = 0;
  frame[4] = 1 /* version */, frame[5] = reply ? 3 /* REPLY */ : 1;
  frame[6] = frame[7] = 0; /* flags: the descriptors' below */
  if (reply)
    memcpy(frame + 8, req + 8, 4);
  else
    memset(frame + 8, 0, 4);
  if (is(mode, "good") || is(mode, "twotags") || is(mode, "fewer"))
    fds[nfds++] = memfd(SIZE, 1);
  else if (is(mode, "two") || is(mode, "extra"))
    fds[nfds++] = memfd(SIZE, 1), fds[nfds++] = memfd(SIZE, 1);
  else if (is(mode, "unsealed"))
    fds[nfds++] = memfd(SIZE, 0);
  else if (is(mode, "short"))
    fds[nfds++] = memfd(SIZE - 1, 1);
  else if (is(mode, "pipe") && pipe(pp) == 0)
    fds[nfds++] = pp[0];
  said = is(mode, "fewer") ? 2 : nfds;
  /* TT_FRAME_F_HANDLE, and how many more than one in bits 8-11 */
  if (said > 0) frame[6] = 1, frame[7] = (unsigned char)(said - 1);
  if (tt_test_sendmsg_fds(3, frame, 12 + len, fds, nfds, 0) !=
      (ssize_t)(12 + len)) {
    perror("fd_peer: sendmsg");
    return 1;
  }
  while (read(3, buf, sizeof buf) > 0) {
  }
  return 0;
}
