# The two entry points of the README. Each creates .venv when it is missing.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
# The testbed models are tiny: a second thread barely helps a stage (a train item: 29 s with one, 30 s with two),
# and one thread everywhere keeps the runs of `make run`, `dvc repro` and the tests bit-identical.
export OMP_NUM_THREADS ?= 1
# Pipeline stages run side by side when the DAG allows: one per core (the testbed's stages are single-threaded).
JOBS ?= $(shell nproc)

.PHONY: run test setup calibrate

setup: .venv/.installed

.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 -e '.[dev]'
	touch $@

run: setup
	.venv/bin/sclora run --jobs $(JOBS)

test: setup
	$(PY) -m pytest -q

# The testbed's forgetting over builds and seeds (artifacts/calibration/), builds side by side.
calibrate: setup
	$(PY) -m tasks calibrate -S calibrate.jobs=$(JOBS)
