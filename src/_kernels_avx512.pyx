# The same kernels as _kernels.pyx, compiled a third time for AVX-512 (x86-64-v4:
# F, CD, BW, DQ, VL, with AVX2 and FMA; see setup.py); fastnorm/_build.py imports
# this module when the CPU supports it. One source: this file only includes the other.

include "_kernels.pyx"
