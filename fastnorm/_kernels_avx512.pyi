# Stub of the compiled module fastnorm._kernels_avx512 (src/_kernels_avx512.pyx):
# the AVX-512 (x86-64-v4) build of the same source as fastnorm._kernels.
from fastnorm._kernels import *  # noqa: F403
from fastnorm._kernels import ISA as ISA, SOURCE_HASH as SOURCE_HASH
