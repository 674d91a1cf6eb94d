# Thin wrapper over meson + ninja for the README's commands. Everything real lives
# in meson.build and scripts/.
BUILD ?= build
MESON_OPTS ?=

.PHONY: all deps build image check unit interop bench-ttrpc bench-boot demo fuzz format format-check clean

all: build

deps:
	@bash scripts/install-deps.sh build interop vm

$(BUILD)/build.ninja:
	meson setup $(BUILD) $(MESON_OPTS)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

# The guest image (docs/image.md): $(BUILD)/image/vmlinux, initramfs.cpio, manifest.
# Rebuilt only when an input changed.
image: build
	@bash scripts/install-deps.sh vm
	@bash image/build.sh $(BUILD)/agent/ferry-gcs $(BUILD)/image

# Every test; the last line is "N passed, N failed, N skipped". The VM tests boot the
# guest image, so it is built first.
check: image
	@meson test -C $(BUILD) --print-errorlogs --no-rebuild >$(BUILD)/meson-test.out 2>&1; \
	  status=$$?; grep -E '^ *[0-9]+/[0-9]+ ' $(BUILD)/meson-test.out; \
	  [ $$status -eq 0 ] || cat $(BUILD)/meson-logs/testlog.txt | tail -200; \
	  python3 scripts/test-summary.py $(BUILD) && [ $$status -eq 0 ]

unit: build
	@meson test -C $(BUILD) --suite unit --suite fuzz --print-errorlogs --no-rebuild; \
	  status=$$?; python3 scripts/test-summary.py $(BUILD) && [ $$status -eq 0 ]

# C <-> containerd's Go ttrpc, both ways.
interop: build
	@meson test -C $(BUILD) --suite interop --print-errorlogs --no-rebuild --verbose; \
	  status=$$?; python3 scripts/test-summary.py $(BUILD) && [ $$status -eq 0 ]

bench-ttrpc: build
	bash bench/run-ttrpc.sh $(BUILD)

# Boot: a UVM to its agent's first bridge reply against the same command line booting a
# trivial init; last line "boot ferry_ms=<n> bare_qemu_ms=<n> ratio=<n>".
bench-boot: image
	bash bench/run-boot.sh $(BUILD)

# The furthest the project has come, shown end to end.
demo: image
	@bash scripts/demo.sh $(BUILD)

# A libFuzzer build under clang (build-fuzz/); run a target for FUZZ_SECONDS.
FUZZ_SECONDS ?= 60
fuzz:
	@bash scripts/install-deps.sh build ci
	[ -f build-fuzz/build.ninja ] || CC=clang meson setup build-fuzz -Dfuzzing=true \
	  -Db_sanitize=address,undefined -Db_lundef=false
	ninja -C build-fuzz
	@for t in build-fuzz/tests/fuzz/fuzz-*; do \
	  name=$${t##*/fuzz-}; mkdir -p build-fuzz/corpus-$$name; \
	  echo "fuzzing $$name for $(FUZZ_SECONDS)s"; \
	  $$t -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build-fuzz/corpus-$$name \
	    tests/fuzz/corpus/$$name || exit 1; \
	done

format:
	git ls-files '*.c' '*.h' | xargs clang-format -i

format-check:
	git ls-files '*.c' '*.h' | xargs clang-format --dry-run --Werror

clean:
	rm -rf $(BUILD) build-asan build-clang build-fuzz
