# The same kernels as _kernels.pyx, compiled a second time with -mavx2 -mfma
# (see setup.py); fastnorm/_build.py imports this module instead of _kernels
# when the CPU supports both. One source: this file only includes the other.

include "_kernels.pyx"
