/*
 * tether line framing: Node.js's IPC wire format in its default "json"
 * serialization, one JSON text per line, each ended by "\n" (see
 * PROTOCOL.md, "JSON mode").  There is no header: a line is a MESSAGE,
 * unless it is one of tether's request/response envelopes, recognised by
 * their exact prefix (which Node's JSON.stringify preserves, as it keeps
 * the order of an object's keys).  Like Node's own internal messages
 * ({"cmd":"NODE_..."}) they carry a `cmd` marker that no user message
 * carries by accident:
 *
 *   {"cmd":"TETHER_REQUEST","id":<id>,"task":<json>}    REQUEST
 *   {"cmd":"TETHER_REPLY","id":<id>,"result":<json>}    REPLY
 *   {"cmd":"TETHER_FAULT","id":<id>,"error":<json>}     FAULT
 *
 * so tether's call/handle and pools work with a Node peer that uses the
 * same envelopes.  The payload handed on is the <json> text, unparsed: JSON
 * itself is the binding's business.
 */
#ifndef TT_LINES_H
#define TT_LINES_H

#include <stddef.h>
#include <stdint.h>

#include "tt_frame.h"

/* Longest envelope prefix, with a 10-digit id. */
#define TT_LINES_HEAD_MAX 64

/* Classifies one line (without its "\n"): fills `h` (kind, id, len) and
 * points `*payload` at the JSON text to decode.  TT_ERR_IPC_PROTOCOL with
 * `*why` for a blank line. */
int tt_lines_parse(const char *line, size_t n, tt_frame_header_t *h,
                   const char **payload, const char **why);

/* What goes around a payload of `kind`: writes the prefix into `head`
 * (TT_LINES_HEAD_MAX bytes) and the suffix into `tail` (2 bytes), and
 * returns their lengths.  UV_EINVAL for kinds a line cannot carry. */
int tt_lines_pack(unsigned kind, uint32_t id, char *head, size_t *head_len,
                  char *tail, size_t *tail_len);

/* What a line of `kind` adds to its payload at most (the longest id, the
 * "\n" not counted, as max_message does not count it). */
size_t tt_lines_overhead(unsigned kind);

#endif /* TT_LINES_H */
