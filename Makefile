# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench mutation known-bugs clean

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
# SAMPLE=N runs a seeded random sample of N of the mutants MUTANTS matches (SEED, default 19),
# e.g. make mutation MUTANTS='harness.simulator*' SAMPLE=120; SAMPLE='*=30 harness.store=15'
# draws N per module instead (stratified; `*` is every other module). Runs niced on
# MUTMUT_CHILDREN workers. Prints the kill rate per module with a Wilson 95% interval;
# docs/testing.md records the last figures.
MUTANTS ?=
SAMPLE ?=
SEED ?= 19
MUTMUT_CHILDREN ?= 2
MUTMUT := nice -n 15 $(BIN)/mutmut
QUOTED_MUTANTS = $(foreach g,$(MUTANTS),'$(g)')
define SAMPLE_PY
import fnmatch, random, re, sys
spec, seed, globs = sys.argv[1], int(sys.argv[2]), sys.argv[3:] or ["*"]
names = sorted({line.split(":")[0].strip() for line in sys.stdin if ":" in line})
pool = [m for m in names if any(fnmatch.fnmatch(m, g) for g in globs)]
if "=" not in spec:
    print(" ".join(random.Random(seed).sample(pool, min(int(spec), len(pool)))))
    sys.exit()
sizes = dict(item.split("=") for item in spec.split())
strata = {}
for m in pool:
    strata.setdefault(re.sub(r"__mutmut_[0-9]+$$", "", m).rsplit(".", 1)[0], []).append(m)
for module, members in sorted(strata.items()):
    k = min(int(sizes.get(module, sizes.get("*", 0))), len(members))
    print(" ".join(random.Random(seed).sample(members, k)), end=" ")
endef
export SAMPLE_PY

mutation: $(STAMP)
	@# a sample is drawn from the generated mutant names: generate them first if needed
	$(if $(SAMPLE),test -d mutants || $(MUTMUT) run no.such.mutant >/dev/null 2>&1 || true)
	$(MUTMUT) run --max-children $(MUTMUT_CHILDREN) $(if $(SAMPLE),$$($(BIN)/mutmut results \
	  --all true | $(BIN)/python -c "$$SAMPLE_PY" '$(SAMPLE)' $(SEED) $(QUOTED_MUTANTS)),$(QUOTED_MUTANTS)) || true
	@$(BIN)/mutmut results --all true | awk -F': ' ' \
	  { n = $$1; sub(/^ +/, "", n); sub(/__mutmut_[0-9]+$$/, "", n); sub(/\.[^.]*$$/, "", n); \
	    st = $$NF; c[n SUBSEP st]++; seen[n] = 1; tot[st]++ } \
	  function lo(k, a) { return wilson(k, a, -1) } function hi(k, a) { return wilson(k, a, 1) } \
	  function wilson(k, a, sgn,  z, p, d) { z = 1.96; p = k / a; d = 1 + z * z / a; \
	    return 100 * ((p + z * z / (2 * a)) + sgn * z * sqrt(p * (1 - p) / a + z * z / (4 * a * a))) / d } \
	  END { for (m in seen) { k = c[m SUBSEP "killed"] + c[m SUBSEP "timeout"]; \
	          a = k + c[m SUBSEP "survived"] + c[m SUBSEP "no tests"] + c[m SUBSEP "suspicious"]; \
	          if (a) printf "%-26s killed %4d of %4d  %5.1f%%  (Wilson 95%%: %.1f-%.1f%%)\n", \
	            m, k, a, 100 * k / a, lo(k, a), hi(k, a) } \
	        K = tot["killed"] + tot["timeout"]; \
	        A = K + tot["survived"] + tot["no tests"] + tot["suspicious"]; \
	        if (A) printf "kill rate: %d of %d checked = %.1f%% (Wilson 95%%: %.1f-%.1f%%)\n", \
	          K, A, 100 * K / A, lo(K, A), hi(K, A); printf "not checked: %d\n", tot["not checked"] }'

# Re-inject each bug issue #19 listed into a scratch copy; its named test must fail (about 5 min).
known-bugs: $(STAMP)
	nice -n 10 $(BIN)/python tests/known_bugs.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info mutants
