# The one place for commands. Every target creates the virtualenv first if it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run test test-fast lint format bench bench-replication bench-scale-keys bench-scale sim chaos crash soak fuzz screenshot clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: install
	$(BIN)/shareddb cluster up --nodes 2 --base-port 8080 --data ./data

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# The suite runs on JOBS workers (pytest-xdist); most tests wait on node processes, not the CPU.
JOBS ?= 2

test: lint
	$(BIN)/pytest -n $(JOBS) --dist worksteal

test-fast: install
	$(BIN)/pytest -m "not cluster"

# Benchmarks (bench/README.md). ARGS goes to the script: for bench, ARGS=--no-expiry leaves out the
# mass-expiry section (about 1 of its 5 minutes), ARGS="--only expiry" runs only that section,
# ARGS="--only txn,put" two scenarios and the baseline, ARGS=--help lists every option.
bench: install
	$(BIN)/python bench/run.py $(ARGS)

bench-replication: install
	$(BIN)/python bench/replication.py $(ARGS)

# One node at 10k, 100k and 1M keys (ARGS="--keys 10000,100000,1000000,10000000" adds 10M, which
# needs about 3 GB of disk): memory per key, GET, listing and digest latency.
# What a write costs as the cluster grows: mesh and change bus at 3, 5 and 9 nodes, the bus at 25
# (bench/scale_cluster.py; needs nats-server).
bench-scale: install
	$(BIN)/python bench/scale_cluster.py $(ARGS)

bench-scale-keys: install
	$(BIN)/python bench/scale.py $(ARGS)

# Fault testing (see "Guarantees and how we test them" in the README). SEEDS is how many runs,
# SEED replays one run. DURATION is seconds: 60 for chaos, 120 for soak unless given.
SEEDS    ?=
SEED     ?=
DURATION ?=
CYCLES   ?= 1000
SEED_ARGS = $(if $(SEEDS),--seeds $(SEEDS)) $(if $(SEED),--seed $(SEED))

sim: install
	$(BIN)/python -m tests.sim $(SEED_ARGS) $(ARGS)

chaos: install
	$(BIN)/python -m tests.chaos --duration $(or $(DURATION),60) $(SEED_ARGS) $(ARGS)

soak: install
	$(BIN)/python -m tests.soak --duration $(or $(DURATION),120) $(if $(SEED),--seed $(SEED)) $(ARGS)

crash: install
	$(BIN)/python -m tests.crash --cycles $(CYCLES) $(if $(SEED),--seed $(SEED)) $(ARGS)

# The README's picture of the dashboard, from a two-node cluster in a headless Chromium.
screenshot: install
	$(BIN)/python -m tests.browser.screenshot docs/dashboard.png

# Schemathesis over a node's OpenAPI document with every check: EXAMPLES cases per operation (20 in
# `make test`), SEED to replay a run (without it, each run picks a seed and prints it).
EXAMPLES ?= 1000
fuzz: install
	FUZZ_EXAMPLES=$(EXAMPLES) FUZZ_SEED=$(SEED) FUZZ_TIME_LIMIT=3600 \
		$(BIN)/pytest -q -rP -p no:cacheprovider tests/fuzz $(ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
