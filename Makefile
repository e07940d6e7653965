# Workbench: one command to set up, one to test.
#
#   make env          create $(VENV): CPU torch first, then the package (editable) with the
#                     notebooks and test extras, and the Jupyter kernel "python3" -> that Python
#   make test         the whole suite: ruff (lint + format check), pytest tests/ (unit +
#                     papermill notebook runs), nbval over notebooks/, the browser test
#   make demo         python -m workbench demo $(DEMO_ARGS)
#   make help         every target and variable
#
# Every target that needs Python depends on the env stamp, so a fresh clone needs only
# `make test`. Override variables on the command line: `make test JOBS=1 PYTEST_ARGS="-k sweep"`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# ---- settings -------------------------------------------------------------------------------
PYTHON          ?= python3
VENV            ?= .venv
PY              := $(VENV)/bin/python
TORCH_SPEC      ?= torch==2.13.0
EXTRAS          ?= notebooks,test
PIP_FLAGS       ?= --progress-bar off
JOBS            ?= 2
# The whole of `make test` (both steps together) is killed after this many seconds.
TEST_TIMEOUT    ?= 2400
# nbval runs the notebooks one at a time: each kernel uses 2 torch threads, and two kernels on
# 2 cores oversubscribe OpenMP and run several times slower than one after the other.
# A notebook cell running longer than this fails under nbval.
NBVAL_CELL_TIMEOUT ?= 900
PYTEST_ARGS     ?=
NBVAL_ARGS      ?=
DEMO_ARGS       ?=
CHECKPOINT_ARGS ?=
BENCH_ARGS      ?=
BENCH_THREADS   ?= 2
# Third-party deprecation chatter is hidden in tests and kernels; pyproject's filterwarnings
# turns the workbench's own deprecations back on inside pytest.
TEST_PYTHONWARNINGS ?= ignore::DeprecationWarning,ignore::PendingDeprecationWarning

STAMP     := $(VENV)/.workbench-env.stamp
ENV_CHECK := import sys; assert sys.version_info >= (3, 11); import torch, workbench, nbformat, papermill, nbval, ipykernel, pytest, xdist, pandas, plotly, ruff
TIMEOUT   := $(shell command -v timeout || command -v gtimeout)

# Environment of `make test` (and of every kernel it starts): tests never download anything,
# the kernel "python3" is looked up in the venv first, and tokenizers do not warn about forks.
TEST_ENV := WORKBENCH_TEST=1 \
	PYTHONWARNINGS="$(TEST_PYTHONWARNINGS)" \
	JUPYTER_PLATFORM_DIRS=1 \
	JUPYTER_PREFER_ENV_PATH=1 \
	HF_HUB_OFFLINE=1 \
	HF_DATASETS_OFFLINE=1 \
	TOKENIZERS_PARALLELISM=false

# A venv whose interpreter no longer starts (Python moved, half-deleted venv) counts as missing:
# the stamp is then rebuilt even though the file exists.
ENV_BROKEN := $(if $(wildcard $(STAMP)),$(shell "$(PY)" -c "import sys" >/dev/null 2>&1 || echo yes))

# Delete $(VENV), but only if it really is a virtualenv (one shell command line).
remove_venv = if [ -e "$(VENV)" ]; then \
  if [ ! -f "$(VENV)/pyvenv.cfg" ]; then \
    echo "!! $(VENV) exists but is not a virtualenv (no pyvenv.cfg); refusing to delete it" >&2; \
    exit 1; \
  fi; \
  echo ">> [env] removing $(VENV)"; \
  rm -rf "$(VENV)"; \
fi

.PHONY: help env demo test checkpoint checkpoints benchmarks strip check-notebooks clean distclean FORCE

help:
	@echo "Targets:"
	@echo "  make env              create $(VENV) (recreates it if it is broken)"
	@echo "  make test             pytest tests/ (unit + papermill), then nbval over notebooks/"
	@echo "  make demo             $(PY) -m workbench demo \$$(DEMO_ARGS)"
	@echo "  make checkpoint       $(PY) -m workbench build-checkpoints \$$(CHECKPOINT_ARGS)"
	@echo "  make benchmarks       run every benchmarks/*.py with $(BENCH_THREADS) threads"
	@echo "  make strip            strip outputs/run metadata from notebooks/*.ipynb in place"
	@echo "  make check-notebooks  list notebooks that are not stripped (exit 1 if any)"
	@echo "  make clean            caches and build leftovers (keeps $(VENV))"
	@echo "  make distclean        clean, and delete $(VENV)"
	@echo "Variables: VENV=$(VENV) PYTHON=$(PYTHON) TORCH_SPEC=$(TORCH_SPEC) EXTRAS=$(EXTRAS)"
	@echo "  JOBS=$(JOBS) TEST_TIMEOUT=$(TEST_TIMEOUT)s PYTEST_ARGS NBVAL_ARGS DEMO_ARGS BENCH_ARGS"

# ---- environment ----------------------------------------------------------------------------
env:
	@if [ -f "$(STAMP)" ] && ! "$(PY)" -c "$(ENV_CHECK)" >/dev/null 2>&1; then \
	  echo ">> [env] $(VENV) is broken (its Python cannot import the workbench stack): recreating it"; \
	  $(remove_venv); \
	fi
	@$(MAKE) --no-print-directory "$(STAMP)"
	@echo ">> [env] ok: $(VENV) ($$("$(PY)" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)'))"

