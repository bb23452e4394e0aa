# The two README commands: `make demo` (install + main job) and `make test` (install + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint bench

$(STAMP): pyproject.toml client/pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

install: $(STAMP)

# The built-in sample portrait, plus two real photos when ../shared is beside the checkout.
DEMO_FACES := $(wildcard ../shared/data/faces/img1.jpg ../shared/data/faces/couple.jpg)

demo: $(STAMP)
	$(VENV)/bin/anonymixer demo --out out/demo $(if $(DEMO_FACES),--faces $(DEMO_FACES))

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	cd client && ../$(PY) -m mypy --strict anonymixer_client

test: lint
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# Every figure of this machine into benchmarks/results/<date>-<machine>/ (summary.md has the headline).
bench: $(STAMP)
	$(PY) -m benchmarks.suite
