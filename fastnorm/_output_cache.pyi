# Stub of the compiled module fastnorm._output_cache (src/_output_cache.pyx): the
# NumPy memory handler under fastnorm's outputs: data on a cache line, in its page
# away from the arrays the kernel reads, blocks of MIN_SIZE bytes and more kept for
# the next output of their size.
import numpy as np
from numpy.typing import DTypeLike

DEFAULT_CAPACITY: int   # bytes of freed outputs kept at import (256 MiB)
MIN_SIZE: int           # outputs under this many bytes are NumPy's own (1 MiB)

def new_output(shape: int | tuple[int, ...], dtype: DTypeLike, near: np.ndarray | None = None,
               near_too: np.ndarray | None = None) -> np.ndarray: ...
def set_output_cache(max_bytes: int) -> int: ...
def output_cache_info() -> dict[str, int]: ...
