# The README commands: `make demo` (install + main job), `make ui` (install + the browser UI) and
# `make test` (install + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo ui test test-slow lint bench

$(STAMP): pyproject.toml client/pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

install: $(STAMP)

# With ../shared beside the checkout: two photos of one person (one key must give them one new
# identity) and a photo of two people for scene mode; without it, the built-in sample portrait.
DEMO_PAIR := $(wildcard ../shared/data/faces/img1.jpg ../shared/data/faces/img2.jpg)
DEMO_SCENES := $(wildcard ../shared/data/faces/couple.jpg)

demo: $(STAMP)
	$(VENV)/bin/anonymixer demo --out out/demo $(if $(DEMO_PAIR),--pair $(DEMO_PAIR)) $(if $(DEMO_SCENES),--scenes $(DEMO_SCENES))

# The browser UI on the embedded server (mobile1024, real weights): http://127.0.0.1:7860, Ctrl-C stops both.
ui: $(STAMP)
	$(VENV)/bin/anonymixer ui

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
