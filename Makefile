# Quick start: `make demo` runs the order-processing demo on memory://,
# `make test` runs the whole test suite (the command CI runs).

SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
NOX := $(TOOLS)/bin/nox
PYENV_VERSION := $(shell scripts/pyenv-versions)
ifneq ($(PYENV_VERSION),)
export PYENV_VERSION
endif
export UV_PYTHON_DOWNLOADS := never

.PHONY: demo test dev lint typecheck conformance bench clean wheels audit

$(NOX): requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --disable-pip-version-check -r requirements-tools.txt
	touch $(NOX)

demo: $(NOX)
	$(NOX) -s demo

test: $(NOX)
	$(NOX) -s tests conformance lint typecheck wheels audit $(if $(wildcard benchmarks/run.py),bench_smoke)

conformance lint typecheck bench: $(NOX)
	$(NOX) -s $@

# sdist and wheel of every distribution into dist/, checked and install-tested;
# `pip install --find-links dist "dotmac-events[redis]"` then takes ours from dist/.
wheels: $(NOX)
	$(NOX) -s wheels

# pip-audit of every distribution's resolved dependencies (skipped, saying so, without PyPI).
audit: $(NOX)
	$(NOX) -s audit

# Everything editable in .venv for development.
dev: $(NOX)
	$(TOOLS)/bin/uv venv -q --allow-existing .venv
	$(TOOLS)/bin/uv pip install -q -p .venv/bin/python -e 'core[dev]' $(foreach p,$(wildcard plugins/*/pyproject.toml),-e '$(patsubst %/pyproject.toml,%,$(p))[test]')

clean:
	rm -rf $(TOOLS) .nox dist
