# rulesd: `make run` and `make test` set everything up on a fresh Debian 12 machine with Swift.
SHELL := /bin/bash
SWIFT ?= swift
PREFIX ?= /usr/local
DESTDIR ?=
RULES ?= config/rules.d
RUN_DIR ?= $(CURDIR)/.run
SOCKET ?= $(RUN_DIR)/rulesd.sock

# Debian packages the build and the tests need.
# systemd: systemd-analyze for the unit checks, systemd-socket-activate for the socket-activation tests.
# socat: the tour's examples and hand tests.
DEB_PACKAGES := liblua5.4-dev libinotifytools0-dev pkg-config systemd socat

.PHONY: deps build run test test-c test-units test-swift bench clean

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
	$(SWIFT) run rulesd --rules $(RULES) --socket $(SOCKET) --state-dir $(RUN_DIR)/state

test: deps test-c test-units test-swift

test-c:
	bash Tests/CSandbox/run.sh

test-units:
	bash deploy/systemd/check.sh 1.0

test-swift:
	$(SWIFT) build
	$(SWIFT) test --no-parallel

clean:
	rm -rf .build .run
