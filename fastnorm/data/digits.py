"""scikit-learn's bundled 8x8 handwritten digits, as the notebook's data dict.

Needs no download, so training runs on a fresh machine. 1797 grey images, 10
classes, pixel values 0..16; shaped channels first (N, 1, 8, 8), so a model
takes input_dim=64, num_classes=10.
"""

from __future__ import annotations

import numpy as np

from ._split import check_count, check_dtype, split

NUM_SAMPLES = 1797


def get_digits_data(num_training=1297, num_validation=250, num_test=250, subtract_mean=True,
                    dtype=np.float64):
    """The dict of get_CIFAR10_data for the digits: X_train, y_train, X_val, y_val, X_test, y_test.

    The samples keep scikit-learn's order: the first num_training train, the next
    num_validation validate, the test samples follow them (so all three are
    disjoint); the training split's mean image is subtracted from all three.
    X_* are (n, 1, 8, 8) of `dtype`, y_* int64 labels in [0, 10).
    """
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    check_dtype(dtype, subtract_mean)
    num_training = check_count("num_training", num_training, 1)
    num_validation = check_count("num_validation", num_validation)
    num_test = check_count("num_test", num_test)
    n_fit = num_training + num_validation
    if n_fit + num_test > NUM_SAMPLES:
        raise ValueError(
            f"num_training + num_validation + num_test = {n_fit + num_test} is more than the "
            f"{NUM_SAMPLES} digits"
        )
    digits = load_digits()
    X = digits.images.reshape(-1, 1, 8, 8)
    y = digits.target
    return split(X[:n_fit], y[:n_fit], X[n_fit:], y[n_fit:],
                 num_training, num_validation, num_test, subtract_mean, "the digits dataset", dtype)
