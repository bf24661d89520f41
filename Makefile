# Two entry points, both self-installing on a fresh Debian machine (as root):
#   make demo   -- differentiate through the solvers and print checks
#   make test   -- install everything and run the whole test suite
# and two for maintainers (self-installing too):
#   make notebooks -- re-execute notebooks/*.ipynb at full size, storing their outputs in place
#   make docs      -- build the documentation site into site/ (mkdocs build --strict)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kktbridge-installed
SYSSTAMP := $(VENV)/.kktbridge-sysdeps

.PHONY: demo test bench notebooks docs sysdeps install clean

# System libraries cyipopt builds against. Skipped when already present so re-runs are fast.
$(SYSSTAMP):
	@if ! pkg-config --exists ipopt 2>/dev/null; then \
	  echo "installing system packages for cyipopt"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    coinor-libipopt-dev liblapack-dev libblas-dev pkg-config; \
	fi
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	@touch $@

# Reinstall only when the package metadata changes (editable install: code changes need nothing).
$(STAMP): pyproject.toml $(SYSSTAMP)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test,docs,solvers,sparse,ray]'
	@# torch is optional: install it only from a local CPU wheel (never the multi-GB CUDA build);
	@# its small pure-Python dependencies come from the package index. Without it, torch tests skip.
	@if ls /opt/wheels/torch-2.13.0*cpu*.whl >/dev/null 2>&1; then \
	  $(PY) -m pip install -q --find-links /opt/wheels 'torch==2.13.0' \
	    || echo "note: torch could not be installed; torch tests will be skipped"; \
	else echo "note: no local CPU torch wheel; torch tests will be skipped"; fi
	@touch $@

install: $(STAMP)

# make installs every optional peer of the test/docs extras, so here a missing one is a broken install:
# KKTBRIDGE_REQUIRE_PEERS=1 turns its skips into failures (tests/_peers.py).
test: $(STAMP)
	KKTBRIDGE_REQUIRE_PEERS=1 $(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m kktbridge demo

bench: $(STAMP)
	$(PY) -m kktbridge bench

# Full-size runs take several minutes each on 2 cores; NOTEBOOKS=notebooks/01_quickstart_ipopt.ipynb selects.
notebooks: $(STAMP)
	$(PY) notebooks/_nbutil.py --size full $(NOTEBOOKS)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info site
