# stagewise developer entry points.  `make run` shows a demo, `make test` runs the suite.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# sudo only when we are not root and it exists
SUDO   := $(shell [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null || echo sudo)

.DEFAULT_GOAL := test
.PHONY: venv compile redis chromium test run lint bench chaos faults clean install uninstall

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# Byte-compile our own modules.  pip does it for the packages it installs, but an editable
# install leaves our sources to each process that imports them, and with PYTHONDONTWRITEBYTECODE
# set (as it is on these machines) every daemon start compiled them again: ~50 ms of start-up.
compile: venv
	@$(BIN)/python -m compileall -q shared manager executor examples tests bench/peer_stagewise.py

redis:
	@command -v redis-server >/dev/null || { \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; }

# the dashboard test (tests/test_dashboard.py) drives Debian's chromium with playwright
chromium:
	@command -v chromium >/dev/null || { \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Two workers, a test file each at a time (--dist loadfile keeps a file's module fixtures, such as
# its Redis Cluster, in one worker): the suite mostly waits on daemons, so this halves its wall time.
# PYTEST_ARGS="-n 0" runs it in one process.
test: venv compile redis chromium
	$(BIN)/pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

run: venv compile redis
	$(BIN)/python examples/run.py

# mypy cannot follow the editable install's import hook, so it reads `stagewise` from a tree
# of links laid out as the wheel installs it (shared/ at the top, manager/ and executor/ in it).
lint: venv
	$(BIN)/ruff check .
	@rm -rf build/lint && mkdir -p build/lint/stagewise
	@for f in shared/*; do ln -s ../../../$$f build/lint/stagewise/; done
	@ln -s ../../../manager ../../../executor build/lint/stagewise/
	$(BIN)/mypy

bench: venv compile redis
	$(BIN)/python bench/run.py $(BENCH_ARGS)

chaos: venv compile redis
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

# Issue 13's table of Redis faults, each row from a fresh Redis at full size (docs/deploy.md,
# "Redis faults"); FAULTS_ARGS="--rows sigstop,oom --tasks 100" for some rows or another size.
faults: venv compile redis
	$(BIN)/python -m tests.redis_faults_table $(FAULTS_ARGS)

# The daemons as systemd services: deploy/install.sh, described in docs/deploy.md.
#   make install [PREFIX=/opt/stagewise] [VENV=$(PREFIX)/venv] [WHEEL=dist/stagewise-X.whl]
#                [PYTHON=python3.11] [PIP_ARGS=...] [DESTDIR=stage/]
# VENV given here is the venv the units run; without it, $(PREFIX)/venv (the VENV above is the
# dev venv, which install never touches).  DESTDIR= stages the files only (no venv, no systemctl).
PREFIX ?= /opt/stagewise
INSTALL_VENV = $(if $(filter command line,$(origin VENV)),$(VENV),$(PREFIX)/venv)

install uninstall:
	@PREFIX='$(PREFIX)' VENV='$(INSTALL_VENV)' WHEEL='$(WHEEL)' PYTHON='$(PYTHON)' \
	  PIP_ARGS='$(PIP_ARGS)' DESTDIR='$(DESTDIR)' sh deploy/install.sh $@

clean:
	rm -rf run/ build/ .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
