/* A hostile peer for the buffer specs (spec/buffer_spec.lua): writes on
 * fd 3 one native MESSAGE frame whose value is a BUFFER tag of 4096
 * bytes, with a descriptor as MODE says, then waits for EOF.
 *   good      a sealed memfd of 4096 bytes starting "ok"
 *   none      no descriptor
 *   pipe      a pipe's end
 *   unsealed  a memfd of 4096 bytes, not sealed
 *   short     a sealed memfd of 4095 bytes
 *   twotags   a table holding two BUFFER tags, one descriptor */
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

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "good";
  unsigned char frame[64], *p = frame + 12;
  int fd = -1, pp[2];
  size_t len;
  char buf[256];
  /* the value: 0x08 varint(4096) = 08 80 20; or {buf, buf}: 06 02 00 ... */
  if (strcmp(mode, "twotags") == 0) {
    *p++ = 0x06, *p++ = 0x02, *p++ = 0x00;
    *p++ = 0x08, *p++ = 0x80, *p++ = 0x20;
  }
  *p++ = 0x08, *p++ = 0x80, *p++ = 0x20;
  len = (size_t)(p - frame) - 12;
  frame[0] = (unsigned char)len, frame[1] = frame[2] = frame[3] = 0;
  frame[4] = 1 /* version */, frame[5] = 1 /* MESSAGE */;
  frame[6] = frame[7] = 0; /* flags: the descriptor's below */
  memset(frame + 8, 0, 4);
  if (strcmp(mode, "good") == 0 || strcmp(mode, "twotags") == 0)
    fd = memfd(SIZE, 1);
  else if (strcmp(mode, "unsealed") == 0)
    fd = memfd(SIZE, 0);
  else if (strcmp(mode, "short") == 0)
    fd = memfd(SIZE - 1, 1);
  else if (strcmp(mode, "pipe") == 0 && pipe(pp) == 0)
    fd = pp[0];
  if (fd >= 0) frame[6] = 1; /* TT_FRAME_F_HANDLE: a descriptor comes */
  if (tt_test_sendmsg_fd(3, frame, 12 + len, fd, 0) != (ssize_t)(12 + len)) {
    perror("fd_peer: sendmsg");
    return 1;
  }
  while (read(3, buf, sizeof buf) > 0) {
  }
  return 0;
}
