rockspec_format = "3.0"
package = "tether"
version = "scm-1"
source = {
  url = "git+file:///dev/null", -- built from the working tree with `luarocks make`
}
description = {
  summary = "Node-style fork(), message channels and process lifecycle for Lua 5.4",
  detailed = [[
    tether forks Lua workers and spawns programs with a native framed channel,
    Node-style lifecycle events, backpressure and crash-safe delivery, on a C
    core driven by libuv.
  ]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
external_dependencies = {
  LIBUV = { header = "uv.h", library = "uv" },
  HIREDIS = { header = "hiredis/hiredis.h", library = "hiredis" },
}
-- The make backend, not builtin: builtin copies a top-level lua/ folder
-- wholesale and leaves .o files beside the sources.  `make rock` builds the
-- one .so into build-rock/ (ignored), `make rock-install` installs exactly
-- the modules (and the Node.js helper, tether/tether.js beside them) and
-- removes build-rock/.
build = {
  type = "make",
  build_target = "rock",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    LIBUV_INCDIR = "$(LIBUV_INCDIR)",
    LIBUV_LIBDIR = "$(LIBUV_LIBDIR)",
    HIREDIS_INCDIR = "$(HIREDIS_INCDIR)",
    HIREDIS_LIBDIR = "$(HIREDIS_LIBDIR)",
  },
  install_target = "rock-install",
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
    INST_BINDIR = "$(BINDIR)",
  },
}
