# Two commands for a new user: `make demo` and `make test`. Both bootstrap .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.caltrain-installed
OUT    ?= out/demo

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,baselines]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m caltrain demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/ingest_throughput.py
	$(PY) benchmarks/training_overhead.py
	$(PY) benchmarks/inference_load.py
	$(PY) benchmarks/trace_scale.py
	$(PY) benchmarks/accountability.py --quick --out out/bench-accountability

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
