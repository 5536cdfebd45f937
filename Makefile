# Two entry points: `make demo` (main job on shipped data) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[all]"
	touch $(STAMP)

# compiled XLA programs shared by the test processes (xdist workers, README blocks and CLI runs
# in fresh processes) and kept between runs on this machine (emptied past 1 GB); results do
# not depend on it
JAX_TEST_CACHE ?= $(HOME)/.cache/jaxmat/jax-tests
PYTEST := [ "$$(du -sm $(JAX_TEST_CACHE) 2>/dev/null | cut -f1)" -lt 1024 ] 2>/dev/null \
	|| rm -rf $(JAX_TEST_CACHE); \
	JAX_COMPILATION_CACHE_DIR=$(JAX_TEST_CACHE) JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5 \
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

.PHONY: venv demo test test-all bench clean
venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jaxmat.demo

test: $(STAMP)
	$(PYTEST)

test-all: $(STAMP)
	$(PYTEST) -m "slow or not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
