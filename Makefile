# tether: `make` builds, `make test` runs every suite, `make demo` runs the
# example.  Both install missing Debian packages first when run as root.

CC      ?= gcc
LUA     ?= lua5.4
LUA_INC ?= $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
UV_CFLAGS := $(shell pkg-config --cflags libuv 2>/dev/null)
UV_LIBS   := $(shell pkg-config --libs libuv 2>/dev/null || echo -luv)
CHECK_FLAGS = $(shell pkg-config --cflags --libs check 2>/dev/null || echo -lcheck)

WARN    = -Wall -Wextra -Werror
CFLAGS  ?= -O2 -g
BASE    = -std=c11 -D_GNU_SOURCE -fPIC $(WARN) -Icore -Ilua $(LUA_INC) $(UV_CFLAGS)
SAN     = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

CORE_SRC = $(wildcard core/*.c)
LUA_SRC  = $(wildcard lua/*.c)
HDRS     = $(wildcard core/*.h lua/*.h)

BUILD  = build
ABUILD = build-asan
BUSTED = $(LUA) /usr/bin/busted
SPECS ?= spec
# The specs load the module and the facade from the tree.
LUA_ENV = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;" \
          LUA_CPATH="$(CURDIR)/$(1)/?.so;;"

.PHONY: all deps test test-c test-lua test-asan demo bench fuzz clean install-rock

all: $(BUILD)/tether/core.so

deps:
	@sh scripts/deps.sh

$(BUILD)/tether/core.so: $(CORE_SRC) $(LUA_SRC) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE) $(CFLAGS) -fvisibility=hidden -shared $(CORE_SRC) $(LUA_SRC) $(UV_LIBS) -o $@

$(ABUILD)/tether/core.so: $(CORE_SRC) $(LUA_SRC) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE) $(SAN) -fvisibility=hidden -shared $(CORE_SRC) $(LUA_SRC) $(UV_LIBS) -o $@

$(BUILD)/run_c_tests: $(CORE_SRC) $(wildcard test/*.c test/*.h) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE) -O1 -g test/check_main.c test/test_frame.c test/test_error.c $(CORE_SRC) $(CHECK_FLAGS) $(UV_LIBS) -o $@

test: deps test-c test-lua

test-c: $(BUILD)/run_c_tests
	$(BUILD)/run_c_tests

test-lua: $(BUILD)/tether/core.so
	$(call LUA_ENV,$(BUILD)) TETHER_LUA=$(LUA) $(BUSTED) $(SPECS)

ASAN_RT = $(shell $(CC) -print-file-name=libasan.so) $(shell $(CC) -print-file-name=libubsan.so)
test-asan: deps $(ABUILD)/tether/core.so
	$(call LUA_ENV,$(ABUILD)) TETHER_LUA=$(LUA) LD_PRELOAD="$(ASAN_RT)" \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/test/lsan.supp:print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(BUSTED) $(SPECS)

demo: deps $(BUILD)/tether/core.so
	$(call LUA_ENV,$(BUILD)) $(LUA) examples/demo.lua

bench: deps $(BUILD)/tether/core.so
	$(call LUA_ENV,$(BUILD)) LUA=$(LUA) sh bench/run.sh

install-rock:
	luarocks --lua-version=5.4 make rockspec/tether-scm-1.rockspec

clean:
	rm -rf $(BUILD) $(ABUILD)
