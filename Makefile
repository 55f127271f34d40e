# tether: `make` builds, `make test` runs every suite, `make demo` runs the
# example.  Both install missing Debian packages first when run as root.

CC      ?= gcc
LUA     ?= lua5.4
LUA_INC ?= $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
UV_CFLAGS := $(shell pkg-config --cflags libuv 2>/dev/null)
UV_LIBS   := $(shell pkg-config --libs libuv 2>/dev/null || echo -luv) $(shell pkg-config --libs hiredis 2>/dev/null || echo -lhiredis)
CHECK_FLAGS = $(shell pkg-config --cflags --libs check 2>/dev/null || echo -lcheck)

WARN    = -Wall -Wextra -Werror
CFLAGS  ?= -O2 -g
BASE    = -std=c11 -D_GNU_SOURCE -fPIC $(WARN) -Icore -Ibinding $(LUA_INC) $(UV_CFLAGS)
# core/ alone, as a binding for another language would build it: no Lua
# headers or library (the C tests and examples/c are built this way).
CORE_BASE = -std=c11 -D_GNU_SOURCE $(WARN) -Icore $(UV_CFLAGS)
SAN     = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

CORE_SRC = $(wildcard core/*.c)
LUA_SRC  = $(wildcard binding/*.c)
HDRS     = $(wildcard core/*.h binding/*.h)

BUILD  = build
ABUILD = build-asan
BUSTED = $(LUA) /usr/bin/busted
SPECS ?= spec
# The specs load the module and the facade from the tree.
LUA_ENV = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
          LUA_CPATH="$(CURDIR)/$(1)/?.so;;"


.PHONY: fuzz-deps

.PHONY: rock rock-install
.PHONY: bench-deps
.PHONY: squares all deps test test-c test-lua test-asan test-asan-lua test-valgrind test-valgrind-lua demo bench fuzz clean install-rock

all: $(BUILD)/tether/core.so $(BUILD)/notify_listen $(BUILD)/fd_peer

deps:
	@sh scripts/deps.sh

$(BUILD)/tether/core.so: $(CORE_SRC) $(LUA_SRC) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE) $(CFLAGS) -fvisibility=hidden -shared $(CORE_SRC) $(LUA_SRC) $(UV_LIBS) -o $@

$(ABUILD)/tether/core.so: $(CORE_SRC) $(LUA_SRC) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE) $(SAN) -fvisibility=hidden -shared $(CORE_SRC) $(LUA_SRC) $(UV_LIBS) -o $@

# C probes of the value codec for spec/codec_spec.lua
PROBE_SRC = test/codec_testmod.c binding/codec.c binding/util.c core/error.c
$(BUILD)/codec_test.so: $(PROBE_SRC) $(HDRS)
	$(CC) $(BASE) $(CFLAGS) -shared $(PROBE_SRC) $(UV_LIBS) -o $@
$(ABUILD)/codec_test.so: $(PROBE_SRC) $(HDRS)
	$(CC) $(BASE) $(SAN) -shared $(PROBE_SRC) $(UV_LIBS) -o $@

C_TESTS = $(wildcard test/check_main.c test/test_*.c test/loop_util.c test/children.c)
$(BUILD)/run_c_tests: $(CORE_SRC) $(wildcard test/*.c test/*.h) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CORE_BASE) -O1 -g $(C_TESTS) $(CORE_SRC) $(CHECK_FLAGS) $(UV_LIBS) -o $@
$(ABUILD)/run_c_tests: $(CORE_SRC) $(wildcard test/*.c test/*.h) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CORE_BASE) $(SAN) $(C_TESTS) $(CORE_SRC) $(CHECK_FLAGS) $(UV_LIBS) -o $@

# A peer sending buffers' descriptors, good and bad (spec/buffer_spec.lua).
$(BUILD)/fd_peer: test/fd_peer.c test/peer_util.h
	@mkdir -p $(@D)
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) $(UV_CFLAGS) -O1 -g $< -o $@

# A stand-in for systemd's notify socket (the `tether run` specs).
$(BUILD)/notify_listen: test/notify_listen.c
	@mkdir -p $(@D)
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) -O1 -g $< -o $@

# examples/c/squares.c: a pool of workers from C with core/ only.
squares: $(BUILD)/squares
$(BUILD)/squares: examples/c/squares.c $(CORE_SRC) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CORE_BASE) -O1 -g examples/c/squares.c $(CORE_SRC) $(UV_LIBS) -o $@
$(ABUILD)/squares: examples/c/squares.c $(CORE_SRC) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CORE_BASE) $(SAN) examples/c/squares.c $(CORE_SRC) $(UV_LIBS) -o $@

# Every suite, with a "N passed, N failed" total at the end.
test: deps
	@scripts/test.sh

test-c: $(BUILD)/run_c_tests
	$(BUILD)/run_c_tests

BUSTED_OUT ?=
test-lua: $(BUILD)/tether/core.so $(BUILD)/codec_test.so $(BUILD)/notify_listen $(BUILD)/fd_peer
	$(call LUA_ENV,$(BUILD)) TETHER_LUA=$(LUA) $(BUSTED) $(BUSTED_OUT) $(SPECS)

# The specs against an ASan+UBSan build: the sanitizer runtimes are preloaded
# into lua5.4 (and so into every forked Lua worker).
ASAN_RT = $(shell $(CC) -print-file-name=libasan.so) $(shell $(CC) -print-file-name=libubsan.so)
test-asan: deps
	@scripts/test.sh asan

test-asan-lua: $(ABUILD)/tether/core.so $(ABUILD)/codec_test.so $(BUILD)/notify_listen $(BUILD)/fd_peer
	$(call LUA_ENV,$(ABUILD)) TETHER_LUA=$(LUA) LD_PRELOAD="$(ASAN_RT)" \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/test/lsan.supp:print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(BUSTED) $(BUSTED_OUT) $(SPECS)

# The specs with lua5.4 itself under valgrind memcheck (forked workers run
# natively): no invalid access, no definite or indirect leak.
VALGRIND = valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect \
           --error-exitcode=99 --trace-children=no
test-valgrind: deps
	@scripts/test.sh valgrind

test-valgrind-lua: $(BUILD)/tether/core.so $(BUILD)/codec_test.so $(BUILD)/notify_listen $(BUILD)/fd_peer
	$(call LUA_ENV,$(BUILD)) TETHER_LUA=$(LUA) TETHER_SLOW=1 $(VALGRIND) $(LUA) /usr/bin/busted $(BUSTED_OUT) $(SPECS)

demo: deps $(BUILD)/tether/core.so
	$(call LUA_ENV,$(BUILD)) $(LUA) examples/demo.lua

# wrk drives the cluster bench (bench/cluster_bench.lua: HTTP under
# tether.cluster and Node's cluster); CLUSTER_BENCH=0 skips it.  The broker
# bench (bench/broker_bench.lua: tether.pool{broker =} and tether.agent
# against BullMQ and Celery on one redis-server; BROKER_BENCH=0 skips it)
# takes Debian's Celery and BullMQ from npm (bench/broker_bullmq/, locked
# by its package-lock.json); without them it runs the systems it has.
# The command bench (bench/cli_bench.lua: `tether ls`, the daemon's RSS
# under 1 GiB of log lines, crash to replacement, against PM2; CLI_BENCH=0
# skips it) takes PM2 5 from npm (bench/pm2/, locked by its
# package-lock.json); without it, it measures tether alone.
bench-deps:
	@sh scripts/deps.sh wrk python3-celery python3-redis
	@if [ "$${BROKER_BENCH:-1}" != 0 ] && [ ! -d bench/broker_bullmq/node_modules/bullmq ]; then \
	  (cd bench/broker_bullmq && npm ci --no-audit --no-fund >/dev/null) || \
	    echo "# npm ci in bench/broker_bullmq failed: the broker bench runs without BullMQ" >&2; \
	fi
	@if [ "$${CLI_BENCH:-1}" != 0 ] && [ ! -d bench/pm2/node_modules/pm2 ]; then \
	  (cd bench/pm2 && npm ci --no-audit --no-fund >/dev/null) || \
	    echo "# npm ci in bench/pm2 failed: the command bench runs without PM2" >&2; \
	fi

bench: deps bench-deps $(BUILD)/tether/core.so
	$(call LUA_ENV,$(BUILD)) LUA=$(LUA) sh bench/run.sh
	@mkdir -p bench/results
	@if [ "$${CLUSTER_BENCH:-1}" != 0 ]; then \
	  $(call LUA_ENV,$(BUILD)) $(LUA) bench/cluster_bench.lua | tee bench/results/cluster-$$(date -u +%Y%m%dT%H%M%SZ).txt; \
	fi
	@if [ "$${BROKER_BENCH:-1}" != 0 ]; then \
	  $(call LUA_ENV,$(BUILD)) $(LUA) bench/broker_bench.lua | tee bench/results/broker-$$(date -u +%Y%m%dT%H%M%SZ).txt; \
	fi
	@if [ "$${PREFORK_BENCH:-1}" != 0 ]; then \
	  $(call LUA_ENV,$(BUILD)) $(LUA) bench/prefork_bench.lua | tee bench/results/prefork-$$(date -u +%Y%m%dT%H%M%SZ).txt || true; \
	fi
	@if [ "$${CLI_BENCH:-1}" != 0 ]; then \
	  if [ -d bench/pm2/node_modules/pm2 ]; then cases="tether pm2"; else cases=tether; fi; \
	  CLI_CASES="$${CLI_CASES:-$$cases}" $(call LUA_ENV,$(BUILD)) $(LUA) bench/cli_bench.lua | tee bench/results/cli-$$(date -u +%Y%m%dT%H%M%SZ).txt; \
	fi

# libFuzzer targets (clang from Debian): each runs FUZZ_SECS seconds from the
# seed corpus in fuzz/corpus/<name>; new inputs go to build-fuzz/<name>.
FUZZ_SECS ?= 60
FUZZ_CC = clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
          -fno-sanitize-recover=undefined -Icore -Ibinding $(LUA_INC) $(UV_CFLAGS)
build-fuzz/fuzz_frame: fuzz/fuzz_frame.c core/frame.c core/lines.c core/error.c $(HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) fuzz/fuzz_frame.c core/frame.c core/lines.c core/error.c $(UV_LIBS) -o $@
build-fuzz/fuzz_codec: fuzz/fuzz_codec.c binding/codec.c binding/util.c core/error.c $(HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) fuzz/fuzz_codec.c binding/codec.c binding/util.c core/error.c -llua5.4 $(UV_LIBS) -o $@
build-fuzz/fuzz_lines: fuzz/fuzz_lines.c core/frame.c core/lines.c core/error.c $(HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) fuzz/fuzz_lines.c core/frame.c core/lines.c core/error.c $(UV_LIBS) -o $@
fuzz-deps:
	@sh scripts/deps.sh clang libclang-rt-14-dev
build-fuzz/fuzz_handles: fuzz/fuzz_handles.c test/peer_util.h $(CORE_SRC) $(HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) -Itest fuzz/fuzz_handles.c $(CORE_SRC) $(UV_LIBS) -o $@
fuzz: fuzz-deps build-fuzz/fuzz_frame build-fuzz/fuzz_codec build-fuzz/fuzz_lines build-fuzz/fuzz_handles
	@for t in frame codec lines handles; do \
	  mkdir -p build-fuzz/$$t; \
	  ml=80000; [ $$t = handles ] && ml=4096; \
	  echo "== fuzz_$$t for $(FUZZ_SECS) s"; \
	  if ! build-fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECS) -max_len=$$ml -print_final_stats=1 \
	      -artifact_prefix=build-fuzz/ build-fuzz/$$t fuzz/corpus/$$t >build-fuzz/$$t.log 2>&1; then \
	    tail -40 build-fuzz/$$t.log; echo "fuzz_$$t FAILED"; exit 1; \
	  fi; \
	  grep -E "^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units|^stat::peak_rss" build-fuzz/$$t.log; \
	done

install-rock:
	luarocks --lua-version=5.4 make rockspec/tether-scm-1.rockspec

# For luarocks (rockspec/tether-scm-1.rockspec, the make backend): nothing is
# written into the source tree but build-rock/, removed once installed.
ROCK_BUILD = build-rock
LUA_MODULES = lua/tether.lua $(wildcard lua/tether/*.lua)
rock:
	@mkdir -p $(ROCK_BUILD)/tether
	$(CC) -std=c11 -D_GNU_SOURCE $(CFLAGS) -fvisibility=hidden -Icore -Ibinding \
	  -I$(LUA_INCDIR) -I$(LIBUV_INCDIR) -I$(HIREDIS_INCDIR) $(LIBFLAG) $(CORE_SRC) $(LUA_SRC) \
	  -L$(LIBUV_LIBDIR) -luv -L$(HIREDIS_LIBDIR) -lhiredis -o $(ROCK_BUILD)/tether/core.so
rock-install:
	install -d $(INST_LIBDIR)/tether $(INST_LUADIR)/tether
	install -m 755 $(ROCK_BUILD)/tether/core.so $(INST_LIBDIR)/tether/core.so
	install -m 644 lua/tether.lua $(INST_LUADIR)/tether.lua
	install -m 644 $(wildcard lua/tether/*.lua) $(INST_LUADIR)/tether/
	install -m 644 examples/node/tether.js $(INST_LUADIR)/tether/tether.js
	install -d $(INST_BINDIR)
	install -m 755 bin/tether $(INST_BINDIR)/tether
	rm -rf $(ROCK_BUILD)

clean:
	rm -rf $(BUILD) $(ABUILD) build-fuzz
