# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= $(shell command -v python3.12 || (command -v pyenv >/dev/null && pyenv which python3.12 2>/dev/null) || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck nginx chromium clean bench results

$(BIN)/python:
	$(PY) -c 'import sys; assert sys.version_info >= (3, 12), "tessera-vz needs Python >= 3.12, found " + sys.version'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# nginx is the tile server of the demo and of the tests (Debian package).
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null || \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; \
	  else echo "nginx is missing: install it (apt-get install nginx-light)" >&2; exit 1; fi; }

# Debian's chromium runs the viewer's browser test (driven by playwright, nothing downloaded).
chromium:
	@command -v chromium >/dev/null || test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install it (apt-get install chromium)" >&2; exit 1; fi; }

demo: $(STAMP) nginx
	$(BIN)/tessera-vz demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy src/tessera_vz

test: $(STAMP) nginx chromium lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP) nginx
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python benchmarks/index_throughput.py
	$(BIN)/python benchmarks/read_points.py

# Regenerates benchmarks/RESULTS.md and its plot (about 20 minutes on 2 cores).
results: $(STAMP) nginx
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python benchmarks/scale.py

clean:
	rm -rf $(VENV) demo-out
