"""fastssl: self-supervised representation learning at maximum GPU throughput."""
from setuptools import find_packages, setup

# kernels/, loaders/ and bench/ stay top-level folders but install inside the fastssl namespace: a PyPI
# package called `kernels` exists, so they must not be top-level names. Sub-packages are found, not
# listed: a hand-kept list once left fastssl.evaluation out of every non-editable install.
ROOTS = {"fastssl": "fastssl", "fastssl.kernels": "kernels", "fastssl.loaders": "loaders", "fastssl.bench": "bench"}
PACKAGES = [name for root, folder in ROOTS.items()
            for name in [root] + [f"{root}.{sub}" for sub in find_packages(folder)]]
# fastssl export --format onnx: torch.onnx's exporter needs onnxscript; onnxruntime checks the file
ONNX = ["onnx>=1.16", "onnxscript", "onnxruntime"]
TENSORBOARD = ["tensorboard>=2.14"]   # log.tensorboard: true

setup(
    name="fastssl",
    version="0.1.0",
    description="Fast trainer for contrastive and meta-learning self-supervised image representations",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=ROOTS,
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.24",
        "pyyaml>=6",
        "pillow>=9",
        "matplotlib>=3.6",
        "tqdm>=4.60",   # the progress bars (FFCV draws its own with it too)
        "safetensors>=0.4",   # fastssl export --format safetensors
    ],
    extras_require={
        # scikit-image: its bundled photos for `fastssl data photos`; the optional extras so that their
        # tests (log.tensorboard, export --format onnx) run
        "dev": ["pytest>=7", "scikit-image>=0.19", *TENSORBOARD, *ONNX],
        # ffcv builds a C extension: apt pkg-config libturbojpeg0-dev libopencv-dev first. ==1.0.2: the
        # backend reads its Reader metadata and calls its C routines. It brings opencv-python itself.
        "ffcv": ["ffcv==1.0.2", "numba>=0.60"],
        "dali": ["nvidia-dali-cuda130"],
        # `fastssl bench peers`: the trainers fastssl is compared with, pinned to the measured versions.
        # The core never imports them (bench/peers/*_runner.py do, inside train()). The test environment
        # takes lightly alone: LightlyTrain brings Hugging Face's `kernels` package, whose setuptools hook
        # imports `kernels._internals` and, with this tree's own kernels/ first on the path, breaks any
        # --no-build-isolation build of fastssl in that environment (the wheel test's).
        "peers": ["lightly==1.6.0", "lightly-train==0.18.0"],
        "lightly": ["lightly==1.6.0"],
        # model.arch=timm/<name>: any timm model (ViTs, ConvNeXt, ...); imported only by that backbone family.
        "timm": ["timm>=1.0,<1.1"],
        "onnx": ONNX,
        "tensorboard": TENSORBOARD,
    },
    entry_points={"console_scripts": ["fastssl=fastssl.cli:main"]},
)
