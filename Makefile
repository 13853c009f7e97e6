# The two set-up commands of the README. Each makes the virtual environment on first use (and again
# when setup.py changes), so a fresh machine needs nothing but Python 3.10+ and make.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
# The ffcv extra compiles against libturbojpeg and OpenCV (.ci/run installs them); where they are
# missing it is left out and the ffcv tests skip. EXTRAS=dev,ffcv,dali,lightly,timm forces it (CI does). The dali
# extra is a prebuilt Linux wheel (CPU operators run without a GPU), so it is always in.
EXTRAS ?= $(shell pkg-config --exists libturbojpeg opencv4 2>/dev/null && echo dev,ffcv,dali,lightly,timm || echo dev,dali,lightly,timm)

.PHONY: train test gpu-check peer-bundle

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

# The main job: SimCLR on the embedded shapes data, then the kNN accuracy it reached.
train: $(VENV)/.installed
	$(BIN)/fastssl train $(ARGS)

# The GPU machines run triton 3.6: the sm_90 compile check also compiles the kernels with it, from
# this folder on PYTHONPATH (tests/kernels/test_compile_for_gpu.py), beside the venv's own triton.
TRITON_GPU ?= triton==3.6.0
.triton36/.installed: $(VENV)/.installed
	rm -rf .triton36
	$(BIN)/pip install --quiet --no-deps --target .triton36 $(TRITON_GPU)
	touch $@

# The whole test suite (GPU tests skip themselves without a GPU).
test: $(VENV)/.installed .triton36/.installed
	$(BIN)/python -m pytest $(ARGS)

# Every GPU measurement of the project in one run of at most 9 minutes, on a GPU machine's own Python
# (no network there: torch comes with the machine). bench/gpu_run.py installs fastssl itself and
# writes gpu_run.log, summary.md and results.tar.gz into $(GPU_OUT); README "On a GPU".
GPU_OUT ?= gpu-results
gpu-check:
	$(PYTHON) bench/gpu_run.py $(GPU_OUT) $(ARGS)

# What `python bench/gpu_run.py OUT --suite peers` needs on a GPU machine without network: the peers'
# wheels for its Python 3.12 (.peer-wheels/1 and /2, one call each) and a CIFAR-10 JPEG subset
# (.peer-data). DATA: an ImageFolder root with train/ and test/. README "On a GPU".
peer-bundle: $(VENV)/.installed
	$(BIN)/python bench/peer_bundle.py --data $(DATA)

