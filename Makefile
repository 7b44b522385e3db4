# Every target creates .venv when it is missing (or when pyproject.toml changed), then runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cueaudit-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench dashboard lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	@touch $(STAMP)

## make demo: synthetic cue datasets + real photos -> train -> audit on local Ray -> verdicts
## (`cueaudit demo` exits with the gate's code: 1, because the biased models fail as intended)
demo: $(STAMP)
	@$(VENV)/bin/cueaudit demo; code=$$?; \
	if [ $$code -eq 1 ]; then echo "(exit code 1 from the gate: the biased models fail, as the benchmark intends)"; \
	elif [ $$code -ne 0 ]; then exit $$code; fi

## make test: the whole suite except benchmarks (slow end-to-end checks included)
test: $(STAMP)
	$(PY) -m pytest -m "not bench" $(PYTEST_ARGS)

## make test-fast: the quick inner loop (no slow, ray or browser tests)
test-fast: $(STAMP)
	$(PY) -m pytest -m "not bench and not slow and not ray and not browser" $(PYTEST_ARGS)

## make bench: performance measurements (BENCHMARKS.md), then the gate's own accuracy on the held-out
## planted-cue grid (CALIBRATION.json, CALIBRATION.md and README's table)
bench: $(STAMP)
	$(PY) -m bench.run --out BENCHMARKS.md
	$(PY) -m bench.verdicts

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline workers common dashboard cuebench tests bench

clean:
	rm -rf demo-results .cueaudit test-artifacts .pytest_cache
