/*
 * tether error codes.
 *
 * Every core function returns 0 (or a count) on success and a negative code on
 * failure.  System failures reuse libuv's UV_E* values (negative errno on
 * Unix); tether's own failures live in a reserved range below TT__ERR_BASE so
 * the two sets never collide.  The single TT_ERR_MAP list below generates the
 * enum, tt_err_name() and tt_strerror(); the Lua binding builds its error
 * codes from the same names, so C and Lua can never drift apart.
 */
#ifndef TT_ERROR_H
#define TT_ERROR_H

#define TT__ERR_BASE (-30000)

/* XX(name, description) in a stable order: appending keeps old values. */
#define TT_ERR_MAP(XX)                                                        \
  XX(ERR_IPC_CHANNEL_CLOSED, "channel is closed")                             \
  XX(ERR_IPC_DISCONNECTED, "channel is already disconnected")                 \
  XX(ERR_IPC_PROTOCOL, "malformed or oversized frame from the peer")          \
  XX(ERR_SERIALIZE, "value cannot be serialized")                             \
  XX(ERR_TIMEOUT, "operation timed out")                                      \
  XX(ERR_WORKER_INIT, "worker script failed to start")                        \
  XX(ERR_WORKER_CRASH, "worker died with work in flight")                     \
  XX(ERR_WORKER_UNCAUGHT, "worker raised an uncaught error")                  \
  XX(ERR_TASK_FAILED, "task or request handler raised")                       \
  XX(ERR_QUEUE_FULL, "queue is full")                                         \
  XX(ERR_CLOSED, "object is closed")                                          \
  XX(ERR_NO_CHANNEL, "process has no channel")                                \
  XX(ERR_NO_COROUTINE, "must be called inside a coroutine")                   \
  XX(ERR_NO_HANDLER, "peer has no request handler")                          \
  XX(ERR_HANDLE_NOT_RECEIVED, "the peer did not take the handle")           \
  XX(ERR_NOT_CLUSTER, "not a cluster worker")                               \
  XX(ERR_BROKER_DOWN, "the broker (Redis) cannot be reached")               \
  XX(ERR_BROKER, "the broker (Redis) answered with an error")

enum {
#define XX(name, _) TT__IDX_##name,
  TT_ERR_MAP(XX)
#undef XX
  TT__ERR_COUNT
};

/* TT_ERR_IPC_CHANNEL_CLOSED == TT__ERR_BASE - 1, and downwards. */
typedef enum {
#define XX(name, _) TT_##name = TT__ERR_BASE - 1 - TT__IDX_##name,
  TT_ERR_MAP(XX)
#undef XX
  TT__ERR_LAST = TT__ERR_BASE - TT__ERR_COUNT /* lowest code */
} tt_errno_t;

/* "ERR_TIMEOUT", "ENOENT", ...; "UNKNOWN" for codes outside both ranges. */
const char *tt_err_name(int err);
/* Human-readable description of `err`. */
const char *tt_strerror(int err);
/* Non-zero when `err` is one of tether's own codes. */
int tt_err_is_own(int err);

#endif /* TT_ERROR_H */
