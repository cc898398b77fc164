# Tally: every target creates what it needs; a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
BASE_STAMP := $(VENV)/.installed-base
DEMO_DIR ?= .cache/demo

.PHONY: install demo test check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the full install (tests, checks, `tally report`, object stores) includes the base one (what
# a worker of files and HTTP needs); the kernels' C extensions are built by the install,
# and rebuilt when their sources change
NATIVE := setup.py $(wildcard src/tally/kernels/_native*.[ch] src/tally/kernels/_fields*.[ch])

$(STAMP): pyproject.toml $(NATIVE) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,report,cloud,functions]'
	touch $(STAMP) $(BASE_STAMP)

$(BASE_STAMP): pyproject.toml $(NATIVE) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(BASE_STAMP)

install: $(STAMP)

# Azurite, the local Azure Storage server of the object-storage tests (package.json pins it)
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

demo: $(BASE_STAMP)
	$(BIN)/tally gen $(DEMO_DIR) --partitions 16 --partition-size 4MiB --seed 1
	time $(BIN)/tally run $(DEMO_DIR)/filelist.csv --workers 4 --top 25

test: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest

check: $(STAMP)
	$(BIN)/ruff check src tests bench deploy
	$(BIN)/ruff format --check src tests bench deploy
	$(BIN)/mypy

# TPC-H at SF 1 by default (a few minutes with every peer); `make bench TPCH_SF="1 10"` adds
# SF 10 (7.8 GB generated into .cache/tpch/sf10 on first use, one round: about 15 minutes)
TPCH_SF ?= 1

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,report,peers,spark]'
	$(BIN)/python bench/throughput.py --spark
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/kernel_speed.py
	for sf in $(TPCH_SF); do \
	  rounds=$$([ $$sf = 1 ] && echo 3 || echo 1); \
	  $(BIN)/python bench/tpch.py --sf $$sf --rounds $$rounds || exit 1; \
	done

clean:
	rm -rf $(VENV) node_modules .cache .pytest_cache .mypy_cache .ruff_cache
