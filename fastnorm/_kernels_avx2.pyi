# Stub of the compiled module fastnorm._kernels_avx2 (src/_kernels_avx2.pyx): the
# AVX2+FMA build of the same source as fastnorm._kernels, with its interface.
from fastnorm._kernels import *  # noqa: F403
from fastnorm._kernels import ISA as ISA, SOURCE_HASH as SOURCE_HASH
