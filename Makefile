# Every target bootstraps its own virtualenv: a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench bench-side-by-side bench-inprocess bench-instructions bench-counted bench-contracts serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway demo --config config/demo.yaml

serve: $(STAMP)
	$(BIN)/gateway serve --config config/gateway.yaml

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

# The benchmark needs wrk (Debian) and taskset (util-linux); it installs wrk when missing.
bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m loadtests.bench $(BENCH_ARGS)

# The plain gateway and a variant on one core at once: the overhead, with the host's noise cancelled out.
bench-side-by-side: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m loadtests.side_by_side $(BENCH_ARGS)

# The data plane's own Python per request, in one process (no sockets): small costs, measured steadily.
bench-inprocess: $(STAMP)
	$(BIN)/python -m loadtests.inprocess $(BENCH_ARGS)

# The same, counted in instructions under valgrind (Debian; installed when missing): the same each run.
bench-instructions: $(STAMP)
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(BIN)/python -m loadtests.inprocess --instructions --rounds 1 $(BENCH_ARGS)

# The whole `gateway serve` process under wrk, counted under valgrind: the loss its instructions predict.
bench-counted: $(STAMP)
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m loadtests.counted $(BENCH_ARGS)

bench-contracts: $(STAMP)
	$(BIN)/python -m loadtests.contracts_bench

clean:
	rm -rf $(VENV) .coverage .coverage.* .mypy_cache .ruff_cache .pytest_cache build *.egg-info
