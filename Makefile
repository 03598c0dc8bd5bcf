# Thin wrapper around meson/ninja and the scripts in scripts/.
#
#   make demo       install what is missing, build, run the demo (scripts/demo.sh)
#   make test       install what is missing, build, run every test (scripts/run-tests.sh)
#   make            build only (build/pgtrickle-relay)
#   make sanitize   build in build-asan with ASan+UBSan and run every test with it
#   make valgrind   run the unit tests under valgrind
#   make bench      run the benchmarks (bench/run.sh)
#   make fuzz       build the fuzz targets with clang+libFuzzer in build-fuzz and
#                   fuzz each for FUZZ_SECONDS (scripts/fuzz.sh, docs/fuzzing.md)
#   make install    build, then install under PREFIX (meson install; DESTDIR honoured)
#   make uninstall  remove what make install installed
#   make deb        build the Debian package into build/deb (scripts/build-deb.sh)
#   make image      build the container image with podman (scripts/build-image.sh)
#   make image-demo the demo against the container image
#   make clean      remove the build directories
#
# Variables: BUILD (build), ASAN_BUILD (build-asan), BUILDTYPE (debugoptimized),
# MESON_ARGS (extra `meson setup` options, e.g. -Dkafka=disabled),
# FUZZ_BUILD (build-fuzz), FUZZ_SECONDS (30 per target), FUZZ_TARGETS (all).
# PREFIX (/usr/local) and DESTDIR (empty) for make install. docs/install.md.

BUILD      ?= build
ASAN_BUILD ?= build-asan
BUILDTYPE  ?= debugoptimized
MESON_ARGS ?=
VALGRIND   ?= valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?=

SHELL := /bin/bash

PREFIX     ?= /usr/local
DESTDIR    ?=

.PHONY: all build deps test demo sanitize valgrind bench fuzz soak install uninstall deb image image-demo clean

all: build

# meson setup only when the directory is not configured yet; afterwards ninja
# re-runs meson by itself whenever a meson.build changes.
build:
	@if [ ! -f $(BUILD)/build.ninja ]; then \
		echo "meson setup $(BUILD) --buildtype=$(BUILDTYPE) $(MESON_ARGS)"; \
		meson setup $(BUILD) --buildtype=$(BUILDTYPE) $(MESON_ARGS); \
	fi
	ninja -C $(BUILD)

deps:
	scripts/install-deps.sh

# The README's test command. The steps run in order, also under make -j.
test:
	scripts/install-deps.sh
	@$(MAKE) --no-print-directory build
	BUILD=$(BUILD) scripts/run-tests.sh

# The README's demo command.
demo:
	scripts/install-deps.sh
	@$(MAKE) --no-print-directory build
	RELAY_BIN=$(CURDIR)/$(BUILD)/pgtrickle-relay scripts/demo.sh

sanitize:
	scripts/install-deps.sh
	@$(MAKE) --no-print-directory build BUILD=$(ASAN_BUILD) MESON_ARGS="-Dsanitize=true $(MESON_ARGS)"
	BUILD=$(ASAN_BUILD) scripts/run-tests.sh

valgrind: build
	meson test -C $(BUILD) --print-errorlogs --suite unit --wrap='$(VALGRIND)'

bench: build
	@if [ -f bench/run.sh ]; then \
		BUILD=$(BUILD) RELAY_BIN=$(CURDIR)/$(BUILD)/pgtrickle-relay bash bench/run.sh; \
	else \
		echo "bench/run.sh does not exist yet"; exit 1; \
	fi

# Every target for FUZZ_SECONDS each; fails on any finding and prints its
# reproducer.
fuzz:
	scripts/install-deps.sh
	FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh $(FUZZ_TARGETS)

# One long seeded soak run under faults (docs/reliability.md): SOAK_SECONDS
# (600), SOAK_SEED (random; printed, replays the same schedule).
soak:
	scripts/install-deps.sh
	@$(MAKE) --no-print-directory build
	BUILD=$(BUILD) scripts/soak.sh

# The prefix is a meson option of the build directory: set it when it differs
# (the binary does not depend on it; the units and the man path do).
install: build
	@if [ "$$(meson introspect --buildoptions $(BUILD) | python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"][0])')" != "$(PREFIX)" ]; then \
		echo "meson configure $(BUILD) -Dprefix=$(PREFIX)"; \
		meson configure $(BUILD) -Dprefix=$(PREFIX); \
	fi
	DESTDIR=$(DESTDIR) meson install -C $(BUILD)

uninstall:
	ninja -C $(BUILD) uninstall

deb:
	scripts/install-deps.sh
	scripts/build-deb.sh $(BUILD)/deb

image:
	scripts/build-image.sh

image-demo: image
	RELAY_BIN=$(CURDIR)/scripts/container-relay.sh scripts/demo.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) build-image
