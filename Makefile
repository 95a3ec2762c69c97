# mfaproxy developer entry points. Both targets are idempotent and install what
# they need on a fresh Debian machine (run as root, or with sudo available).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/mfaproxy.yaml
DEB_TEST_PACKAGES := slapd ldap-utils freeradius freeradius-utils redis-server postgresql systemd openvpn openvpn-auth-radius libpam-radius-auth ocserv openconnect
# python-ldap (the LDAP client) compiles against OpenLDAP's libldap on install.
DEB_BUILD_PACKAGES := gcc libldap-dev libsasl2-dev python3-dev
# The benchmark also runs FreeRADIUS's rlm_ldap beside mfaproxy.
DEB_BENCH_PACKAGES := $(DEB_TEST_PACKAGES) freeradius-ldap
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint typecheck unit bench deb-packages deb-bench-packages deb-build-packages clean

run: $(VENV)/.installed
	$(BIN)/mfaproxy serve --config $(CONFIG)

test: deb-packages $(VENV)/.installed-test lint typecheck
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check mfaproxy tests bench
	$(BIN)/ruff format --check mfaproxy tests bench
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

bench: deb-bench-packages $(VENV)/.installed-test
	$(BIN)/python -m bench.throughput

# Debian packages the tests drive as real peers (slapd, FreeRADIUS, radclient,
# redis-server). Installed only when one is missing; services are not started
# here: each test starts its own on loopback and free ports.
deb-packages: PACKAGES = $(DEB_TEST_PACKAGES)
deb-bench-packages: PACKAGES = $(DEB_BENCH_PACKAGES)
deb-build-packages: PACKAGES = $(DEB_BUILD_PACKAGES)
deb-packages deb-bench-packages deb-build-packages:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python deb-build-packages
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python deb-build-packages
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
