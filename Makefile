# rulesd: `make run` and `make test` set everything up on a fresh Debian 12 machine with Swift.
SHELL := /bin/bash
SWIFT ?= swift
PREFIX ?= /usr/local
DESTDIR ?=
RULES ?= config/rules.d
RUN_DIR ?= $(CURDIR)/.run
SOCKET ?= $(RUN_DIR)/rulesd.sock
# `make run`'s settings: the example rules as the default namespace, and the payments namespace beside them.
RUN_CONFIG ?= config/rulesd-run.conf

# Debian packages the build and the tests need.
# systemd: systemd-analyze for the unit checks, systemd-socket-activate for the socket-activation tests.
# socat: the tour's examples and hand tests.
DEB_PACKAGES := liblua5.4-dev libinotifytools0-dev pkg-config systemd socat

.PHONY: deps build run test test-c test-units test-k8s test-swift test-python test-systemd lint bench clean

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "Installing missing Debian packages:$$missing"; \
	    SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build

run: build
	@mkdir -p $(RUN_DIR)
	$(SWIFT) run rulesd --config $(RUN_CONFIG) --rules $(RULES) --socket $(SOCKET) --state-dir $(RUN_DIR)/state

# Every part, whatever the earlier ones gave, then one summary: each part's outcome, every skip with its reason,
# and a last line "N passed, N failed"; non-zero when anything failed (.ci/test-all.sh says how it counts).
test: deps
	bash .ci/test-all.sh

test-c:
	bash Tests/CSandbox/run.sh

# Offline unit checks; the exposure gate is the score docs/OPERATIONS.md promises.
test-units:
	bash deploy/systemd/check.sh

# The .deb under a real systemd in a throwaway container (root only; otherwise a listed skip). The release
# build it needs is the slow part.
test-systemd:
	bash deploy/systemd/container-test.sh

# The toolchain's formatter, with the project's .swift-format (4 spaces, 120 columns, sorted imports).
lint:
	$(SWIFT) format lint --strict -r Sources Tests

# Kubernetes manifests, offline: kubernetes-validate --strict and yamllint, pinned, from PyPI into a venv; the
# ConfigMaps' rules checked by the rulesctl this checkout builds.
test-k8s:
	$(SWIFT) build --product rulesctl
	RULESCTL="$$($(SWIFT) build --show-bin-path)/rulesctl" bash deploy/kubernetes/validate.sh

test-swift:
	$(SWIFT) build
	SWIFT="$(SWIFT)" bash .ci/swift-test.sh

# The Python client (clients/python): a unit part against a fake server, and the real daemon this checkout builds.
test-python:
	$(SWIFT) build --product rulesd
	RULESD_BIN="$$($(SWIFT) build --show-bin-path)/rulesd" python3 clients/python/run_tests.py

clean:
	rm -rf .build .run

# --- Benchmarks ---------------------------------------------------------------------------------------------
# Figures, not assertions: medians of interleaved runs, and ratios to the C ceilings measured in the same run
# when their sources are found (../shared/perf). The release build is needed for meaningful figures.
# `measures` runs the engine, socket and scale benchmarks and ends with the performance table; `growth` and
# `reload` print the growth curves; `isolation` and `neighbour` the cost of `isolation = process` and a canary
# namespace's latency beside a hostile one. About 12 minutes on a 2-core machine.
# The binaries are built as `make release` builds them (the Swift runtime linked statically), so that the figures,
# resident memory above all, are those of the rulesd that ships: the shared Swift libraries cost about 4 MiB more.
CEILINGS ?= ../shared/perf

bench: deps
	$(SWIFT) build $(RELEASE_FLAGS) --product rulesd
	$(SWIFT) build $(RELEASE_FLAGS) --product rulesbench
	.build/release/rulesbench measures --ceilings $(CEILINGS)
	.build/release/rulesbench growth
	.build/release/rulesbench reload
	.build/release/rulesbench replay
	.build/release/rulesbench isolation
	.build/release/rulesbench neighbour

# --- Installation and packaging (deploy/) --------------------------------------------------------------------
# The release build links the Swift runtime statically (the binaries then need only Debian's libc6, libgcc-s1,
# libstdc++6, liblua5.4-0 and libinotifytools0) and without SwiftPM's $ORIGIN run path. generate-manual,
# swift-argument-parser's man page generator, is built next to the binaries for deploy/install.sh; it is built
# as a product rather than run as `swift package plugin generate-manual`, because the plugin rebuilds
# .build/release without --static-swift-stdlib (and its 1.8.2 version has no --product option).
VERSION ?= 0.1.0
# Every function in a section of its own, Swift and C, so that the link order (Package.swift,
# tools/link-order/rulesd.order) can put the code start-up and serving run together: 2 MiB less resident memory.
# Release code also leaves out Swift's run-time exclusivity checks: the compile-time checks stay, and every test runs
# in a debug build, where the run-time checks are on. They were 6 % of a whole request's instructions (a begin/end
# call pair for each access to a buffer that a class or a closure holds).
RELEASE_FLAGS := -c release --static-swift-stdlib --disable-local-rpath \
	-Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -ffunction-sections \
	-Xswiftc -enforce-exclusivity=unchecked
RELEASE_DIR := .build/release

.PHONY: release install uninstall deb deb-deps k8s-validate

release: deps
	$(SWIFT) build $(RELEASE_FLAGS)
	$(SWIFT) build $(RELEASE_FLAGS) --product generate-manual

install: release
	deploy/install.sh --prefix "$(PREFIX)" --destdir "$(DESTDIR)" $(RELEASE_DIR)

uninstall:
	deploy/uninstall.sh --prefix "$(PREFIX)" --destdir "$(DESTDIR)"

# dpkg-shlibdeps computes the package's Depends: from the binaries.
deb-deps:
	@dpkg-query -W -f='$${Status}' dpkg-dev 2>/dev/null | grep -q "install ok installed" || { \
	    SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dpkg-dev; }

deb: deb-deps release
	deploy/debian/build-deb.sh --build-dir $(RELEASE_DIR) $(VERSION)

k8s-validate: test-k8s