$(STAMP): pyproject.toml $(if $(ENV_BROKEN),FORCE)
	@if ! "$(PY)" -c "import sys" >/dev/null 2>&1; then \
	  $(remove_venv); \
	  if ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	    echo "!! $(PYTHON) is missing or older than 3.11; run: make env PYTHON=/path/to/python3.11" >&2; \
	    exit 1; \
	  fi; \
	  echo ">> [env] creating $(VENV) with $$($(PYTHON) -c 'import sys; print(sys.executable, sys.version.split()[0])')"; \
	  $(PYTHON) -m venv "$(VENV)"; \
	else \
	  echo ">> [env] reusing $(VENV); (re)installing packages"; \
	fi
	@echo ">> [env] installing $(TORCH_SPEC) first, so that pip never pulls a CUDA build"
	"$(PY)" -m pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	@echo ">> [env] installing the workbench (editable) with extras [$(EXTRAS)]"
	"$(PY)" -m pip install $(PIP_FLAGS) -e ".[$(EXTRAS)]"
	@echo ">> [env] registering Jupyter kernel 'python3' -> $(PY)"
	"$(PY)" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (workbench)"
	@"$(PY)" -c "import sys, torch, workbench; print('>> [env] python', sys.version.split()[0], '| torch', torch.__version__, '| workbench', getattr(workbench, '__version__', '?'), '|', sys.prefix)"
	@touch "$(STAMP)"

FORCE:

# ---- running --------------------------------------------------------------------------------
demo: $(STAMP)
	"$(PY)" -m workbench demo $(DEMO_ARGS)

checkpoint checkpoints: $(STAMP)
	"$(PY)" -m workbench build-checkpoints $(CHECKPOINT_ARGS)

# Both steps share one TEST_TIMEOUT budget; both run even if the first fails, and the target
# fails if either did. nbval exits 5 ("no tests") on a folder without notebooks, so that step is
# skipped when notebooks/ has no .ipynb.
test: $(STAMP)
	@deadline=$$(( $$(date +%s) + $(TEST_TIMEOUT) )); rc0=0; rc1=0; rc2=0; rc3=0; nbval=ran; \
	echo ">> [test 0/3] lint: ruff check and ruff format --check"; \
	{ "$(VENV)/bin/ruff" check . && "$(VENV)/bin/ruff" format --check .; } || rc0=$$?; \
	echo ">> [test 1/3] unit + papermill notebook tests: pytest -n $(JOBS) tests (budget $(TEST_TIMEOUT)s)"; \
	$(TEST_ENV) $(if $(TIMEOUT),$(TIMEOUT) -k 30 $(TEST_TIMEOUT)) \
	  "$(PY)" -m pytest -n $(JOBS) -m "not browser" tests $(PYTEST_ARGS) || rc1=$$?; \
	if compgen -G "notebooks/*.ipynb" >/dev/null; then \
	  left=$$(( deadline - $$(date +%s) )); \
	  if [ "$$left" -le 60 ]; then \
	    echo "!! [test 2/3] no time left for nbval ($$left s of $(TEST_TIMEOUT) s)"; rc2=124; \
	  else \
	    echo ">> [test 2/3] nbval: every notebooks/*.ipynb runs top to bottom (budget $${left}s)"; \
	    $(TEST_ENV) $(if $(TIMEOUT),$(TIMEOUT) -k 30 $$left) \
	      "$(PY)" -m pytest -p no:python --nbval-lax --nbval-current-env \
	        --nbval-cell-timeout=$(NBVAL_CELL_TIMEOUT) -n 0 \
	        notebooks/ $(NBVAL_ARGS) || rc2=$$?; \
	  fi; \
	else \
	  echo ">> [test 2/3] notebooks/ has no .ipynb: nbval step skipped"; nbval=skipped; \
	fi; \
	echo ">> [test 3/3] browser: notebook 05 in JupyterLab + headless Chromium"; \
	bash tools/install_browser.sh; \
	$(TEST_ENV) $(if $(TIMEOUT),$(TIMEOUT) -k 30 900) "$(PY)" -m pytest -m browser tests/browser || rc3=$$?; \
	describe() { case "$$1" in 0) echo passed;; 124|137) echo "TIMED OUT";; *) echo "FAILED (exit $$1)";; esac; }; \
	if [ "$$nbval" = skipped ]; then r2=skipped; else r2=$$(describe $$rc2); fi; \
	echo ">> [test] ruff: $$(describe $$rc0); pytest tests: $$(describe $$rc1); nbval notebooks: $$r2; browser: $$(describe $$rc3)"; \
	[ "$$rc0" -eq 0 ] && [ "$$rc1" -eq 0 ] && [ "$$rc2" -eq 0 ] && [ "$$rc3" -eq 0 ]

benchmarks: $(STAMP)
	@shopt -s nullglob; failed=(); ran=0; \
	for f in benchmarks/*.py; do \
	  case "$$(basename "$$f")" in _*) continue;; esac; \
	  ran=$$((ran + 1)); \
	  echo ">> [bench] $$f ($(BENCH_THREADS) threads)"; \
	  OMP_NUM_THREADS=$(BENCH_THREADS) MKL_NUM_THREADS=$(BENCH_THREADS) \
	    "$(PY)" "$$f" $(BENCH_ARGS) || failed+=("$$f"); \
	done; \
	if [ "$$ran" -eq 0 ]; then echo ">> [bench] no benchmarks/*.py"; fi; \
	if [ "$${#failed[@]}" -gt 0 ]; then echo "!! [bench] failed: $${failed[*]}" >&2; exit 1; fi

# ---- notebooks and housekeeping -------------------------------------------------------------
strip: $(STAMP)
	"$(PY)" tools/strip_notebooks.py

check-notebooks: $(STAMP)
	"$(PY)" tools/strip_notebooks.py --check

clean:
	rm -rf build dist ./*.egg-info .pytest_cache .ruff_cache
	find . \( -path ./.git -o -path "./$(VENV)" -o -path "$(VENV)" \) -prune -o \
	  \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -prune -exec rm -rf {} +

distclean: clean
	@$(remove_venv)
