"""The ffcv names fastssl uses, imported without ffcv's side effect on torch.

Importing the ffcv package sets torch's intra-op threads to 1 (measured with ffcv 1.0.2: 2 -> 1 on
the 2-core CI machine), which halved every later CPU op in the process and made a run that imported
ffcv compute differently from one that did not (a resumed run diverged from the uninterrupted one).
The thread count is restored right after the import.
"""
import torch

_threads = torch.get_num_threads()
from ffcv.fields import IntField, RGBImageField  # noqa: E402
from ffcv.libffcv import imdecode, resize_crop  # noqa: E402
from ffcv.reader import Reader  # noqa: E402
from ffcv.writer import DatasetWriter  # noqa: E402

torch.set_num_threads(_threads)

__all__ = ["DatasetWriter", "IntField", "RGBImageField", "Reader", "imdecode", "resize_crop"]
