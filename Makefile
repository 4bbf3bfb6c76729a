# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean proto

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,ray,onnx,grpc]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m nnmark.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# regenerate the shipped gRPC descriptor from src/nnmark/oracles/proto/grpc_predict_v2.proto
proto: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check 'grpcio-tools>=1.60'
	$(BIN)/python src/nnmark/oracles/proto/_generate.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
