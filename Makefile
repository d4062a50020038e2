# ferry: the two commands a user needs are `make demo` and `make check`.
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local

.PHONY: all build deps demo check lint unit integration bench bench-failover soak install clean lab-down deb deb-assets deb-lint package-test dbus-interfaces fuzz fuzz-short

all: build

deps:
	@bash tests/deps.sh

build:
	$(CARGO) build --release --locked

# The tutorial on a lab of two nodes: sync, relocate there and back.
demo: deps build
	bash tests/demo.sh

# Everything CI runs: formatting, lints, unit tests, the lab integration
# tests, and the Debian package in a node booted with systemd.
check: deps lint unit fuzz-short build integration package-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# In the release profile: its dependencies are the ones `build` needs next,
# so make check compiles them once, not once per profile (about 3 minutes
# on 2 cores). No test depends on debug assertions.
unit:
	$(CARGO) test --release --locked

integration: build
	bash tests/integration/run.sh

# Fuzzing (fuzz/, cargo-fuzz): a short run of every target in check, each
# corpus once and then 10 s of new inputs (stable Rust is enough); the long
# run, 10 million executions per target (FUZZ_RUNS=…), with AddressSanitizer
# when a nightly toolchain is there. See README, "Fuzzing".
fuzz-short: deps
	bash fuzz/run.sh short

fuzz: deps
	bash fuzz/run.sh long

bench: deps build
	bash tests/bench/relocate.sh

# Five power losses of the running node under Pacemaker (issue 13).
bench-failover: deps build
	bash tests/bench/failover.sh $(or $(RUNS),5)

# Not in check: N relocations with a checksummed file, e2fsck -fn at the end.
soak: deps build
	bash tests/soak/relocate.sh $(or $(N),50)

lab-down:
	bash tests/lab/lab down

# The Debian package: target/debian/ferry_<version>_<arch>.deb, built by
# cargo-deb from [package.metadata.deb] in frontend/Cargo.toml.
DEB_ASSETS := build/deb-assets
deb: deb-assets
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked
	$(CARGO) deb -p ferry --no-build --locked

# What the package needs that is made at build time: man pages and
# completions rendered from the clap definitions, and the unit, activation
# and sudoers files with the package's /usr paths (the files in the repo
# carry /usr/local, for `make install`).
deb-assets: build
	rm -rf $(DEB_ASSETS)
	mkdir -p $(DEB_ASSETS)/units $(DEB_ASSETS)/system-services $(DEB_ASSETS)/sudoers
	target/release/ferry __generate $(DEB_ASSETS)
	for f in ferry-helper.service ferry-sync@.service ferry-sync@.timer; do \
		sed 's|/usr/local/|/usr/|g' systemd/$$f > $(DEB_ASSETS)/units/$$f; done
	sed 's|/usr/local/|/usr/|g' systemd/io.ferry.Helper1.service > $(DEB_ASSETS)/system-services/io.ferry.Helper1.service
	sed 's|/usr/local/|/usr/|g' sudo/ferry > $(DEB_ASSETS)/sudoers/ferry

deb-lint: deb
	lintian --pedantic -I target/debian/ferry_*.deb

# Regenerates dbus-interfaces/*.xml from a live helper on a private bus.
dbus-interfaces: build
	bash tests/package/dump-interfaces.sh

# Installs the package in a fresh Debian 12 booted with systemd under
# systemd-nspawn and checks it there (tests/package/run.sh).
package-test: deb
	bash tests/package/run.sh

install: build
	install -D -m 0755 target/release/ferry $(DESTDIR)$(PREFIX)/bin/ferry
	install -D -m 0755 target/release/ferry-helper $(DESTDIR)$(PREFIX)/libexec/ferry-helper
	install -D -m 0644 dbus-policy/io.ferry.Helper1.conf $(DESTDIR)/etc/dbus-1/system.d/io.ferry.Helper1.conf
	install -D -m 0644 systemd/io.ferry.Helper1.service $(DESTDIR)/usr/share/dbus-1/system-services/io.ferry.Helper1.service
	install -D -m 0644 systemd/ferry-helper.service $(DESTDIR)/etc/systemd/system/ferry-helper.service
	install -D -m 0644 polkit/io.ferry.policy $(DESTDIR)/usr/share/polkit-1/actions/io.ferry.policy
	install -d -m 0755 $(DESTDIR)/etc/ferry/services
	install -d -m 0755 $(DESTDIR)/usr/lib/ocf/resource.d/ferry
	sed 's|/usr/bin/ferry|$(PREFIX)/bin/ferry|' ocf/service > $(DESTDIR)/usr/lib/ocf/resource.d/ferry/service
	chmod 0755 $(DESTDIR)/usr/lib/ocf/resource.d/ferry/service
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/ferry/README.md
	# The Cockpit page (plain HTML + JS: no build step); Cockpit reads /usr/share/cockpit only.
	install -d -m 0755 $(DESTDIR)/usr/share/cockpit/ferry
	install -m 0644 cockpit/manifest.json cockpit/index.html cockpit/ferry.js cockpit/ferry.css $(DESTDIR)/usr/share/cockpit/ferry/
	@echo "installed; now grant rights with a polkit rule (see polkit/*.rules) and: systemctl daemon-reload; dbus reload"

clean:
	$(CARGO) clean
	rm -rf build
