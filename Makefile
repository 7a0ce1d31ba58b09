# `make run` and `make test` do all the set-up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test bench app chromium clean-venv

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first and pinned: a bare `torch` pulls a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/prefrl train

# The labeling app, on this machine only (127.0.0.1); RUN=results/<run> picks a run, else the newest.
app: $(STAMP)
	$(VENV)/bin/prefrl app $(RUN)

# Debian's chromium for tests/test_browser.py (Playwright's own browser download does not work here).
# Installed with apt as root; elsewhere the browser test skips and says why.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update && apt-get install -y chromium) || echo "chromium: apt-get install failed; the browser test will be skipped"; \
	else echo "chromium: missing and not installable here (needs root and apt-get); the browser test will be skipped"; fi

# pytest's exit code 5 (no test collected) is a failure, not a pass.
test: $(STAMP) chromium
	$(PY) -m pytest -m "not slow" -q --timeout 600; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/pendulum.py

clean-venv:
	rm -rf $(VENV)
