"""fastnorm: compiled normalization kernels (batch, layer, spatial batch, group and RMS
norm) behind the cs231n NumPy API.

    import fastnorm as fn
    out, cache = fn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dgamma, dbeta = fn.batchnorm_backward(dout, cache)

``fastnorm.reference`` has the pure-NumPy versions of the same functions.
"""

from ._build import kernel_isa
from ._build import load_kernels as _load_kernels

_load_kernels()  # an ImportError that says how to build, never a NumPy fall-back

from . import _validate, _validate_nd, gradient_check, reference  # noqa: E402
from ._threads import get_num_threads, num_threads, openmp_enabled, set_num_threads  # noqa: E402
from ._output_cache import output_cache_info, set_output_cache  # noqa: E402
from .normalization import (  # noqa: E402
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    layernorm_backward,
    layernorm_forward,
)
from .normalization_nd import (  # noqa: E402
    rmsnorm_backward,
    rmsnorm_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    spatial_groupnorm_backward,
    spatial_groupnorm_forward,
)
from . import data, layers, optim  # noqa: E402
from .fc_net import FullyConnectedNet  # noqa: E402
from .convnet import ConvNet  # noqa: E402
from .solver import Solver  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    *_validate.OPS,
    *_validate_nd.OPS,
    "reference",
    "gradient_check",
    "openmp_enabled",
    "kernel_isa",
    "get_num_threads",
    "set_num_threads",
    "num_threads",
    "set_output_cache",
    "output_cache_info",
    "layers",
    "optim",
    "data",
    "FullyConnectedNet",
    "ConvNet",
    "Solver",
]
