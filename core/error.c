/* Names and descriptions for tether's own codes; libuv answers for the rest. */
#include "tt_error.h"

#include <uv.h>

int tt_err_is_own(int err) {
  return err < TT__ERR_BASE && err >= TT__ERR_BASE - TT__ERR_COUNT;
}

const char *tt_err_name(int err) {
  switch (err) {
#define XX(name, _)                                                           \
  case TT_##name:                                                             \
    return #name;
    TT_ERR_MAP(XX)
#undef XX
  default:
    break;
  }
  /* Spelled out rather than uv_err_name(): that one allocates (and leaks) a
   * string for codes it does not know. */
  switch (err) {
#define XX(name, _)                                                           \
  case UV_##name:                                                             \
    return #name;
    UV_ERRNO_MAP(XX)
#undef XX
  default:
    return "UNKNOWN";
  }
}

const char *tt_strerror(int err) {
  switch (err) {
#define XX(name, msg)                                                         \
  case TT_##name:                                                             \
    return msg;
    TT_ERR_MAP(XX)
#undef XX
  default:
    break;
  }
  switch (err) {
#define XX(name, msg)                                                         \
  case UV_##name:                                                             \
    return msg;
    UV_ERRNO_MAP(XX)
#undef XX
  default:
    return "unknown error";
  }
}
