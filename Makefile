# The two set-up commands of the README. Each makes the virtual environment on first use (and again
# when setup.py changes), so a fresh machine needs nothing but Python 3.10+ and make.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: train test

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The main job: SimCLR on the embedded shapes data, then the kNN accuracy it reached.
train: $(VENV)/.installed
	$(BIN)/fastssl train $(ARGS)

# The whole test suite (GPU tests skip themselves without a GPU).
test: $(VENV)/.installed
	$(BIN)/python -m pytest $(ARGS)
