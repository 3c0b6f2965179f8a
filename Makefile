# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/harness run configs/quickstart.yaml

# The browser test drives Debian's chromium through Playwright (no browser download).
CHROMIUM_OK = command -v chromium >/dev/null 2>&1 || test -x /usr/lib/chromium/chromium
APT = $(if $(shell test "$$(id -u)" = 0 && echo root),,sudo )apt-get

test: $(STAMP)
	@$(CHROMIUM_OK) || ($(APT) update && $(APT) install -y chromium)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
