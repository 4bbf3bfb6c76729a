# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PIP_QUIET := --quiet --disable-pip-version-check
# Real inference servers for the interop tests, one virtualenv each: their web stacks pin
# incompatible fastapi/starlette releases, so neither can share the main venv or the other's.
# nnmark goes in without its dependencies: the servers load checkpoints through nnmark.models
# (torch, safetensors, numpy, tqdm) and keep their own protobuf (< 7) and web stack.
INTEROP := .interop
INTEROP_SERVERS := mlserver kserve
mlserver_PIN := mlserver==1.7.1
kserve_PIN := kserve==0.21.0
INTEROP_STAMPS := $(INTEROP_SERVERS:%=$(INTEROP)/%/.installed)

.PHONY: demo test interop-envs clean proto mutation

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) -e '.[dev,ray,onnx,grpc,interop]'
	touch $(STAMP)

$(INTEROP)/%/.installed: pyproject.toml
	test -x $(INTEROP)/$*/bin/python || $(PYTHON) -m venv $(INTEROP)/$*
	$(INTEROP)/$*/bin/pip install $(PIP_QUIET) 'torch==2.13.0' safetensors numpy tqdm '$($*_PIN)'
	$(INTEROP)/$*/bin/pip install $(PIP_QUIET) --no-deps -e .
	touch $@

interop-envs: $(INTEROP_STAMPS)

demo: $(STAMP)
	$(BIN)/python -m nnmark.demo

# the suite's files spread over TEST_WORKERS processes (a file's tests stay on one: its module fixtures run once)
TEST_WORKERS ?= 2

# line and branch coverage of src/nnmark (processes the tests start included), then the cli/ package's total
test: $(STAMP) $(INTEROP_STAMPS) fashion-mnist watch-tools
	rm -f .coverage .coverage.*
	COVERAGE_FILE=$(CURDIR)/.coverage $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --cov --cov-report=
	$(BIN)/python -m coverage report
	@echo "cli/: $$($(BIN)/python -m coverage report --include='*/nnmark/cli/*' --format=total)% of lines and branches"
	$(BIN)/python tools/mutation.py --ci

# mutation testing of every verdict module within its time bound; writes docs/benchmarks/mutation.md (tools/mutation.py)
mutation: $(STAMP)
	$(BIN)/python tools/mutation.py

# Fashion-MNIST for the ownership benchmarks and tests: Debian's dataset-fashion-mnist (needs root and apt-get;
# otherwise prints how to unpack it without root and point NNMARK_FASHION_MNIST at it; the tests that need it skip)
FASHION_MNIST := /usr/share/datasets/fashion-mnist
.PHONY: fashion-mnist
fashion-mnist:
	@if [ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST is in $(FASHION_MNIST)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "apt-get could not install it"; \
	else echo "as root: apt-get install dataset-fashion-mnist; without root: apt-get download dataset-fashion-mnist &&" \
	  "dpkg -x dataset-fashion-mnist_*.deb DIR, then NNMARK_FASHION_MNIST=DIR$(FASHION_MNIST)"; fi

# Prometheus and Chromium for the watch's interop tests (Debian's prometheus and chromium; needs root and apt-get;
# otherwise the tests that need them skip and say why)
.PHONY: watch-tools
watch-tools:
	@if command -v prometheus >/dev/null && command -v chromium >/dev/null; then echo "prometheus and chromium are installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq prometheus chromium) || echo "apt-get could not install them"; \
	else echo "as root: apt-get install prometheus chromium (the watch's interop tests skip without them)"; fi

# regenerate the shipped gRPC descriptor from src/nnmark/oracles/proto/grpc_predict_v2.proto
proto: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check 'grpcio-tools>=1.60'
	$(BIN)/python src/nnmark/oracles/proto/_generate.py

clean:
	rm -rf $(VENV) $(INTEROP) build src/*.egg-info .pytest_cache .coverage .coverage.* mutants
