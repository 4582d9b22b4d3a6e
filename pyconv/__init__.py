"""pyconv: fast CPU convolution layers for Python.

A compiled C++17/OpenMP core (im2col, a blocked SIMD GEMM, convolution and
pooling) behind the layer names readers of *Deep Learning from Scratch* know.
"""

from __future__ import annotations

import os as _os

# Threads that wait should sleep, not spin: on a shared or busy machine a
# spinning OpenMP barrier turns a 2-thread run into a cliff. libgomp reads this
# when it loads, i.e. on the import of _core just below; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import (  # noqa: E402  (plot imports matplotlib only when used)
    _core,
    datasets,
    functional,
    functions,
    layers,
    optimizers,
    plot,
)
from .datasets import find_mnist, load_mnist  # noqa: E402
from .functional import col2im, im2col  # noqa: E402
from .layers import (  # noqa: E402
    Affine,
    Convolution,
    Dropout,
    Pooling,
    Relu,
    Sigmoid,
    SoftmaxWithLoss,
)
from .network import SimpleConvNet  # noqa: E402
from .optimizers import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop, get_optimizer  # noqa: E402
from .trainer import EpochStats, Trainer  # noqa: E402

__version__ = _core.__version__

__all__ = [
    "SGD",
    "AdaGrad",
    "Adam",
    "Affine",
    "Convolution",
    "Dropout",
    "EpochStats",
    "Momentum",
    "Nesterov",
    "Pooling",
    "RMSprop",
    "Relu",
    "Sigmoid",
    "SimpleConvNet",
    "SoftmaxWithLoss",
    "Trainer",
    "__version__",
    "col2im",
    "config",
    "datasets",
    "empty_cache",
    "find_mnist",
    "functional",
    "functions",
    "get_num_threads",
    "get_optimizer",
    "im2col",
    "layers",
    "load_mnist",
    "optimizers",
    "plot",
    "set_num_threads",
    "show_config",
]


_MAX_THREADS = 1024


def set_num_threads(n: int) -> None:
    """Set the number of threads pyconv's kernels use (1 <= n <= 1024)."""
    n = functional._int_arg(n, "n")
    if not 1 <= n <= _MAX_THREADS:
        raise ValueError(f"set_num_threads: expected 1 <= n <= {_MAX_THREADS}, but got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Threads pyconv's kernels use; defaults to OMP_NUM_THREADS or the CPU count."""
    return _core.get_num_threads()


def empty_cache() -> None:
    """Return the memory of released output arrays to the system.

    Arrays of 256 KiB or more that pyconv's kernels returned are, once
    released, kept (up to 256 MiB in all) and reused for the next outputs of
    about their size, as a training loop allocates the same outputs every
    step; ``config()["output_cache_bytes"]`` is what is held. Arrays still in
    use are not affected.
    """
    _core.empty_cache()


def config() -> dict:
    """Build and run-time configuration as a dict (see :func:`show_config`)."""
    return dict(_core.config())


def show_config() -> None:
    """Print version, compiler, OpenMP, threads and the SIMD code path in use."""
    cfg = config()
    width = max(len(k) for k in cfg)
    for key, value in cfg.items():
        print(f"{key:<{width}} : {value}")
