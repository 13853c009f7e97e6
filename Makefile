# The two set-up commands of the README. Each makes the virtual environment on first use (and again
# when setup.py changes), so a fresh machine needs nothing but Python 3.10+ and make.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
# The ffcv extra compiles against libturbojpeg and OpenCV (.ci/run installs them); where they are
# missing it is left out and the ffcv tests skip. EXTRAS=dev,ffcv,dali forces it (CI does). The dali
# extra is a prebuilt Linux wheel (CPU operators run without a GPU), so it is always in.
EXTRAS ?= $(shell pkg-config --exists libturbojpeg opencv4 2>/dev/null && echo dev,ffcv,dali || echo dev,dali)

.PHONY: train test gpu-check

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

# The main job: SimCLR on the embedded shapes data, then the kNN accuracy it reached.
train: $(VENV)/.installed
	$(BIN)/fastssl train $(ARGS)

# The whole test suite (GPU tests skip themselves without a GPU).
test: $(VENV)/.installed
	$(BIN)/python -m pytest $(ARGS)

# Every GPU check of the project in one run (../shared/GPU.md), on a GPU machine's own Python (no
# network there: torch comes with the machine). Environment first, then the `gpu` tests, then the
# kernel benchmarks (BENCH_ARGS for sim_xent, RIDGE_ARGS for ridge, AUGMENT_ARGS for augment: their
# --sizes differ); results land in $(GPU_OUT) and each benchmark prints its table last.
GPU_OUT ?= gpu-results
gpu-check:
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	mkdir -p $(GPU_OUT)
	$(PYTHON) -m fastssl env | tee $(GPU_OUT)/env.txt
	$(PYTHON) -m pytest -m gpu -p no:cacheprovider --junitxml=$(GPU_OUT)/gpu-tests.xml $(ARGS)
	$(PYTHON) -m fastssl bench kernels --kernel sim_xent --out $(GPU_OUT) $(BENCH_ARGS)
	$(PYTHON) -m fastssl bench kernels --kernel ridge --out $(GPU_OUT) $(RIDGE_ARGS)
	$(PYTHON) -m fastssl bench kernels --kernel augment --out $(GPU_OUT) $(AUGMENT_ARGS)
