# One command to try it, one to test it. Both work on a fresh Debian machine as root.
#   make demo   set up, start the Asterisk lab and the daemon, place an abandoned call, show the callback
#   make test   set up, then run the whole test suite (unit, databases, real-Asterisk lab) and lint
#   make deb    build the Debian package (callbackd_<version>_<arch>.deb) in a cached bookworm chroot
#   make lock   regenerate requirements.lock from pyproject.toml (docs/dependencies.md)

PY     ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint lab-up lab-down bench clean deb lock

# The locked set (requirements.lock: runtime and test dependencies, exact pins with hashes), then
# the project itself without resolving anything again.
$(STAMP): pyproject.toml requirements.lock
	@$(PY) -m venv $(VENV) 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && $(PY) -m venv $(VENV); }
	$(VPY) -m pip install -q -r requirements.lock
	$(VPY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)
	tests/setup-services

demo: setup
	$(VPY) asterisk/demo

test: setup
	$(VPY) -m ruff check .
	$(VPY) -m pytest -ra

lint: $(STAMP)
	$(VPY) -m ruff check .

deb:
	packaging/build-deb

lock:
	packaging/lock

lab-up:
	asterisk/lab up

lab-down:
	asterisk/lab down

bench: setup
	$(VPY) bench/run

clean:
	-asterisk/lab down
	rm -rf $(VENV) .venv-lock *.egg-info .pytest_cache .ruff_cache build/deb
