# The entry points of the README. Each creates .venv when it is missing.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
# Pipeline stages run side by side when the DAG allows, one per core; the flow gives each stage its share of the
# cores (the testbed build, alone, gets all). Tests and the testbed check run one thread per process.
JOBS ?= $(shell nproc)

.PHONY: run test test-fast setup testbed-check protocol select real real-protocol

setup: .venv/.installed

.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 -e '.[dev]'
	touch $@

run: setup
	.venv/bin/sclora run --jobs $(JOBS)

# One pytest process per core (pytest-xdist), a test file to a process: a file's module and session fixtures
# (the tiny `dvc repro`, the Prefect and MLflow servers) are made once, in the process that runs it.
PYTEST := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(JOBS) --dist loadfile

test: setup
	$(PYTEST)

# Everything but whole pipelines, real servers and the real model (the markers in pyproject.toml): the tier to run
# while editing.
test-fast: setup
	$(PYTEST) -m "not slow and not services and not real"

# The testbed's forgetting over builds and seeds (artifacts/testbed_check/), builds side by side.
testbed-check: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m tasks testbed_check -S testbed_check.jobs=$(JOBS)

# The comparison protocol (docs/protocol.md): the primary contrast fixed in frontier.primary (sclora 0.9 against
# LoRA, knowledge kept at validation utility 0.8, on facts that chose nothing), confirmed on PROTOCOL_BUILDS testbed
# builds that no earlier run used, frontier.seeds seeds each: both configurations at every rate of ONE absolute
# learning-rate grid (frontier.lrs), frontier.max_steps steps, scored at frontier.checkpoints. The report
# (artifacts/frontier/report/) reads it at matched utility and at matched rate, on half the budget and every other
# rate, with builds as units (builds in general). The overrides are written into params.yaml, as `sclora run -S`
# does (`git checkout params.yaml` returns to the quick run). Every configuration and the secondary claims:
# `sclora frontier --params configs/protocol-full.yaml`.
PROTOCOL_BUILDS := [10,11,12,13,14,15]
protocol: setup
	.venv/bin/sclora frontier --jobs $(JOBS) -S 'frontier.builds=$(PROTOCOL_BUILDS)'

# The beta that learns most within params' select.forgetting_budget, probed with select.seeds seeds, registered.
select: setup
	.venv/bin/sclora select-beta --jobs $(JOBS)

# The real model: SmolLM2-135M-Instruct and real safety and knowledge data from the package registries, through the
# whole pipeline (configs/real-smollm2.yaml; docs/real-model.md). Like `sclora run --params`, it writes the config
# onto params.yaml (`git checkout params.yaml` returns to the quick run).
REAL := configs/real-smollm2.yaml
real: setup
	.venv/bin/sclora run --jobs $(JOBS) --params $(REAL)

# The frontier protocol on the real model: frontier.configs at every rate of frontier.lrs, frontier.seeds seeds,
# scored at frontier.checkpoints, on the real source's one model; its report in artifacts/frontier/report/.
real-protocol: setup
	.venv/bin/sclora frontier --jobs $(JOBS) --params $(REAL) -S 'frontier.real=[real]'
