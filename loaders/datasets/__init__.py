"""Dataset readers behind one contract (`ImageDataset`), chosen by `data.dataset`."""
from __future__ import annotations

from .base import ArrayDataset, DataError, ImageDataset
from .cifar import load_cifar
from ..settings import DATASETS, FASHION_MNIST_DEFAULT

from .fashion_mnist import load_fashion_mnist
from .imagefolder import ImageFolderDataset, split_roots
from .images import ImagesDataset
from .omniglot import load_omniglot
from .random_images import make_random
from .synthetic import make_shapes

__all__ = ["ArrayDataset", "DataError", "ImageDataset", "ImageFolderDataset", "ImagesDataset", "build_dataset",
           "load_cifar", "load_fashion_mnist", "load_omniglot"]

SPLITS = ("train", "test")


def build_dataset(data_cfg, split: str) -> ImageDataset:
    """The `split` ("train" | "test") of the dataset a DataConfig names.

    An ImageFolder's train and test splits must hold the same class folders (`split_roots`; `val`
    stands in for a missing default `test`). An ImageFolder is read through its index: files it knows
    to be bad are raised or dropped here, before any backend reads an index, and nothing is decoded.
    `images` (unlabelled, read the same way) has a train split only: there are no labels to score.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {', '.join(SPLITS)}")
    name = data_cfg.dataset
    if name in ("cifar10", "cifar100"):
        return load_cifar(data_cfg.path, name, split, download=data_cfg.download)
    if name == "imagefolder":
        # Both splits are located and their class folders compared on every build, before any file is
        # read: the trainer and `fastssl eval` fail at once rather than after an epoch or a decode pass.
        roots = split_roots(data_cfg.path, data_cfg.train_split, data_cfg.test_split)
        return ImageFolderDataset(roots[split], on_error=data_cfg.on_error)
    if name == "images":
        if split == "test":
            raise DataError("data.dataset=images is unlabelled: it has no test split; the kNN monitor takes a labelled ImageFolder "
                            "as knn.data=PATH, fastssl eval and features as --set data.dataset=imagefolder --set "
                            "data.path=PATH")
        return ImagesDataset(data_cfg.path, on_error=data_cfg.on_error)
    if name == "fashion_mnist":
        return load_fashion_mnist(data_cfg.path or FASHION_MNIST_DEFAULT, split)
    if name == "omniglot":
        return load_omniglot(data_cfg.path, split)
    if name == "shapes":
        return make_shapes(data_cfg, split)
    if name == "random":
        return make_random(data_cfg, split)
    raise ValueError(f"data.dataset={name!r}: must be one of {', '.join(DATASETS)}")
