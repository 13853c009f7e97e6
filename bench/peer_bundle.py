"""What `gpu_run.py --suite peers` needs on a GPU machine without network, made here:

    python bench/peer_bundle.py --data CIFAR10_JPEG_ROOT   (make peer-bundle)

.peer-wheels/1/ and .peer-wheels/2/: the wheels of bench/peer_wheels.txt for CPython 3.12 on
manylinux x86_64 (the GPU image's Python), split so that each part plus the tree fits one call's
64 MiB (pyarrow alone is ~53 MB); .peer-data/: the first 500 train and 200 test JPEGs of each class,
copied (links would point at this machine). antlr4-python3-runtime has no wheel on the index: it is
built here, pure Python.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
            "--abi", "abi3", "--abi", "none", "--platform", "manylinux_2_28_x86_64", "--platform",
            "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any"]
FIRST_PART = {"pyarrow"}          # the one large wheel: sent in a call of its own
SOURCE_ONLY = {"antlr4-python3-runtime"}


def pins() -> list[str]:
    lines = (ROOT / "bench" / "peer_wheels.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def download(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for pin in pins():
        name = pin.split("==")[0]
        part = out / ("1" if name in FIRST_PART else "2")
        part.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip"]
        command = (pip + ["wheel", "--quiet", "--no-deps", "-w", str(part), pin] if name in SOURCE_ONLY else
                   pip + ["download", "--quiet", "--no-deps", *PLATFORM, "-d", str(part), pin])
        subprocess.run(command, check=True)


def copy_data(data: Path, out: Path, per_class: dict[str, int]) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for split, limit in per_class.items():
        for cls in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            target = out / split / cls.name
            target.mkdir(parents=True)
            for f in sorted(cls.iterdir())[:limit]:
                shutil.copyfile(f, target / f.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder root with train/ and test/")
    parser.add_argument("--train", type=int, default=500, help="train images per class (default: %(default)s)")
    parser.add_argument("--test", type=int, default=200, help="test images per class (default: %(default)s)")
    args = parser.parse_args()
    download(ROOT / ".peer-wheels")
    copy_data(args.data, ROOT / ".peer-data", {"train": args.train, "test": args.test})
    for path in (ROOT / ".peer-wheels" / "1", ROOT / ".peer-wheels" / "2", ROOT / ".peer-data"):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{path.relative_to(ROOT)}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
