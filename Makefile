# `make run` and `make test` do all the set-up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test bench app chromium clean-venv reliability mujoco-gl bench-mujoco bench-pong

# MuJoCo renders clips headless through EGL (Mesa's llvmpipe on CPU); prefrl.envs falls back to osmesa.
export MUJOCO_GL ?= egl

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first and pinned: a bare `torch` pulls a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test,ray]'
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

# What headless MuJoCo rendering needs (Debian): EGL and Mesa's DRI drivers, and OSMesa for the fallback.
# Installed with apt as root; elsewhere clip videos of MuJoCo runs fail with a one-line error saying so.
mujoco-gl:
	@if [ -e /usr/lib/x86_64-linux-gnu/libEGL.so.1 ] && ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1 \
		&& ls /usr/lib/*/libOSMesa.so* >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update && apt-get install -y libegl1 libgl1-mesa-dri libosmesa6) \
		|| echo "mujoco-gl: apt-get install failed; MuJoCo clip videos will not render"; \
	else echo "mujoco-gl: EGL/OSMesa libraries missing and not installable here (needs root and apt-get)"; fi

# pytest's exit code 5 (no test collected) is a failure, not a pass.
test: $(STAMP) chromium mujoco-gl
	$(PY) -m pytest -m "not slow" -q --timeout 600; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/pendulum.py

# HalfCheetah and Hopper, 1M steps x 3 seeds (~4 h on 2 cores); Pong on the CPU budget (~3 h).
bench-mujoco: $(STAMP) mujoco-gl
	$(PY) benchmarks/mujoco.py

bench-pong: $(STAMP)
	$(PY) benchmarks/pong.py

# kill -9 campaigns, the bad-input table, trainer + app + plot at once, security greps -> results/reliability.md
# (~15 min on 2 cores; a shorter version of each part runs in `make test`).
reliability: $(STAMP)
	$(PY) benchmarks/reliability.py

clean-venv:
	rm -rf $(VENV)
