# mreg developer entry points. `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GEN := protos/gen/python
PROTO_FILES := $(shell find protos/mreg -name '*.proto')
BUF_VERSION := 1.75.0
BUF := $(VENV)/buf/node_modules/.bin/buf
STAMP := $(VENV)/.installed

.PHONY: install protos run test test-sqlite test-postgres lint bench clean

TOOLS := $(VENV)/.codegen-tools

install: $(STAMP)

# The package includes the generated stubs, so they are generated before it is installed.
$(STAMP): pyproject.toml $(GEN)/.stamp
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(TOOLS):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet grpcio-tools googleapis-common-protos
	touch $@

protos: $(TOOLS)
	rm -rf $(GEN)
	$(MAKE) $(GEN)/.stamp

# googleapis-common-protos ships google/rpc/status.proto, which the blob API imports.
$(GEN)/.stamp: $(TOOLS) $(PROTO_FILES)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -I protos -I "$$($(PY) -c 'import google.rpc, os; print(os.path.dirname(os.path.dirname(google.rpc.__path__[0])))')" \
		--python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTO_FILES)
	find $(GEN)/mreg -type d -exec touch {}/__init__.py \;
	touch $@

run: install
	$(VENV)/bin/mreg serve

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-sqlite: install
	MREG_TEST_DATABASES=sqlite $(PY) -m pytest $(PYTEST_ARGS)

test-postgres: install
	MREG_TEST_DATABASES=postgresql $(PY) -m pytest $(PYTEST_ARGS)

$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(VENV)/buf @bufbuild/buf@$(BUF_VERSION)

# buf resolves google/rpc/status.proto from a local copy, so linting needs no network.
bench: install
	$(PY) -m tests.bench

lint: install $(BUF)
	$(VENV)/bin/ruff check metadata_service blob_service client server_runtime tests
	$(VENV)/bin/ruff format --check metadata_service blob_service client server_runtime tests
	$(VENV)/bin/mypy
	mkdir -p protos/gen/third_party/google/rpc
	cp "$$($(PY) -c 'import google.rpc, os; print(google.rpc.__path__[0])')/status.proto" protos/gen/third_party/google/rpc/
	cd protos && ../$(BUF) lint

clean:
	rm -rf $(VENV) $(GEN) .pytest_cache .mypy_cache .ruff_cache
