"""SimpleConvNet, the book's chapter-7 network:
conv - relu - pool(2x2, stride 2) - affine - relu - affine - softmax.

Parameters live in ``params`` (W1, b1: convolution; W2, b2 and W3, b3: the two
affine layers); the layers hold the very same arrays, so an optimizer that
updates ``params`` in place updates the layers. Images are NCHW.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .layers import Affine, Convolution, Pooling, Relu, SoftmaxWithLoss

__all__ = ["SimpleConvNet"]

_CONV_DEFAULTS = {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1}
_PARAM_KEYS = ("W1", "b1", "W2", "b2", "W3", "b3")
_POOL = 2  # pooling window and stride


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"SimpleConvNet: expected {name} to be an integer, but got {value!r}")
    if value < minimum:
        raise ValueError(f"SimpleConvNet: expected {name} >= {minimum}, but got {value}")
    return int(value)


def _init_scale(weight_init_std, fan_in: int) -> float:
    """Standard deviation for a layer with ``fan_in`` inputs."""
    if isinstance(weight_init_std, str):
        kind = weight_init_std.lower()
        if kind in ("he", "relu"):
            return float(np.sqrt(2.0 / fan_in))
        if kind in ("xavier", "sigmoid"):
            return float(np.sqrt(1.0 / fan_in))
        raise ValueError(
            f"SimpleConvNet: expected weight_init_std to be a positive number, 'he' or "
            f"'xavier', but got {weight_init_std!r}"
        )
    std = float(weight_init_std)
    if not (np.isfinite(std) and std > 0):
        raise ValueError(
            f"SimpleConvNet: expected weight_init_std to be a positive number, 'he' or "
            f"'xavier', but got {weight_init_std!r}"
        )
    return std


class SimpleConvNet:
    """conv - relu - pool - affine - relu - affine - softmax.

    Parameters
    ----------
    input_dim : (C, H, W) of one input image, default (1, 28, 28)
    conv_param : dict, optional
        ``filter_num`` (30), ``filter_size`` (5), ``pad`` (0), ``stride`` (1); a
        partial dict is merged with these defaults, an unknown key is a ValueError.
    hidden_size : units of the hidden affine layer (100)
    output_size : number of classes (10)
    weight_init_std : float, 'he' or 'xavier'
        Standard deviation of the Gaussian initial weights (0.01), or He
        (``sqrt(2 / fan_in)``) / Xavier (``sqrt(1 / fan_in)``) scaling with each
        layer's own fan-in. Biases start at zero.
    dtype : float32 (default) or float64; parameters and computation use it
    seed : int, numpy.random.Generator or None
        Source of the initial weights (``np.random.default_rng(seed)``). The
        weights are drawn in float64 and then cast, so one seed gives the same
        network in both dtypes.

    Attributes
    ----------
    params : dict of arrays W1 (FN, C, FH, FW), b1 (FN,), W2 (FN*PH*PW, hidden),
        b2 (hidden,), W3 (hidden, output), b3 (output,)
    layers : dict of the layers in order (Conv1, Relu1, Pool1, Affine1, Relu2, Affine2)
    last_layer : SoftmaxWithLoss
    last_loss : float or None, the loss of the last :meth:`gradient` call

    Raises
    ------
    ValueError
        Non-positive sizes, a filter larger than the (padded) input, or a
        pooling output of size 0.
    """

    def __init__(self, input_dim=(1, 28, 28), conv_param=None, hidden_size=100,
                 output_size=10, weight_init_std=0.01, dtype=np.float32, seed=None):
        dims = tuple(input_dim)
        if len(dims) != 3:
            raise ValueError(f"SimpleConvNet: expected input_dim (C, H, W), but got {input_dim!r}")
        channels, height, width = (_positive_int("input_dim", v) for v in dims)

        cp = dict(_CONV_DEFAULTS)
        if conv_param is not None:
            unknown = sorted(set(conv_param) - set(_CONV_DEFAULTS))
            if unknown:
                raise ValueError(
                    f"SimpleConvNet: unknown conv_param key(s) {unknown}; expected a subset of "
                    f"{sorted(_CONV_DEFAULTS)}"
                )
            cp.update(conv_param)
        filter_num = _positive_int("conv_param['filter_num']", cp["filter_num"])
        filter_size = _positive_int("conv_param['filter_size']", cp["filter_size"])
        pad = _positive_int("conv_param['pad']", cp["pad"], minimum=0)
        stride = _positive_int("conv_param['stride']", cp["stride"])
        hidden_size = _positive_int("hidden_size", hidden_size)
        output_size = _positive_int("output_size", output_size)

        if filter_size > min(height, width) + 2 * pad:
            raise ValueError(
                f"SimpleConvNet: filter_size {filter_size} is larger than the padded input "
                f"({height + 2 * pad}, {width + 2 * pad})"
            )
        conv_h = (height + 2 * pad - filter_size) // stride + 1
        conv_w = (width + 2 * pad - filter_size) // stride + 1
        pool_h = (conv_h - _POOL) // _POOL + 1
        pool_w = (conv_w - _POOL) // _POOL + 1
        if conv_h < _POOL or conv_w < _POOL:
            raise ValueError(
                f"SimpleConvNet: the convolution output ({conv_h}, {conv_w}) is smaller than "
                f"the {_POOL}x{_POOL} pooling window, so the pooling output would be empty"
            )

        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"SimpleConvNet: expected dtype float32 or float64, but got {dtype}")

        self.input_dim = (channels, height, width)
        self.conv_param = {"filter_num": filter_num, "filter_size": filter_size,
                           "pad": pad, "stride": stride}
        self.hidden_size = hidden_size
        self.output_size = output_size
        self.weight_init_std = weight_init_std
        self.dtype = dtype

        pool_output_size = filter_num * pool_h * pool_w
        shapes = {
            "W1": (filter_num, channels, filter_size, filter_size),
            "W2": (pool_output_size, hidden_size),
            "W3": (hidden_size, output_size),
        }
        fan_in = {"W1": channels * filter_size * filter_size, "W2": pool_output_size,
                  "W3": hidden_size}
        scales = {k: _init_scale(weight_init_std, fan_in[k]) for k in shapes}
        rng = np.random.default_rng(seed)
        self.params = {}
        for i in (1, 2, 3):
            w = f"W{i}"
            self.params[w] = (scales[w] * rng.standard_normal(shapes[w])).astype(dtype)
            self.params[f"b{i}"] = np.zeros(shapes[w][0] if i == 1 else shapes[w][1], dtype=dtype)

        p = self.params
        self.layers = {
            "Conv1": Convolution(p["W1"], p["b1"], stride, pad),
            "Relu1": Relu(),
            "Pool1": Pooling(pool_h=_POOL, pool_w=_POOL, stride=_POOL),
            "Affine1": Affine(p["W2"], p["b2"]),
            "Relu2": Relu(),
            "Affine2": Affine(p["W3"], p["b3"]),
        }
        self.last_layer = SoftmaxWithLoss()
        self.last_loss = None

    # ------------------------------------------------------------------ inference

    def _as_images(self, x) -> np.ndarray:
        """(N, C*H*W) or (N, C, H, W) -> (N, C, H, W) (a view when possible)."""
        x = np.asarray(x)
        c, h, w = self.input_dim
        if x.ndim == 2 and x.shape[1] == c * h * w:
            return x.reshape(x.shape[0], c, h, w)
        if x.ndim == 4 and x.shape[1:] == self.input_dim:
            return x
        raise ValueError(
            f"SimpleConvNet: expected x of shape (N, {c * h * w}) or (N, {c}, {h}, {w}), "
            f"but got {x.shape}"
        )

    def predict(self, x) -> np.ndarray:
        """Class scores (before softmax).

        x : (N, C*H*W) flat or (N, C, H, W) -> (N, output_size) in the network's dtype.
        """
        out = self._as_images(x)
        for layer in self.layers.values():
            out = layer.forward(out)
        return out

    def loss(self, x, t) -> float:
        """Mean cross-entropy loss; t : (N,) class indices or (N, output_size) one-hot."""
        return self.last_layer.forward(self.predict(x), t)

    def accuracy(self, x, t, batch_size=100) -> float:
        """Fraction of correctly classified samples, evaluated ``batch_size`` at a time.

        Every sample counts, including a last partial batch.
        t : (N,) class indices or (N, output_size) one-hot.
        """
        batch_size = _positive_int("batch_size", batch_size)
        x = self._as_images(x)
        t = np.asarray(t)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        n = x.shape[0]
        if t.shape[0] != n:
            raise ValueError(
                f"SimpleConvNet.accuracy: expected {n} labels, but got {t.shape[0]}"
            )
        if n == 0:
            raise ValueError("SimpleConvNet.accuracy: expected at least one sample")
        correct = 0
        for i in range(0, n, batch_size):
            y = self.predict(x[i:i + batch_size])
            correct += int(np.count_nonzero(np.argmax(y, axis=1) == t[i:i + batch_size]))
        return correct / n

    # ------------------------------------------------------------------ gradients

    def gradient(self, x, t) -> dict:
        """Gradients of the loss by backpropagation.

        Returns
        -------
        grads : dict with the keys and shapes of ``params``. The loss of this
            forward pass is stored in ``last_loss`` (no second forward needed).
        """
        self.last_loss = self.loss(x, t)
        dout = self.last_layer.backward(1)
        layers = list(self.layers.values())
        for layer in reversed(layers[1:]):
            dout = layer.backward(dout)
        layers[0].backward(dout, need_dx=False)  # the input gradient is never used
        conv, a1, a2 = self.layers["Conv1"], self.layers["Affine1"], self.layers["Affine2"]
        return {"W1": conv.dW, "b1": conv.db, "W2": a1.dW, "b2": a1.db, "W3": a2.dW, "b3": a2.db}

    def numerical_gradient(self, x, t, eps=None) -> dict:
        """Gradients by central differences ``(L(p + eps) - L(p - eps)) / (2 eps)``.

        Slow (two forward passes per parameter element); for checking
        :meth:`gradient` on small networks in float64. ``eps`` defaults to 1e-6
        in float64 and 1e-2 in float32. Each parameter is restored exactly.
        """
        if eps is None:
            eps = 1e-6 if self.dtype == np.float64 else 1e-2
        grads = {}
        for key in _PARAM_KEYS:
            param = self.params[key]
            flat = param.reshape(-1)  # a view: params are C-contiguous
            grad = np.zeros(param.size, dtype=np.float64)
            for i in range(flat.size):
                old = flat[i]
                flat[i] = old + eps
                fp = self.loss(x, t)
                flat[i] = old - eps
                fm = self.loss(x, t)
                flat[i] = old
                grad[i] = (fp - fm) / (2 * eps)
            grads[key] = grad.reshape(param.shape).astype(self.dtype)
        return grads

    # ------------------------------------------------------------------ persistence

    def save_params(self, path) -> Path:
        """Write the parameters to an ``.npz`` file at exactly ``path`` (atomically).

        Returns the path written.
        """
        path = Path(os.fspath(path))
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp",
                                   dir=path.parent if str(path.parent) else ".")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{k: self.params[k] for k in _PARAM_KEYS})
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    def load_params(self, path) -> None:
        """Load parameters saved by :meth:`save_params` into this network.

        The file is read with ``allow_pickle=False``; it must hold exactly the keys
        W1, b1, W2, b2, W3, b3 with this network's shapes and a float dtype (values
        are cast to the network's dtype). Everything is validated before anything
        is copied; values are copied *into* the existing arrays, so the layers
        keep sharing them.

        Raises
        ------
        ValueError
            Not an ``.npz`` archive (e.g. a pickle), a corrupt file, object arrays,
            or wrong keys, shapes or dtypes.
        """
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except IsADirectoryError as e:
            raise ValueError(f"load_params: {path} is a directory") from e
        loaded = {}
        try:
            archive = np.load(io.BytesIO(blob), allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with archive:
                keys = set(archive.files)
                if keys != set(_PARAM_KEYS):
                    raise ValueError(f"expected keys {list(_PARAM_KEYS)}, but got {sorted(keys)}")
                for key in _PARAM_KEYS:
                    loaded[key] = archive[key]
        except ValueError as e:
            raise ValueError(f"load_params: cannot load {path}: {e}") from None
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as e:
            raise ValueError(f"load_params: {path} is not a valid .npz file: {e}") from None
        for key in _PARAM_KEYS:
            arr, own = loaded[key], self.params[key]
            if arr.dtype.kind != "f":
                raise ValueError(
                    f"load_params: expected {key} to have a float dtype, but got {arr.dtype}"
                )
            if arr.shape != own.shape:
                raise ValueError(
                    f"load_params: expected {key} of shape {own.shape}, but got {arr.shape}"
                )
        for key in _PARAM_KEYS:
            np.copyto(self.params[key], loaded[key], casting="same_kind")

    def __repr__(self):
        cp = self.conv_param
        return (
            f"SimpleConvNet(input_dim={self.input_dim}, filter_num={cp['filter_num']}, "
            f"filter_size={cp['filter_size']}, pad={cp['pad']}, stride={cp['stride']}, "
            f"hidden_size={self.hidden_size}, output_size={self.output_size}, "
            f"dtype={self.dtype})"
        )
