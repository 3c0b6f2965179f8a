# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench mutation clean

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

# Mutation testing (not CI: slow). Modules and tests are in pyproject's [tool.mutmut];
# MUTANTS narrows the run, e.g. make mutation MUTANTS='harness.stats* harness.engine*'.
# Prints the kill rate per module; docs/testing.md records the last figures.
MUTANTS ?=
mutation: $(STAMP)
	$(BIN)/mutmut run $(MUTANTS) || true
	@$(BIN)/mutmut results --all true | awk -F': ' ' \
	  { n = $$1; sub(/^ +/, "", n); sub(/__mutmut_[0-9]+$$/, "", n); sub(/\.[^.]*$$/, "", n); \
	    st = $$NF; c[n SUBSEP st]++; seen[n] = 1; tot[st]++ } \
	  END { for (m in seen) { k = c[m SUBSEP "killed"] + c[m SUBSEP "timeout"]; \
	          a = k + c[m SUBSEP "survived"] + c[m SUBSEP "no tests"] + c[m SUBSEP "suspicious"]; \
	          if (a) printf "%-26s killed %4d of %4d  %5.1f%%\n", m, k, a, 100 * k / a } \
	        K = tot["killed"] + tot["timeout"]; \
	        A = K + tot["survived"] + tot["no tests"] + tot["suspicious"]; \
	        if (A) printf "kill rate: %d of %d checked mutants = %.1f%% (not checked: %d)\n", \
	          K, A, 100 * K / A, tot["not checked"] }'

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info mutants
