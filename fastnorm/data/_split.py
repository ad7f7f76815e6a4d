"""The notebook's split and preprocessing, shared by every dataset."""

from __future__ import annotations

import numbers

import numpy as np


def check_count(name: str, value, low: int = 0) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_dtype(dtype, subtract_mean) -> np.dtype:
    """The X dtype: a real one, and floating when the mean is subtracted (in place:
    integers would truncate the mean, unsigned ones wrap around below zero)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "fiu" or (subtract_mean and dtype.kind != "f"):
        need = "a float dtype" if subtract_mean else "a real (float or integer) dtype"
        raise TypeError(f"dtype must be {need}{' with subtract_mean' if subtract_mean else ''}, got {dtype}")
    return dtype


def split(X_train, y_train, X_test, y_test, num_training, num_validation, num_test, subtract_mean,
          source: str, dtype=np.float64) -> dict:
    """The notebook's dict from channels-first arrays (any real dtype, e.g. uint8 pixels).

    Training = the first num_training samples, validation = the next
    num_validation, test = the first num_test of the test arrays; with
    subtract_mean the mean image of the training split (computed in float64)
    is subtracted from all three. X_* are new C-contiguous arrays of `dtype`.
    """
    dtype = check_dtype(dtype, subtract_mean)
    num_training = check_count("num_training", num_training, 1)
    num_validation = check_count("num_validation", num_validation)
    num_test = check_count("num_test", num_test)
    if num_training + num_validation > X_train.shape[0]:
        raise ValueError(
            f"num_training + num_validation = {num_training} + {num_validation} is more than the "
            f"{X_train.shape[0]} training samples of {source}"
        )
    if num_test > X_test.shape[0]:
        raise ValueError(f"num_test = {num_test} is more than the {X_test.shape[0]} test samples of {source}")
    data = {
        "X_train": X_train[:num_training],
        "y_train": y_train[:num_training],
        "X_val": X_train[num_training:num_training + num_validation],
        "y_val": y_train[num_training:num_training + num_validation],
        "X_test": X_test[:num_test],
        "y_test": y_test[:num_test],
    }
    mean_image = np.mean(data["X_train"], axis=0, dtype=np.float64).astype(dtype) if subtract_mean else None
    for key in ("X_train", "X_val", "X_test"):
        # cast the slice once (a new array, never a view of the source); subtract in place
        data[key] = np.array(data[key], dtype=dtype, order="C")
        if mean_image is not None:
            data[key] -= mean_image
    for key in ("y_train", "y_val", "y_test"):
        data[key] = np.array(data[key], dtype=np.int64)
    return data
