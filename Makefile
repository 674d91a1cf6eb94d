# Thin wrapper over meson + ninja for the README's commands. Everything real lives
# in meson.build and scripts/.
BUILD ?= build
MESON_OPTS ?=

.PHONY: all deps build image install check unit interop bench-ttrpc bench-boot bench-shim demo fuzz format format-check clean

all: build

deps:
	@bash scripts/install-deps.sh build interop vm shim

$(BUILD)/build.ninja:
	meson setup $(BUILD) $(MESON_OPTS)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

# The guest image (docs/image.md): $(BUILD)/image/vmlinux, initramfs.cpio, manifest.
# Rebuilt only when an input changed.
image: build
	@bash scripts/install-deps.sh vm
	@bash image/build.sh $(BUILD)/agent/ferry-gcs $(BUILD)/image

# The shim, the guest image it boots and a default config under DESTDIR + PREFIX
# (docs/shim.md): `ctr run --runtime io.containerd.ferry.v1` then finds
# containerd-shim-ferry-v1 on containerd's PATH. The shim's compiled-in defaults name
# PREFIX's share/ferry and etc/ferry (/etc for PREFIX=/usr), so the build is reconfigured
# for PREFIX first. An existing config is kept.
# IMAGE_DIR names a guest image built elsewhere (a sanitizer build makes none).
PREFIX ?= /usr/local
DESTDIR ?=
IMAGE_DIR ?=
install: build
	@[ -n "$(IMAGE_DIR)" ] || $(MAKE) --no-print-directory image BUILD=$(BUILD)
	meson configure $(BUILD) -Dprefix=$(PREFIX)
	ninja -C $(BUILD)
	meson install -C $(BUILD) --no-rebuild --quiet --destdir "$(DESTDIR)"
	@img="$(or $(IMAGE_DIR),$(BUILD)/image)"; \
	  install -D -m 0644 "$$img/vmlinux" "$(DESTDIR)$(PREFIX)/share/ferry/vmlinux" && \
	  install -D -m 0644 "$$img/initramfs.cpio" "$(DESTDIR)$(PREFIX)/share/ferry/initramfs.cpio"
	@etc=$$([ "$(PREFIX)" = /usr ] && echo /etc || echo "$(PREFIX)/etc"); \
	  conf="$(DESTDIR)$$etc/ferry/shim.json"; \
	  if [ -e "$$conf" ]; then echo "install: keeping $$conf"; \
	  else install -D -m 0644 shim/shim.json "$$conf"; fi

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

# Shim: under one private containerd, the shim's RSS serving one running container and
# the median `ctr task exec /bin/true`, Ferry's shim against runc's; last line
# "shim ferry_rss_kib=<n> runc_rss_kib=<n> rss_ratio=<n> qemu_rss_kib=<n> ferry_exec_ms=<n>
# runc_exec_ms=<n> exec_ratio=<n>" (n/a for Ferry's while its shim is not built).
# FERRY_SHIM=/path/to/shim picks the shim. Root only.
bench-shim: image
	bash bench/run-shim.sh $(BUILD)

# The furthest the project has come, shown end to end.
demo: image
	@bash scripts/demo.sh $(BUILD)

# A libFuzzer build under clang (build-fuzz/); run each target for FUZZ_SECONDS, one
# after the other (FUZZ_TARGETS="qmp-lines vm-document" picks some), new inputs going to
# build-fuzz/corpus-<target>/ and its output to build-fuzz/fuzz-<target>.log. A target
# that fails leaves its input as build-fuzz/<target>-crash-* (or -leak-, -timeout-, ...);
# the others still run, and the exit status is non-zero if any failed.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz:
	@bash scripts/install-deps.sh build ci
	[ -f build-fuzz/build.ninja ] || CC=clang meson setup build-fuzz -Dfuzzing=true \
	  -Db_sanitize=address,undefined -Db_lundef=false
	ninja -C build-fuzz
	@failed=""; ran=0; \
	for t in build-fuzz/tests/fuzz/fuzz-*; do \
	  [ -f "$$t" ] && [ -x "$$t" ] || continue; \
	  name=$${t##*/fuzz-}; \
	  [ -z "$(FUZZ_TARGETS)" ] || case " $(FUZZ_TARGETS) " in *" $$name "*) ;; *) continue;; esac; \
	  ran=$$((ran + 1)); mkdir -p build-fuzz/corpus-$$name; \
	  log=build-fuzz/fuzz-$$name.log; \
	  echo "fuzzing $$name for $(FUZZ_SECONDS)s ($$log)"; \
	  if UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	     $$t -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -artifact_prefix=build-fuzz/$$name- \
	       build-fuzz/corpus-$$name tests/fuzz/corpus/$$name >$$log 2>&1; then \
	    echo "fuzz $$name: ok, $$(grep -E '^Done [0-9]+ runs' $$log | tail -n 1)"; \
	  else \
	    echo "fuzz $$name: FAILED"; \
	    grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error:|artifact_prefix|Test unit written)' \
	      $$log | head -n 6; \
	    failed="$$failed $$name"; \
	  fi; \
	done; \
	[ $$ran -gt 0 ] || { echo "no fuzz target matched in build-fuzz/tests/fuzz"; exit 1; }; \
	[ -z "$$failed" ] || { echo "fuzz targets that failed:$$failed"; exit 1; }

format:
	git ls-files '*.c' '*.h' | xargs clang-format -i

format-check:
	git ls-files '*.c' '*.h' | xargs clang-format --dry-run --Werror

clean:
	rm -rf $(BUILD) build-asan build-clang build-fuzz
