/* Line framing for Node.js peers: see tt_lines.h. */
#include "tt_lines.h"

#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "tt_error.h"

static const struct {
  unsigned kind;
  const char *key, *field; /* {"<key>":<id>,"<field>":<json>} */
} envelopes[] = {
    {TT_FRAME_REQUEST, "{\"cmd\":\"TETHER_REQUEST\",\"id\":", ",\"task\":"},
    {TT_FRAME_REPLY, "{\"cmd\":\"TETHER_REPLY\",\"id\":", ",\"result\":"},
    {TT_FRAME_FAULT, "{\"cmd\":\"TETHER_FAULT\",\"id\":", ",\"error\":"},
};

static int is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r';
}

int tt_lines_parse(const char *line, size_t n, tt_frame_header_t *h,
                   const char **payload, const char **why) {
  memset(h, 0, sizeof *h);
  h->version = TT_FRAME_VERSION;
  while (n > 0 && is_space(line[n - 1])) n--; /* "\r\n" from some peers */
  if (n == 0) {
    *why = "empty line";
    return TT_ERR_IPC_PROTOCOL;
  }
  h->kind = TT_FRAME_MESSAGE;
  h->len = (uint32_t)n;
  *payload = line;
  for (size_t e = 0; e < sizeof envelopes / sizeof envelopes[0]; e++) {
    size_t kl = strlen(envelopes[e].key), fl = strlen(envelopes[e].field);
    size_t i = kl;
    uint64_t id = 0;
    if (n < kl || memcmp(line, envelopes[e].key, kl) != 0) continue;
    while (i < n && i - kl < 10 && line[i] >= '0' && line[i] <= '9')
      id = id * 10 + (uint64_t)(line[i++] - '0');
    if (i == kl || id == 0 || id > UINT32_MAX) break;
    if (n - i < fl + 2 || memcmp(line + i, envelopes[e].field, fl) != 0 ||
        line[n - 1] != '}')
      break; /* not ours after all: an ordinary message */
    h->kind = (uint8_t)envelopes[e].kind;
    h->id = (uint32_t)id;
    *payload = line + i + fl;
    h->len = (uint32_t)(n - 1 - (i + fl));
    break;
  }
  return 0;
}

int tt_lines_pack(unsigned kind, uint32_t id, char *head, size_t *head_len,
                  char *tail, size_t *tail_len) {
  if (kind == TT_FRAME_MESSAGE) {
    *head_len = 0;
    tail[0] = '\n';
    *tail_len = 1;
    return 0;
  }
  for (size_t e = 0; e < sizeof envelopes / sizeof envelopes[0]; e++) {
    if (envelopes[e].kind != kind) continue;
    *head_len = (size_t)snprintf(head, TT_LINES_HEAD_MAX, "%s%u%s",
                                 envelopes[e].key, (unsigned)id,
                                 envelopes[e].field);
    tail[0] = '}';
    tail[1] = '\n';
    *tail_len = 2;
    return 0;
  }
  return UV_EINVAL; /* heartbeats and runner control have no line form */
}

size_t tt_lines_overhead(unsigned kind) {
  char head[TT_LINES_HEAD_MAX], tail[2];
  size_t hl = 0, tl = 0;
  if (tt_lines_pack(kind, UINT32_MAX, head, &hl, tail, &tl) != 0) return 0;
  return hl + tl - 1;
}
