# The README's commands. `make run` and `make test` do all the set-up themselves.
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
# pinned here (not in pyproject, whose ranges stay loose): these wheels lie on the CI disk
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test test-fast lint fmt typecheck migrate bench services browser datasets demo clean install install-run

# `make run` installs what serving needs and nothing else (no test or lint tools);
# `make test` adds the dev extra on top (tests/test_install.py checks the split)
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q $(TORCH_PKGS)
	$(BIN)/pip install -q -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(DEV_STAMP)

install-run: $(RUN_STAMP)

install: $(DEV_STAMP)

## run: the service on the embedded default (SQLite + local executor, no servers to start)
run: $(RUN_STAMP)
	$(BIN)/kd serve

## demo: kdcore alone: train a teacher on digits, distil it, print the report
demo: $(RUN_STAMP)
	$(BIN)/kdcore train examples/digits_teacher.json --out out/teacher
	$(BIN)/kdcore distill examples/digits_distill.json --out out/distill
	@echo "report: out/distill/report.json"

## services: start PostgreSQL and Redis if they are down (integration tests use them)
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start || true
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
		redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true

## browser: Debian's Chromium and ChromeDriver for the dashboard test (tests/web)
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)

## datasets: the full Fashion-MNIST (IDX files) from Debian, for examples and benchmarks,
## and Debian's fortunes (English passages: bench/embedding_kd.py)
datasets:
	@test -d /usr/share/datasets/fashion-mnist || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)
	@test -d /usr/share/games/fortunes || \
		(apt-get update -qq && apt-get install -y -qq fortunes >/dev/null)

LINTED := kdcore kdservice app worker tests bench examples

## lint: ruff (rules + complexity), format check, the import-linter contracts
## (docs/architecture.md), typos, mypy
LINT_STEPS := $(BIN)/ruff check $(LINTED) && \
	$(BIN)/ruff format --check $(LINTED) && \
	$(BIN)/lint-imports --no-cache && \
	$(BIN)/typos kdcore kdservice app worker tests bench docs README.md && \
	$(BIN)/mypy kdcore kdservice app worker

lint: $(DEV_STAMP)
	$(LINT_STEPS)

## fmt: apply ruff's fixes and formatting
fmt: $(DEV_STAMP)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

typecheck: $(DEV_STAMP)
	$(BIN)/mypy kdcore kdservice app worker

## migrate: upgrade the database of KD_DATABASE_URL (SQLite upgrades itself on start)
migrate: $(RUN_STAMP)
	$(BIN)/kd migrate

PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider

## test-fast: the developer's loop: unit and API tests (no real processes, nothing
## slow; the few PostgreSQL tests use the server `services` starts), two at once, then
## the fuzz tests with 25 examples per operation (`make test`: 120)
test-fast: $(DEV_STAMP) services
	$(PYTEST) -n 2 -m "not slow and not integration" --ignore=tests/fuzz --durations=5 tests
	KD_FUZZ_EXAMPLES=25 $(PYTEST) tests/fuzz

## test: lint + type check + the whole test suite: two at once (a file's tests on one
## worker: they share its fixtures; the fault tests too, on servers of their own), and
## beside them the fuzz tests in a process of their own (schemathesis expands its
## operations into tests only outside xdist: under it they would run as one item that
## fuzzes nothing; its report is printed after) and `make lint` (a minute of one core,
## which would otherwise leave the other idle; its report is printed after the suite's);
## the slowest are printed.
## --no-loadscope-reorder: xdist would otherwise hand out files by their number of
## tests, undoing tests/conftest.py's slow-files-first order
test: $(DEV_STAMP) services browser datasets
	@($(LINT_STEPS)) > $(VENV)/lint.log 2>&1 & lint=$$!; \
	$(PYTEST) --durations=10 tests/fuzz > $(VENV)/fuzz.log 2>&1 & fuzz=$$!; \
	$(PYTEST) -n 2 --dist loadfile --no-loadscope-reorder --durations=25 --ignore=tests/fuzz tests; \
	rc=$$?; \
	wait $$lint; lint_rc=$$?; echo "--- make lint (beside the suite): exit $$lint_rc"; \
	cat $(VENV)/lint.log; \
	wait $$fuzz; fuzz_rc=$$?; echo "--- tests/fuzz (alone, beside the rest):"; \
	cat $(VENV)/fuzz.log; test $$rc = 0 && test $$lint_rc = 0 && test $$fuzz_rc = 0

## bench: throughput and quality benchmarks (prints medians and ratios; not a test)
bench: $(DEV_STAMP) datasets
	$(BIN)/python bench/kd_throughput.py
	$(BIN)/python bench/peer_compare.py
	$(BIN)/python bench/kd_methods.py

clean:
	rm -rf out $(VENV)
