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
}
build = {
  type = "builtin",
  modules = {
    ["tether.core"] = {
      sources = {
        "core/backoff.c", "core/channel.c", "core/error.c", "core/fd.c", "core/frame.c", "core/lines.c",
        "core/logsink.c",
        "core/pool.c", "core/process.c", "core/rpc.c", "core/supervisor.c",
        "lua/channel.c", "lua/child.c", "lua/codec.c", "lua/message.c",
        "lua/pool.c", "lua/supervisor.c", "lua/tether_core.c", "lua/timer.c", "lua/util.c",
      },
      defines = { "_GNU_SOURCE" },
      incdirs = { "core", "lua", "$(LIBUV_INCDIR)" },
      libdirs = { "$(LIBUV_LIBDIR)" },
      libraries = { "uv" },
    },
    tether = "lua/tether.lua",
    ["tether.runner"] = "lua/tether/runner.lua",
    ["tether.supervisor"] = "lua/tether/supervisor.lua",
    ["tether.pool"] = "lua/tether/pool.lua",
    ["tether.json"] = "lua/tether/json.lua",
  },
}
