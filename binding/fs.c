/*
 * The few file-system and process calls the `tether` command needs that
 * plain Lua lacks (lua/tether/cli.lua, daemon.lua): directories with a
 * mode, stat, durable atomic writes, the environment, the working
 * directory.  Errors are `nil, err` with the errno's code.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "binding.h"

extern char **environ;

static int fail_path(lua_State *L, const char *what, const char *path,
                     int err) {
  lua_pushfstring(L, "%s %s: %s", what, path, uv_strerror(err));
  return tt_lua_fail(L, err, lua_tostring(L, -1));
}

/* core.mkdir(path, mode) -> true | nil, err.  An existing directory is
 * fine; its mode is set to `mode` only when it is ours and not shared. */
static int l_mkdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  mode_t mode = (mode_t)luaL_optinteger(L, 2, 0755);
  struct stat st;
  if (mkdir(path, mode) != 0) {
    if (errno != EEXIST) return fail_path(L, "mkdir", path, -errno);
    if (stat(path, &st) != 0) return fail_path(L, "stat", path, -errno);
    if (!S_ISDIR(st.st_mode)) return fail_path(L, "mkdir", path, UV_ENOTDIR);
    /* ours and private-ish: tightened to `mode`; a shared directory (sticky
     * or world-writable, like /tmp) is never changed: the caller sees its
     * mode and refuses it */
    if (st.st_uid == getuid() && (st.st_mode & 07777) != mode &&
        !(st.st_mode & (S_ISVTX | S_IWOTH)) && chmod(path, mode) != 0)
      return fail_path(L, "chmod", path, -errno);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.stat(path) -> {size, ino, dev, mode, mtime (s), uid, dir} | nil, err */
static int l_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(path, &st) != 0) return fail_path(L, "stat", path, -errno);
  lua_createtable(L, 0, 7);
  lua_pushinteger(L, (lua_Integer)st.st_size);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)st.st_ino);
  lua_setfield(L, -2, "ino");
  lua_pushinteger(L, (lua_Integer)st.st_dev);
  lua_setfield(L, -2, "dev");
  lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
  lua_setfield(L, -2, "mode");
  lua_pushinteger(L, (lua_Integer)st.st_mtime);
  lua_setfield(L, -2, "mtime");
  lua_pushinteger(L, (lua_Integer)st.st_uid);
  lua_setfield(L, -2, "uid");
  lua_pushboolean(L, S_ISDIR(st.st_mode));
  lua_setfield(L, -2, "dir");
  return 1;
}

static int write_all(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += n, len -= (size_t)n;
  }
  return 0;
}

/* core.write_file(path, data, [mode]) -> true | nil, err: durably and
 * atomically: a reader (or a crash, or a power cut) sees the old file or
 * the new one whole, never a part: written to path.tmp, fsynced, renamed
 * over path, and the directory fsynced. */
static int l_write_file(lua_State *L) {
  size_t len;
  const char *path = luaL_checkstring(L, 1);
  const char *data = luaL_checklstring(L, 2, &len);
  mode_t mode = (mode_t)luaL_optinteger(L, 3, 0600);
  char tmp[PATH_MAX], dir[PATH_MAX];
  char *slash;
  int fd, err;
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
    return fail_path(L, "write", path, UV_ENAMETOOLONG);
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return fail_path(L, "open", tmp, -errno);
  err = write_all(fd, data, len);
  if (err == 0 && fsync(fd) != 0) err = -errno;
  if (close(fd) != 0 && err == 0) err = -errno;
  if (err == 0 && rename(tmp, path) != 0) err = -errno;
  if (err != 0) {
    unlink(tmp);
    return fail_path(L, "write", path, err);
  }
  snprintf(dir, sizeof dir, "%s", path);
  slash = strrchr(dir, '/');
  if (slash == dir) slash[1] = '\0';
  else if (slash != NULL) *slash = '\0';
  else snprintf(dir, sizeof dir, ".");
  if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
    (void)fsync(fd); /* the rename itself made durable */
    close(fd);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.environ() -> { NAME = value, ... } */
static int l_environ(lua_State *L) {
  lua_newtable(L);
  for (char **e = environ; e != NULL && *e != NULL; e++) {
    const char *eq = strchr(*e, '=');
    if (eq == NULL || eq == *e) continue;
    lua_pushlstring(L, *e, (size_t)(eq - *e));
    lua_pushstring(L, eq + 1);
    lua_rawset(L, -3);
  }
  return 1;
}

/* core.getcwd() -> path | nil, err */
static int l_getcwd(lua_State *L) {
  char buf[PATH_MAX];
  if (getcwd(buf, sizeof buf) == NULL) return tt_lua_fail(L, -errno, NULL);
  lua_pushstring(L, buf);
  return 1;
}

/* core.realpath(path) -> absolute path | nil, err */
static int l_realpath(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char buf[PATH_MAX];
  if (realpath(path, buf) == NULL) return fail_path(L, "resolve", path, -errno);
  lua_pushstring(L, buf);
  return 1;
}

static int l_getpid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

static int l_getuid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getuid());
  return 1;
}

void tt_open_fs(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"mkdir", l_mkdir},     {"stat", l_stat},     {"write_file", l_write_file},
      {"environ", l_environ}, {"getcwd", l_getcwd}, {"realpath", l_realpath},
      {"getpid", l_getpid},   {"getuid", l_getuid},
      {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
