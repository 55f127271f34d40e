/*
 * tether.handle: a descriptor that can travel over a channel
 * (core/tt_handle.h, PROTOCOL.md "Handles").  The userdata owns its fd
 * (-1 once detached or closed); __gc and __close close what is still
 * owned, so a handle nobody keeps never leaks.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "binding.h"
#include "tt_error.h"
#include "tt_handle.h"
#include "tt_lockfile.h"

typedef struct {
  int fd;
} tt_lhandle_t;

static tt_lhandle_t *check_handle(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, TT_HANDLE_MT);
}

int tt_lua_push_handle(lua_State *L, int fd) {
  *tt_lua_new_handle(L) = fd;
  return 1;
}

int *tt_lua_new_handle(lua_State *L) {
  tt_lhandle_t *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->fd = -1;
  luaL_setmetatable(L, TT_HANDLE_MT);
  return &h->fd;
}

int tt_lua_handle_fd(lua_State *L, int idx) {
  tt_lhandle_t *h = luaL_testudata(L, idx, TT_HANDLE_MT);
  return h != NULL ? h->fd : -2;
}

int tt_lua_opt_handle_fd(lua_State *L, int idx) {
  int fd;
  if (lua_isnoneornil(L, idx)) return -1;
  fd = tt_lua_handle_fd(L, idx);
  luaL_argcheck(L, fd != -2, idx, "handle expected");
  return fd < 0 ? -2 : fd;
}

/* core.listen(address, backlog, reuseport) -> handle | nil, err */
static int l_listen(lua_State *L) {
  const char *address = luaL_checkstring(L, 1);
  lua_Integer backlog = luaL_optinteger(L, 2, 0);
  int reuseport = lua_toboolean(L, 3);
  int fd, err;
  luaL_argcheck(L, backlog >= 0 && backlog <= 65535, 2, "bad backlog");
  err = tt_listen(address, (int)backlog, reuseport ? TT_LISTEN_REUSEPORT : 0,
                  &fd);
  if (err == UV_EINVAL) {
    lua_pushfstring(L, "bad address '%s' (expected tcp://HOST:PORT, "
                       "tcp://[IPv6]:PORT or unix:PATH)", address);
    return tt_lua_fail(L, err, lua_tostring(L, -1));
  }
  if (err != 0) {
    lua_pushfstring(L, "listen on %s: %s", address, uv_strerror(err));
    return tt_lua_fail(L, err, lua_tostring(L, -1));
  }
  return tt_lua_push_handle(L, fd);
}

/* core.connect("unix:PATH") -> handle | nil, err */
static int l_connect(lua_State *L) {
  const char *address = luaL_checkstring(L, 1);
  int fd, err = tt_connect(address, &fd);
  if (err == UV_EINVAL) {
    lua_pushfstring(L, "bad address '%s' (expected unix:PATH)", address);
    return tt_lua_fail(L, err, lua_tostring(L, -1));
  }
  if (err != 0) {
    lua_pushfstring(L, "connect to %s: %s", address, uv_strerror(err));
    return tt_lua_fail(L, err, lua_tostring(L, -1));
  }
  return tt_lua_push_handle(L, fd);
}

/* core.lock_file(path) -> handle (holding the lock until closed) | nil,
 * err (EAGAIN: another process holds it) */
static int l_lock_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int fd, err = tt_lockfile_acquire(path, &fd);
  if (err != 0) {
    lua_pushfstring(L, "lock %s: %s", path,
                    err == UV_EAGAIN ? "held by another process"
                                     : uv_strerror(err));
    return tt_lua_fail(L, err, lua_tostring(L, -1));
  }
  return tt_lua_push_handle(L, fd);
}

static int l_is_handle(lua_State *L) {
  lua_pushboolean(L, luaL_testudata(L, 1, TT_HANDLE_MT) != NULL);
  return 1;
}

/* core.handle(fd) -> handle (of a duplicate) | nil, err */
static int l_handle(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  int dup;
  luaL_argcheck(L, fd >= 0 && fd <= 0x7fffffff, 1, "bad descriptor");
  if ((dup = fcntl((int)fd, F_DUPFD_CLOEXEC, 3)) < 0)
    return tt_lua_fail(L, -errno, NULL);
  return tt_lua_push_handle(L, dup);
}

