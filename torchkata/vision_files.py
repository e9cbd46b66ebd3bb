"""Tiny data sets written in the on-disk formats torchvision's classes read.

A learner's code that loads ``torchvision.datasets.MNIST`` (or FashionMNIST, or CIFAR10)
should be tested through that very class, not through a stand-in, but tests may not
download anything. So these writers put a handful of images where the class looks for
them, in its file format, and the test then opens the real class with ``download=False``.

CIFAR-10 is the one format with a catch: torchvision verifies the md5 sum of every file
against the official archive, which a tiny file can never match. :class:`LocalCIFAR10`
is the real class with only that check relaxed (files must exist; their sums are not
compared); everything else, pickle parsing, HWC layout, class names, is torchvision's own.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of MNIST: a big-endian magic (0, 0, uint8 type 8, ndim), the dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with path.open("wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def write_mnist(root: str | Path, images: np.ndarray, labels: np.ndarray, train: bool = True,
                name: str = "MNIST") -> Path:
    """Write (N, 28, 28) uint8 ``images`` and (N,) ``labels`` for ``datasets.<name>``.

    ``name`` is the class name, ``"MNIST"`` or ``"FashionMNIST"`` (both read
    ``root/<name>/raw/``). Returns ``root``; open it with ``datasets.MNIST(root, train=...)``.
    """
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    prefix = "train" if train else "t10k"
    _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
    _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    for other in ("train", "t10k"):  # the class checks that all four files exist
        for kind, shape in (("images-idx3-ubyte", (0, 28, 28)), ("labels-idx1-ubyte", (0,))):
            path = raw / f"{other}-{kind}"
            if not path.exists():
                _write_idx(path, np.zeros(shape, dtype=np.uint8))
    return Path(root)


def write_cifar10(root: str | Path, images: np.ndarray, labels: np.ndarray,
                  train: bool = True) -> Path:
    """Write (N, 32, 32, 3) uint8 ``images`` and (N,) ``labels`` as CIFAR-10's pickled batches.

    Training images go to ``data_batch_1`` (batches 2 to 5 are written empty); test images
    to ``test_batch``. Open the result with :class:`LocalCIFAR10`.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    flat = np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2))
    batch = {"data": flat.reshape(len(flat), 3 * 32 * 32), "labels": [int(v) for v in labels]}
    empty = {"data": np.zeros((0, 3072), dtype=np.uint8), "labels": []}
    names = ["test_batch"] if not train else [f"data_batch_{i}" for i in range(1, 6)]
    for i, name in enumerate(names):
        with (folder / name).open("wb") as f:
            pickle.dump(batch if i == 0 else empty, f)
    for name in ["test_batch", *[f"data_batch_{i}" for i in range(1, 6)]]:
        if not (folder / name).exists():
            with (folder / name).open("wb") as f:
                pickle.dump(empty, f)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES}, f)
    return Path(root)


def _local_cifar10():
    from torchvision import datasets

    class LocalCIFAR10(datasets.CIFAR10):
        """torchvision's CIFAR10 for files written by :func:`write_cifar10`: it checks
        that the files exist instead of comparing their md5 sums with the official ones."""

        def _check_integrity(self) -> bool:
            base = os.path.join(self.root, self.base_folder)
            return all(os.path.isfile(os.path.join(base, name))
                       for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            with open(path, "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return LocalCIFAR10


def __getattr__(name: str):
    # built on first use, so that importing this module does not import torchvision
    if name == "LocalCIFAR10":
        cls = _local_cifar10()
        globals()["LocalCIFAR10"] = cls
        return cls
    raise AttributeError(name)
