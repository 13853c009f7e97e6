"""fastssl: contrastive and meta-learning self-supervised training at maximum throughput.

`fastssl.train`, `fastssl.load`, `fastssl.features` (fastssl/api.py) load on first use, so `import fastssl`
and the command's `--help` do not import torch.
"""

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "Features", "Run", "features", "load", "train"]
API = ("Features", "Run", "features", "load", "train")


def __getattr__(name: str):
    if name in API:
        from fastssl import api
        return getattr(api, name)
    if name == "ConfigError":
        from fastssl.loaders.rules import ConfigError
        return ConfigError
    if name == "DataError":
        from fastssl.loaders.datasets.base import DataError
        return DataError
    raise AttributeError(f"module 'fastssl' has no attribute {name!r}")
