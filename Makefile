# phoenix_trio: `make demo` and `make test` are all a fresh machine needs.
#
#   make setup   venv in .venv, pip packages, Debian test peers when root
#   make build   (re)build the C core's cffi extension in place
#   make ctest   the C core's own tests under ASan/UBSan
#   make typecheck  mypy over the package (zero errors expected)
#   make pytest  the Python suite (both the C and the pure-Python core)
#   make test    setup + build + ctest + typecheck + pytest
#   make demo    setup + build + the main job
#   make bench   every benchmark in --quick mode
#   make soak    long simulations and slow tests

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.phoenix-setup
EXT_STAMP := $(VENV)/.phoenix-ext
CSRC := $(wildcard csrc/*.c csrc/*.h)
# Debian packages for real protocol peers the tests talk to (installed only as root).
DEB_PEERS ?= erlang-base
PYTEST_ARGS ?=

.PHONY: setup peers build ctest typecheck pytest test demo bench soak clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "setuptools>=77" wheel "cffi>=1.16"
	$(MAKE) --no-print-directory peers
	$(PY) -m pip install -q --no-build-isolation -e '.[test,bench,formats,http2,quic,typecheck]'
	@touch $(STAMP) $(EXT_STAMP)

peers:
	@missing=""; for p in $(DEB_PEERS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "test peers present: $(DEB_PEERS)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing test peers:$$missing"; \
	  (apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $$missing >/dev/null)); \
	else echo "not root: test peers$$missing not installed; tests that need them will skip"; fi

build: $(EXT_STAMP)

$(EXT_STAMP): $(STAMP) $(CSRC) build_ext.py
	$(PY) setup.py -q build_ext --inplace
	@touch $(EXT_STAMP)

ctest:
	$(MAKE) --no-print-directory -C csrc test

typecheck: build
	$(PY) -m mypy phoenix_trio

pytest: build
	$(PY) -m pytest $(PYTEST_ARGS)

test: build ctest typecheck pytest

demo: build
	$(PY) -m phoenix_trio demo

bench: build
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done

soak: build
	$(PY) -m pytest -m slow --runslow $(PYTEST_ARGS)

clean:
	$(MAKE) -C csrc clean
	rm -rf build *.egg-info phoenix_trio/_phoenix_core.* .pytest_cache .hypothesis
