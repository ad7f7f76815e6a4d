"""CIFAR-10 from the official python-pickle batches, as the notebook loads it.

    Xtr, ytr, Xte, yte = load_CIFAR10(root)   # root = the cifar-10-batches-py folder
    data = get_CIFAR10_data()                 # the notebook's dict (needs the data: see below)

The data is not bundled: fetch it once with ``fastnorm data download`` (or
``fastnorm.data.download_cifar10()``); it goes to ``default_data_dir()``.
"""

from __future__ import annotations

import os
import pickle

import numpy as np

from ._split import check_dtype, split

__all__ = ["load_CIFAR10", "load_CIFAR_batch", "get_CIFAR10_data", "default_data_dir", "default_cifar10_dir",
           "TRAIN_BATCHES", "TEST_BATCH", "FOLDER"]

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_HOW_TO_GET = ("get it with `fastnorm data download` (or fastnorm.data.download_cifar10()), "
               "or from https://www.cs.toronto.edu/~kriz/cifar.html (the python version)")


def default_data_dir() -> str:
    """Where datasets are cached: $FASTNORM_DATA_DIR, else $XDG_CACHE_HOME/fastnorm, else ~/.cache/fastnorm."""
    if os.environ.get("FASTNORM_DATA_DIR"):
        return os.environ["FASTNORM_DATA_DIR"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fastnorm")


def default_cifar10_dir() -> str:
    """The cifar-10-batches-py folder inside default_data_dir()."""
    return os.path.join(default_data_dir(), FOLDER)


def _field(batch: dict, name: str):
    # the official pickles were written by Python 2: keys are bytes when read with encoding="bytes"
    if name.encode() in batch:
        return batch[name.encode()]
    return batch[name]


def _read_batch(filename):
    """One batch file: uint8 X (n, 3, 32, 32), channels first as stored, and int64 y (n,)."""
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"CIFAR-10 batch file {filename} is missing; {_HOW_TO_GET}")
    try:
        with open(filename, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        X = np.asarray(_field(batch, "data"))
        y = np.asarray(_field(batch, "labels"))  # no dtype: it would truncate 1.7 and parse '1'
    except Exception as exc:  # truncated pickle, wrong content, missing keys
        raise ValueError(
            f"CIFAR-10 batch file {filename} is corrupt or not a CIFAR-10 python batch "
            f"({type(exc).__name__}: {exc}); delete it and {_HOW_TO_GET}"
        ) from None
    if X.ndim != 2 or X.shape[1] != 3 * 32 * 32 or y.shape != (X.shape[0],) or X.dtype != np.uint8:
        raise ValueError(
            f"CIFAR-10 batch file {filename} has data {X.shape} {X.dtype} and labels {y.shape}, "
            f"expected uint8 (n, 3072) and (n,); delete it and {_HOW_TO_GET}"
        )
    if y.size and y.dtype.kind not in "iu":
        raise ValueError(f"CIFAR-10 batch file {filename} has labels of dtype {y.dtype}, not integers; "
                         f"delete it and {_HOW_TO_GET}")
    y = y.astype(np.int64, copy=False)
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"CIFAR-10 batch file {filename} has labels outside 0..9; delete it and {_HOW_TO_GET}")
    return X.reshape(-1, 3, 32, 32), y


def _read_all(root):
    """uint8 channels-first Xtr, ytr, Xte, yte from the folder `root`."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"CIFAR-10 folder {root} does not exist; {_HOW_TO_GET}")
    parts = [_read_batch(os.path.join(root, name)) for name in TRAIN_BATCHES]
    Xte, yte = _read_batch(os.path.join(root, TEST_BATCH))
    return np.concatenate([X for X, _ in parts]), np.concatenate([y for _, y in parts]), Xte, yte


def load_CIFAR_batch(filename):
    """One batch file: X (n, 32, 32, 3) float64 and y (n,) int64 labels."""
    X, y = _read_batch(filename)
    return X.transpose(0, 2, 3, 1).astype(np.float64), y


def load_CIFAR10(root):
    """All of CIFAR-10 from the cifar-10-batches-py folder `root`.

    Returns Xtr (50000, 32, 32, 3), ytr (50000,), Xte (10000, 32, 32, 3), yte (10000,):
    pixels as float64 0..255, channels last (as the notebook's loader returns them).
    """
    Xtr, ytr, Xte, yte = _read_all(root)
    return Xtr.transpose(0, 2, 3, 1).astype(np.float64), ytr, Xte.transpose(0, 2, 3, 1).astype(np.float64), yte


def get_CIFAR10_data(num_training=49000, num_validation=1000, num_test=1000, subtract_mean=True,
                     root=None, dtype=np.float64):
    """The notebook's dict: X_train, y_train, X_val, y_val, X_test, y_test.

    Training = images 0..num_training-1, validation = the next num_validation
    (49000..49999 by default), test = the first num_test test images; the
    training split's mean image is subtracted from all; X_* are channels first
    (n, 3, 32, 32) of `dtype` (float32 halves the memory), y_* int64.
    `root` defaults to default_cifar10_dir().
    """
    check_dtype(dtype, subtract_mean)  # before reading 180 MB
    root = default_cifar10_dir() if root is None else root
    Xtr, ytr, Xte, yte = _read_all(root)  # uint8 until the split: a quarter of float64's memory
    return split(Xtr, ytr, Xte, yte, num_training, num_validation, num_test, subtract_mean,
                 f"CIFAR-10 in {root}", dtype)
