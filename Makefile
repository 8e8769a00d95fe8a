# Two commands on a fresh machine:
#   make demo   -> creates .venv (pinned deps), synthesises the demo cohort, runs the whole study
#                  through the Kubeflow pipeline (kfp local runner) with MLflow tracking
#   make test   -> creates .venv if needed and runs the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
# Bytecode is cached, but under .venv/pycache, never next to the sources: every kfp component is a
# new Python process, and recompiling torch/scipy/pandas from source cost ~5 s per process.
export PYTHONDONTWRITEBYTECODE :=
export PYTHONPYCACHEPREFIX := $(abspath $(VENV))/pycache
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo study-mid test test-slow bench bench-short gpu-check paper venv mlflow-ui compile dvc-repro image image-test clean

$(STAMP): requirements.txt pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required (set PY=python3.11)"'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --no-compile --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/vce run --profile demo

# The mid-size study that tests the paper's claims on one workstation (about 24 patients at 96x96,
# 1,000 iterations, 14 trainings; ~60-90 min on 2 cores): results in outputs/study_mid/report.
study-mid: $(STAMP)
	$(BIN)/vce run --profile mid --data data_mid --out outputs/study_mid

paper: $(STAMP)
	$(BIN)/vce run --profile paper --data data_paper --out outputs/study_paper

test: $(STAMP)
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# Speed/memory benchmarks (ratios vs a reference / the measured peak): benchmarks/README.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

bench-short: $(STAMP)
	$(BIN)/python benchmarks/run.py --short

# The GPU path measured (paper profile on CUDA, tiny on CPU; under 8 min): benchmarks/README.md.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out outputs/gpu_check

compile: $(STAMP)
	$(BIN)/python -m pipelines.vce_study

dvc-repro: $(STAMP)
	test -d data || $(BIN)/vce synth --out data
	$(BIN)/dvc repro

mlflow-ui: $(STAMP)
	bash mlflow/ui.sh

# The container image ghcr.io/vce-project/vce:0.1.0 built here with podman (docs/container.md):
# a Debian bookworm base made with mmdebstrap, this machine's pip configuration for the build only.
image:
	bash scripts/image/build.sh

# The image for real: vce --help and the cohort step inside it, the tiny study through kfp's DockerRunner.
image-test: $(STAMP)
	$(BIN)/pytest -q -m slow tests/test_image.py

clean:
	rm -rf outputs
