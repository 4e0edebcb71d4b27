# backprop-lab: every target sets itself up (uv + the committed uv.lock) before it runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PY := $(UV) run --locked --no-sync python
SWEEP ?= default
# Jobs at once (hydra.launcher.n_jobs); empty: one per core (the backprop_lab launcher's default).
JOBS ?=
SPACE ?= default
TRIALS ?= 40
LAUNCHER ?= basic
RAY_ADDRESS ?=
ARGS ?=
DRY ?= 0
DISTRIBUTED ?= 0
TEST_ARGS ?=
# pytest-xdist: one worker per core; tests sharing a session store run on one worker (tests/conftest.py).
# `make test XDIST=` (or TEST_ARGS=-n0) runs the suite in one process, e.g. for pdb.
XDIST ?= -n auto --dist loadgroup

# No outbound traffic from MLflow, Ray or Hydra's plugins. backprop_lab.env.QUIET_ENV, copied for
# the processes that start before Python can import the package (uv, pytest's plugins, notebook
# kernels, `mlflow` commands); tests/test_env.py keeps the two equal.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export RAY_USAGE_STATS_ENABLED := 0
export BPL_DISTRIBUTED := $(DISTRIBUTED)
# train/sweep: ARGS reaches scripts/train.py unparsed by the shell (it splits them like a command
# line itself), so `ARGS='seed=range(0,3)'` and `ARGS="model.hidden_sizes=[8,4]"` arrive intact.
train sweep: export BPL_ARGS = $(ARGS)

.PHONY: help setup test test-fast test-distributed train sweep search ui server notebooks lint bench bench-tracking bench-plots bench-launchers bench-sweep reproduce clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@# --compile-bytecode: the environment may set PYTHONDONTWRITEBYTECODE=1, and every new
	@# interpreter would then recompile mlflow (10-20 s a command).
	@$(UV) sync --locked --all-extras --all-groups --compile-bytecode --quiet
	@touch $@

setup: .venv/.synced ## Create .venv from uv.lock (bootstraps uv with pip when missing)

test: setup ## Run the test suite on every core (DISTRIBUTED=1 adds the Ray/Slurm/server tests; XDIST= runs it in one process)
	@$(UV) run --locked --no-sync pytest $(XDIST) $(TEST_ARGS)

test-fast: ## The suite without its `slow` tests (real sweeps, servers, browser, notebooks): ~2 min, for the edit-test loop
	@$(MAKE) --no-print-directory test TEST_ARGS='-m "not slow" $(TEST_ARGS)'

test-distributed: ## Run only the distributed tests (Ray cluster, tracking server, Slurm)
	@$(MAKE) --no-print-directory test DISTRIBUTED=1 TEST_ARGS="-m distributed $(TEST_ARGS)"

train: setup ## One run with the defaults; overrides pass through: make train ARGS="optim.lr=0.3"
	@$(PY) scripts/train.py

sweep: setup ## Run a sweep preset (SWEEP=default|seeds|datasets|optimizers|deep_init, JOBS=N, LAUNCHER=basic|ray|slurm, RAY_ADDRESS=host:port, DRY=1 lists the jobs, ARGS=overrides)
	@case '$(subst ','',$(JOBS))' in *[!0-9]*|0*) echo "JOBS=$(subst ','',$(JOBS)): must be a positive integer (jobs at once; empty: one per core)" >&2; exit 2;; esac
	@case '$(subst ','',$(LAUNCHER))' in basic|ray|slurm) ;; *) echo "LAUNCHER=$(subst ','',$(LAUNCHER)): must be one of basic, ray, slurm" >&2; exit 2;; esac
	@case '$(subst ','',$(DRY))' in 0|1) ;; *) echo "DRY=$(subst ','',$(DRY)): must be 0 or 1" >&2; exit 2;; esac
	@$(PY) scripts/train.py --multirun +sweep=$(SWEEP) \
	  $(if $(JOBS),hydra.launcher.n_jobs=$(JOBS)) \
	  $(if $(filter ray,$(LAUNCHER)),hydra/launcher=ray_cluster $(if $(RAY_ADDRESS),hydra.launcher.ray.init.address=$(RAY_ADDRESS))) \
	  $(if $(filter slurm,$(LAUNCHER)),hydra/launcher=slurm) $(if $(filter 1,$(DRY)),hydra.sweeper.dry_run=true)

search: setup ## Optuna search (TPE + median pruning), each trial's seeds child runs (SPACE=default|optimizers TRIALS=40 JOBS=1 ARGS=overrides)
	@$(PY) scripts/search.py SPACE=$(SPACE) TRIALS=$(TRIALS) JOBS=$(or $(JOBS),1) $(ARGS)

ui: setup ## MLflow UI over the same store on 127.0.0.1 (PORT=5000); Ctrl-C stops it
	@$(PY) scripts/serve.py ui $(ARGS)

server: setup ## MLflow tracking server for remote workers (HOST=127.0.0.1 PORT=5001 ALLOWED_HOSTS=... STORE_URI=...)
	@$(PY) scripts/serve.py server $(ARGS)

notebooks: setup ## Execute the analysis notebooks against your store; HTML in reports/
	@$(PY) scripts/run_notebooks.py $(ARGS)

lint: setup ## ruff (rules in pyproject.toml) over src scripts tests, and notebooks stored without outputs
	@$(UV) run --locked --no-sync ruff check src scripts tests
	@$(PY) scripts/strip_notebooks.py --check

bench: setup ## Engine speed: this MLP vs the notebook's loop vs scikit-learn
	@$(PY) scripts/bench_engine.py $(ARGS)

bench-launchers: setup ## Server/Ray start-up and one sweep with basic, forked N=2, joblib N=2, Ray
	@$(PY) scripts/bench_launchers.py $(ARGS)

bench-tracking: setup ## Tracking overhead of the default sweep vs naive per-epoch logging
	@$(PY) scripts/bench_tracking.py $(ARGS)

bench-sweep: setup ## Issue 14: compute floor, cold sweep, scikit-learn peer, store bytes/run, 1,000-run curve (ARGS="--only floor,cold")
	@$(PY) scripts/bench_sweep.py $(ARGS)

bench-plots: setup ## Per-run figures: plain matplotlib vs the cached-figure renderer
	@$(PY) scripts/bench_plots.py --blas-threads 1 $(ARGS)

reproduce: setup ## Re-run a logged run from its stored config: make reproduce RUN_ID=...
	@$(PY) scripts/reproduce.py $(RUN_ID) $(ARGS)

clean: ## Remove run outputs (keeps mlflow.db and mlartifacts/)
	rm -rf outputs multirun reports .pytest_cache
