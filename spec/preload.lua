-- Loaded by busted (.busted: helper) before any spec file.  busted
-- insulates spec files: modules a file requires are dropped from
-- package.loaded when it ends, so the next file's `require "luv"` opens
-- luv a second time in the same Lua state, which leaves luv with a freed
-- loop (a crash in uv_poll_init or uv_udp_init in a later file).  Loaded
-- here, luv is opened once for the whole run.
pcall(require, "luv")
