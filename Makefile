# SpFDE — the two commands are `make install` and `make test`; `make run` trains the quickstart.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch pins that install from this workplace's local mirror; elsewhere override, e.g.
#   make install TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=
# two pytest-xdist workers of one torch thread each (faster than one worker on 2 cores; see README, Development);
# PYTEST_WORKERS= runs the suite in one process
PYTEST_WORKERS ?= -n 2 --dist loadgroup
# the sweep tests' single-node SLURM cluster, when this machine can run one
SLURM_UP := bash tests/cluster/slurm-up.sh || echo "(no SLURM cluster here: its tests will be skipped)"

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast coverage lint bench bench-plan bench-gpu bench-data gpu-session ablation-freeze ablation-sieve sweep-smoke docs docs-smoke slurm-up slurm-down clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,search]'
	@# an environment made before the search had its own sweeper: Hydra would still load the old plugin
	$(PY) -m pip uninstall -q -y hydra-optuna-sweeper 2>/dev/null || true
	touch $@

install: $(VENV)/.installed  ## create .venv with torch and the package (editable) + dev tools + the search extra

run: install  ## train the offline quickstart (digits, CPU); Hydra overrides via ARGS="..."
	$(PY) -m spfde.run experiment=quickstart $(ARGS)

test: install lint docs  ## lint, build the docs site, then the whole test suite (slow tests included; starts a local SLURM cluster when it can)
	@$(SLURM_UP)
	$(PY) -m pytest $(PYTEST_WORKERS) --durations=15 $(ARGS)

test-fast: install  ## the test suite without the slow tests (every module still runs)
	$(PY) -m pytest $(PYTEST_WORKERS) -m "not slow" --durations=5 $(ARGS)

coverage: install  ## branch coverage of the package over the whole suite (subprocesses included); prints the total
	@$(SLURM_UP)
	$(PY) -m coverage erase
	$(PY) -m coverage run -m pytest $(PYTEST_WORKERS) -q $(ARGS)
	@$(PY) -m coverage combine -q
	@$(PY) -m coverage report > coverage.txt
	@echo "branch coverage of spfde and hydra_plugins: $$($(PY) -m coverage report --format=total)% (per module: coverage.txt)"

bench: install  ## benchmarks that print numbers and ratios (methods vs dense, frozen-prefix step time, Fig. 4 memory, Table 2 and 3 FLOPs)
	$(PY) -m spfde.bench methods --epochs 10
	$(PY) -m spfde.bench freeze-step
	$(PY) -m spfde.bench memory
	$(PY) -m spfde.bench table2-flops
	$(PY) -m spfde.bench table3-flops

bench-plan: install  ## spfde.plan's calibrated wall-clock estimates vs real CPU runs (3 configs), as ratios; extra overrides via ARGS="..."
	$(PY) -m spfde.bench plan $(ARGS)

bench-gpu: install  ## on a GPU: harness vs bare model img/s (batch 64, 512), freezing speed-up and memory, SpFDE wall-clock
	$(PY) -m spfde.bench gpu $(ARGS)

bench-data: install  ## on a GPU: folder input pipeline, bare ResNet-50 vs harness img/s per loader (pil/gpu/dali), freezing
	$(PY) -m spfde.bench data $(ARGS)

gpu-session:  ## on a lent GPU machine (no install: its python3): every pending GPU check in under 8 min, see tests/gpu/session.sh
	bash tests/gpu/session.sh

ablation-freeze: install  ## paper check: freeze 0/0.1/0.2/0.3 x four schemes x 3 seeds on digits (~20 min)
	$(PY) -m spfde.bench ablation-freeze --seeds 0 1 2 --epochs 30

ablation-sieve: install  ## paper check: sieve 0/0.1/0.2/0.3 x circular/oneshot/random x 3 seeds + SpFDE 0.2+0.2 on digits (~12 min)
	$(PY) -m spfde.bench ablation-sieve --seeds 0 1 2 --epochs 20 interval=2

sweep-smoke: install  ## the tiny digits sweep (2 x 2 runs, logged to wandb offline) with the local launcher; its report follows
	$(PY) -m spfde.run -m +sweep=smoke launcher=local

docs: install  ## build the documentation site (mkdocs, --strict: a broken link or a missing page fails) into site/
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-smoke: install  ## regenerate docs/smoke (smoke sweep runs, report, dashboard spec; screenshot if chromium is here); ARGS=--report-only: no training
	$(PY) docs/make_docs.py $(ARGS)

slurm-up: ## start a single-node SLURM test cluster on this machine (root, Debian; idempotent)
	bash tests/cluster/slurm-up.sh

slurm-down: ## stop it
	bash tests/cluster/slurm-down.sh

lint: install  ## ruff, and import-linter: the layers of the code (pyproject.toml) hold, no import circles
	$(VENV)/bin/ruff check spfde tests hydra_plugins
	$(VENV)/bin/lint-imports

clean:  ## remove caches (keeps .venv, data/ and outputs/)
	rm -rf .pytest_cache .ruff_cache $$(find . -name __pycache__ -not -path './.venv/*')
