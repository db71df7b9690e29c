# Two commands do all set-up on a fresh machine:  make demo  and  make test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Offline-friendly defaults (no telemetry from Prefect or DVC).
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export DVC_NO_ANALYTICS ?= 1

.PHONY: demo test lint bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[workflow,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bootleg pretrain --params params.yaml --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check bootleg flows tests bench
	$(VENV)/bin/ruff format --check bootleg flows tests bench

bench: $(STAMP)
	$(PY) bench/masks.py
	$(PY) bench/step.py --preset tiny --steps 10

clean:
	rm -rf runs .pytest_cache
