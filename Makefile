# peerline: two commands on a fresh machine (`make demo`, `make test`).
# Everything bootstraps itself: the venv and the pinned dependencies come from constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint types unit demo bench fuzz clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check node dht rendezvous cli tests bench
	$(BIN)/ruff format --check node dht rendezvous cli tests bench

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test: lint types $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests

demo: $(STAMP)
	$(BIN)/peerline demo

bench: $(STAMP)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.readme

fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