/* core.fd_identity(fd) -> inode, device | nil: tells one open socket from another
 * that later got the same number (a cluster worker's way to see that a
 * connection it handed to another library was closed, without holding a
 * duplicate that would keep it open). */
static int l_fd_identity(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  struct stat st;
  if (fd < 0 || fd > 0x7fffffff || fstat((int)fd, &st) != 0) return 0;
  lua_pushinteger(L, (lua_Integer)st.st_ino);
  lua_pushinteger(L, (lua_Integer)st.st_dev);
  return 2;
}

/* core.adopt_fd(fd) -> handle | nil, err: takes an fd that was passed to
 * us (a cluster's listening socket) as it is, close-on-exec from now. */
static int l_adopt_fd(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  int fl;
  luaL_argcheck(L, fd >= 3 && fd <= 0x7fffffff, 1, "bad descriptor");
  if ((fl = fcntl((int)fd, F_GETFD)) < 0 ||
      fcntl((int)fd, F_SETFD, fl | FD_CLOEXEC) != 0)
    return tt_lua_fail(L, -errno, NULL);
  return tt_lua_push_handle(L, (int)fd);
}

static int m_fd(lua_State *L) {
  tt_lhandle_t *h = check_handle(L, 1);
  if (h->fd < 0) return tt_lua_fail(L, TT_ERR_CLOSED, "handle is empty");
  lua_pushinteger(L, h->fd);
  return 1;
}

static int m_detach(lua_State *L) {
  tt_lhandle_t *h = check_handle(L, 1);
  if (h->fd < 0) return tt_lua_fail(L, TT_ERR_CLOSED, "handle is empty");
  lua_pushinteger(L, h->fd);
  h->fd = -1;
  return 1;
}

static int m_close(lua_State *L) {
  tt_lhandle_t *h = check_handle(L, 1);
  if (h->fd >= 0) {
    close(h->fd);
    h->fd = -1;
  }
  return 0;
}

/* host, port for TCP and UDP; the path for Unix sockets */
static int m_address(lua_State *L) {
  tt_lhandle_t *h = check_handle(L, 1);
  char host[256];
  int port, err;
  if (h->fd < 0) return tt_lua_fail(L, TT_ERR_CLOSED, "handle is empty");
  if ((err = tt_handle_address(h->fd, host, sizeof host, &port)) != 0)
    return tt_lua_fail(L, err, NULL);
  lua_pushstring(L, host);
  if (port < 0) return 1;
  lua_pushinteger(L, port);
  return 2;
}

static int m_index(lua_State *L) {
  tt_lhandle_t *h = check_handle(L, 1);
  const char *k = lua_tostring(L, 2);
  if (k != NULL && strcmp(k, "kind") == 0) {
    if (h->fd < 0)
      lua_pushnil(L);
    else
      lua_pushstring(L, tt_handle_kind_name(tt_handle_kind(h->fd)));
    return 1;
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "methods");
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int m_tostring(lua_State *L) {
  tt_lhandle_t *h = check_handle(L, 1);
  if (h->fd < 0)
    lua_pushliteral(L, "tether.handle (empty)");
  else
    lua_pushfstring(L, "tether.handle (%s, fd %d)",
                    tt_handle_kind_name(tt_handle_kind(h->fd)), h->fd);
  return 1;
}

void tt_open_handle(lua_State *L) {
  static const luaL_Reg methods[] = {{"fd", m_fd},
                                     {"detach", m_detach},
                                     {"close", m_close},
                                     {"address", m_address},
                                     {NULL, NULL}};
  luaL_newmetatable(L, TT_HANDLE_MT);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "methods");
  lua_pushcfunction(L, m_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, m_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, m_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, m_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_listen);
  lua_setfield(L, -2, "listen");
  lua_pushcfunction(L, l_handle);
  lua_setfield(L, -2, "handle");
  lua_pushcfunction(L, l_connect);
  lua_setfield(L, -2, "connect");
  lua_pushcfunction(L, l_lock_file);
  lua_setfield(L, -2, "lock_file");
  lua_pushcfunction(L, l_is_handle);
  lua_setfield(L, -2, "is_handle");
  lua_pushcfunction(L, l_adopt_fd);
  lua_setfield(L, -2, "adopt_fd");
  lua_pushcfunction(L, l_fd_identity);
  lua_setfield(L, -2, "fd_identity");
}
