# mreg developer entry points. `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTO_FILES := $(shell find protos -name '*.proto' -not -path 'protos/gen/*')
BUF_VERSION := 1.75.0
BUF := $(VENV)/buf/node_modules/.bin/buf
# `make install`: both services, the client and the dev tools. `make run`: only what running needs.
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-server
# The Node conformance test's packages (tests/node), reinstalled only when the lock changes.
NODE_STAMP := tests/node/node_modules/.installed
# The web UI's browser tests drive Debian's chromium through its chromedriver (packages chromium and
# chromium-driver, which depends on chromium): installed from apt when missing; nothing downloads a browser.
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install protos run test test-sqlite test-postgres lint contract-baseline bench clean

install: $(STAMP) $(NODE_STAMP) $(CHROMEDRIVER)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# An editable install. Its build hook (hatch_build.py) generates the gRPC stubs from protos/,
# exactly as `pip install .` does, and links the folders into the `mreg` namespace.
$(STAMP): $(PY) pyproject.toml hatch_build.py $(PROTO_FILES)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(RUN_STAMP)

$(RUN_STAMP): $(PY) pyproject.toml hatch_build.py $(PROTO_FILES)
	$(PY) -m pip install --quiet -e '.[server]'
	touch $@

$(NODE_STAMP): tests/node/package-lock.json tests/node/package.json
	npm ci --prefix tests/node --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

$(CHROMEDRIVER):
	@command -v apt-get >/dev/null || { echo "make install: the browser tests need Debian's chromium and chromium-driver packages (no apt-get here): install them" >&2; exit 1; }
	$(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver; } \
		|| { echo "make install: could not install chromium and chromium-driver with apt-get" >&2; exit 1; }
	@test -x /usr/bin/chromium && test -x $@ || { echo "make install: /usr/bin/chromium or $@ is missing after apt-get" >&2; exit 1; }

protos: install
	$(PY) hatch_build.py --force

run: $(RUN_STAMP)
	$(VENV)/bin/mreg serve

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-sqlite: install
	MREG_TEST_DATABASES=sqlite $(PY) -m pytest $(PYTEST_ARGS)

test-postgres: install
	MREG_TEST_DATABASES=postgresql $(PY) -m pytest $(PYTEST_ARGS)

$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(VENV)/buf @bufbuild/buf@$(BUF_VERSION)

bench: install
	$(PY) -m tests.bench

lint: install $(BUF)
	$(VENV)/bin/ruff check metadata_service blob_service client server_runtime tests hatch_build.py
	$(VENV)/bin/ruff format --check metadata_service blob_service client server_runtime tests hatch_build.py
	$(VENV)/bin/mypy
	cd protos && ../$(BUF) lint
	cd protos && ../$(BUF) breaking --against $(CONTRACT_BASELINE)

# The released v1 contract that `make lint` checks protos/ against (buf breaking, FILE rules,
# see protos/buf.yaml): a buf image as indented JSON, without source info, so a review sees
# what changed. Regenerate it only when a release is cut: `make contract-baseline`.
CONTRACT_BASELINE := breaking/v1.json

contract-baseline: $(PY) $(BUF)
	cd protos && ../$(BUF) build --exclude-source-info -o '$(CONTRACT_BASELINE).tmp#format=json'
	cd protos && ../$(PY) -m json.tool --indent 1 $(CONTRACT_BASELINE).tmp $(CONTRACT_BASELINE)
	rm protos/$(CONTRACT_BASELINE).tmp

clean:
	rm -rf $(VENV) protos/gen tests/node/node_modules .pytest_cache .mypy_cache .ruff_cache
