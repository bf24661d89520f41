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
IPOPTSTAMP := $(VENV)/.kktbridge-ipopt

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

# cyipopt rebuilt against the IPOPT 3.14 + MUMPS 5.8 that the casadi wheel (a test dependency) ships
# with its headers: Debian's IPOPT 3.11 / MUMPS 5.5 took 3-4x longer on the same iterations (chain
# NLP, 20,001 variables: 1.7 s vs 0.49 s, measured). Falls back to the system build (a note, not
# an error) when casadi's layout differs; kktbridge.adapters.ipopt.linked_ipopt_version() tells
# which one is linked.
$(IPOPTSTAMP): $(STAMP)
	@CAS=$$($(PY) -c 'import casadi, os; print(os.path.dirname(casadi.__file__))' 2>/dev/null); \
	VER=$$($(PY) -c 'import importlib.metadata as m; print(m.version("cyipopt"))'); \
	if [ -f "$$CAS/pkgconfig/ipopt.pc" ] && [ -f "$$CAS/include/coin-or/IpStdCInterface.h" ]; then \
	  mkdir -p $(VENV)/ipopt-pkgconfig && sed -e "s|^prefix=.*|prefix=$$CAS|" -e "s|^libdir=.*|libdir=$$CAS|" \
	    -e "s|^includedir=.*|includedir=$$CAS/include/coin-or|" "$$CAS/pkgconfig/ipopt.pc" > $(VENV)/ipopt-pkgconfig/ipopt.pc; \
	  PKG_CONFIG_PATH=$(CURDIR)/$(VENV)/ipopt-pkgconfig LDFLAGS="-Wl,-rpath,$$CAS" \
	    $(PY) -m pip install -q --no-cache-dir --force-reinstall --no-deps --no-binary cyipopt "cyipopt==$$VER" \
	    || echo "note: cyipopt could not be rebuilt against casadi's IPOPT; keeping the system build"; \
	else echo "note: casadi ships no IPOPT headers here; cyipopt keeps the system IPOPT"; fi
	@$(PY) -c 'from kktbridge.adapters.ipopt import linked_ipopt_version as v; print("cyipopt links IPOPT", v())'
	@touch $@

install: $(IPOPTSTAMP)

# make installs every optional peer of the test/docs extras, so here a missing one is a broken install:
# KKTBRIDGE_REQUIRE_PEERS=1 turns its skips into failures (tests/_peers.py).
test: $(IPOPTSTAMP)
	KKTBRIDGE_REQUIRE_PEERS=1 $(PY) -m pytest -q

demo: $(IPOPTSTAMP)
	$(PY) -m kktbridge demo

bench: $(IPOPTSTAMP)
	$(PY) -m kktbridge bench

# Full-size runs take several minutes each on 2 cores; NOTEBOOKS=notebooks/01_quickstart_ipopt.ipynb selects.
notebooks: $(IPOPTSTAMP)
	$(PY) notebooks/_nbutil.py --size full $(NOTEBOOKS)

docs: $(IPOPTSTAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info site
