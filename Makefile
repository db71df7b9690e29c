# Two commands do all set-up on a fresh machine:  make demo  and  make test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Offline-friendly defaults (no telemetry from Prefect or DVC).
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export DVC_NO_ANALYTICS ?= 1

.PHONY: demo test lint bench gpu-check install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[workflow,dev]'
	touch $(STAMP)

# The pipeline flow (prepare -> pretrain -> register -> probes -> report) on the embedded
# defaults: MLflow in ./mlflow.db + ./mlartifacts, Prefect's temporary server on the database
# in ./.prefect (the flow run record stays there), no server to start by hand. The report puts
# a randomly initialised encoder's probe scores beside the pretrained one's (--baseline).
#   make demo          quick: 60 steps and a small probe grid (README: Demo, for times and gains)
#   make demo LONG=1   the longer setting: 2000 steps, same probes
DEMO_PROBES := --set probe.linear.lrs=[0.1,1.0] --set probe.linear.wds=[0.0,0.1] \
  --set probe.linear.epochs=10 --set probe.knn.ks=[10,20]
DEMO_STEPS  := $(if $(LONG),2000,60)
demo: $(STAMP)
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} MLFLOW_DISABLE_TELEMETRY=true \
	  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=$${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120} \
	  $(PY) -m flows.pipeline --params params.yaml --set run.steps=$(DEMO_STEPS) $(DEMO_PROBES) \
	  --kind train --baseline --run-name demo-$(DEMO_STEPS)-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check bootleg flows tests bench
	$(VENV)/bin/ruff format --check bootleg flows tests bench

bench: $(STAMP)
	$(PY) bench/masks.py
	$(PY) bench/step.py --method bootleg --size micro --img-size 32 --batch-size 64 --steps 10
	$(PY) bench/data.py --images 96 --rounds 1

# Proves and measures the GPU path in one short window (docs/gpu.md): CUDA tests, step speed,
# a CIFAR-10 quality race; hard budget BUDGET seconds (default 480). SMOKE=1: the same on CPU, tiny.
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py $(if $(filter 1 true yes,$(SMOKE)),--smoke) $(if $(BUDGET),--budget-s $(BUDGET))

clean:
	rm -rf runs .pytest_cache

# Opt-in, not in CI: the compose stack for real (local Debian base image, PostgreSQL, MLflow,
# Prefect server and worker on 127.0.0.1, one pipeline deployment run); needs a Docker daemon.
# See docs/docker.md.
.PHONY: test-docker
test-docker:
	scripts/test_docker.sh
