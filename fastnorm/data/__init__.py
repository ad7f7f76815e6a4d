"""Datasets as the notebook's dict: X_train, y_train, X_val, y_val, X_test, y_test.

    data = fastnorm.data.get_digits_data()    # offline: scikit-learn's 8x8 digits, (N, 1, 8, 8)
    data = fastnorm.data.get_CIFAR10_data()   # CIFAR-10, (N, 3, 32, 32); needs a download first:
    fastnorm.data.download_cifar10()          # or `fastnorm data download`
"""

from .cifar10 import default_cifar10_dir, default_data_dir, get_CIFAR10_data, load_CIFAR10, load_CIFAR_batch
from .digits import get_digits_data
from .download import CIFAR10_MD5, CIFAR10_URL, DownloadError, download_cifar10

__all__ = [
    "get_CIFAR10_data",
    "load_CIFAR10",
    "load_CIFAR_batch",
    "get_digits_data",
    "download_cifar10",
    "DownloadError",
    "default_data_dir",
    "default_cifar10_dir",
    "CIFAR10_URL",
    "CIFAR10_MD5",
]
