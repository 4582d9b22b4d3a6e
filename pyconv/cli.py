"""The ``pyconv`` command: ``pyconv train | info | bench``.

``train`` fits SimpleConvNet on MNIST (the full set when it is found, or the
subset embedded in the package), ``info`` prints the build configuration and
``bench`` hands its arguments to :func:`pyconv.bench.main`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["build_parser", "main"]

_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
# The command's own learning-rate defaults where they differ from the optimizer's:
# Adam at 0.002 (the book uses 0.001) gets the default 10 epochs on the embedded
# subset to >= 97% test accuracy from the book's 0.01 initialization.
_DEFAULT_LR = {"adam": 0.002}


def _err(message: str) -> None:
    print(f"pyconv: {message}", file=sys.stderr, flush=True)


def _int_at_least(minimum: int):
    """argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _weight_init(text: str):
    if text.lower() in ("he", "xavier"):
        return text.lower()
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'he', 'xavier' or a standard deviation > 0, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyconv",
        description="Fast CPU convolution layers for Python: train SimpleConvNet on MNIST, "
                    "show the build configuration, or run benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{train,info,bench}")
    sub.required = True

    tr = sub.add_parser(
        "train", help="train SimpleConvNet on MNIST",
        description="Train SimpleConvNet (conv-relu-pool-affine-relu-affine-softmax) on MNIST "
                    "and report the test accuracy, time per epoch and images/s.",
    )
    tr.add_argument("--subset", choices=("auto", "mini", "full"), default="auto",
                    help="'mini': the 10000/2000-image subset embedded in the package (no "
                         "files, no network); 'full': the 60000/10000 set (found or downloaded); "
                         "'auto' (default): full MNIST if it is found or can be downloaded, "
                         "else the embedded subset")
    tr.add_argument("--data-dir", default=None, metavar="DIR",
                    help="directory holding the MNIST IDX files (default: $PYCONV_DATA, then "
                         "the cache directory)")
    tr.add_argument("--epochs", type=_positive_int, default=20, help="default: 20 (the book)")
    tr.add_argument("--batch-size", type=_positive_int, default=100, help="default: 100")
    tr.add_argument("--optimizer", type=str.lower, choices=_OPTIMIZERS, default="adam",
                    help="default: adam")
    tr.add_argument("--lr", type=_positive_float, default=None,
                    help="learning rate (default: 0.002 for adam, otherwise the optimizer's "
                         "own default)")
    tr.add_argument("--weight-init", type=_weight_init, default=0.01, metavar="{he,xavier,STD}",
                    help="initial weights: a standard deviation, or He or Xavier scaling "
                         "(default: the book's 0.01)")
    tr.add_argument("--augment-shift", type=_nonnegative_int, default=2, metavar="PIXELS",
                    help="shift each training image by up to this many pixels at random every "
                         "epoch; 0 trains on the images as they are, as the book does "
                         "(default: 2)")
    tr.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="default: float32")
    tr.add_argument("--threads", type=_positive_int, default=None,
                    help="threads for the compiled kernels (default: OMP_NUM_THREADS or all CPUs)")
    tr.add_argument("--seed", type=int, default=0,
                    help="seed for the initial weights, shuffling and augmentation (default: 0)")
    tr.add_argument("--eval-samples", type=_positive_int, default=2000, metavar="N",
                    help="evaluate train/test accuracy after each epoch on the first N samples "
                         "of each set (default: 2000); the final accuracy always uses the whole "
                         "test set")
    tr.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                    help="train on the first N training images only (quick runs)")
    tr.add_argument("--test-limit", type=_positive_int, default=None, metavar="N",
                    help="evaluate on the first N test images only (quick runs)")
    tr.add_argument("--save", default=None, metavar="PATH.npz",
                    help="save the trained parameters (.npz; load with "
                         "SimpleConvNet.load_params)")
    tr.add_argument("--plot", default=None, metavar="PATH.png",
                    help="write the training curves (needs matplotlib)")
    tr.add_argument("--filters", default=None, metavar="PATH.png",
                    help="write the first-layer filters before and after training "
                         "(needs matplotlib)")
    tr.add_argument("--feature-maps", default=None, metavar="PATH.png",
                    help="write the first test image's feature maps after the first "
                         "convolution (needs matplotlib)")
    tr.add_argument("-q", "--quiet", action="store_true",
                    help="no progress bar and no per-epoch lines")

    sub.add_parser("info", help="print the build and run-time configuration")
    sub.add_parser("bench", help="run benchmarks (see: pyconv bench --help)", add_help=False)
    return parser


# ---------------------------------------------------------------------- train


def _load_data(args):
    """((x_train, t_train), (x_test, t_test)), description."""
    from .datasets import find_mnist, load_mnist

    if args.subset == "mini":
        return load_mnist(flatten=False, subset="mini"), "embedded MNIST subset"
    if args.subset == "full":
        return (load_mnist(flatten=False, root=args.data_dir, download=True),
                "full MNIST")
    directory = find_mnist(args.data_dir)
    if directory is not None:
        return (load_mnist(flatten=False, root=directory, download=False),
                f"full MNIST from {directory}")
    try:
        data = load_mnist(flatten=False, root=args.data_dir, download=True)
        return data, "full MNIST (downloaded)"
    except (OSError, ValueError) as e:
        lines = str(e).splitlines() or [type(e).__name__]
        reason = " ".join(line.strip() for line in lines[:2])
        _err(
            f"full MNIST was not found and could not be downloaded ({reason}); "
            "training on the embedded MNIST subset instead. "
            "Use --data-dir DIR or $PYCONV_DATA to point at the IDX files, "
            "or --subset mini to skip this check."
        )
        return load_mnist(flatten=False, subset="mini"), "embedded MNIST subset (fallback)"


def _keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed blocks instead of returning them to the OS.

    A training step allocates and frees a dozen arrays of several MB; by default
    glibc maps each afresh (or trims the heap after it), so the OS faults in and
    zeroes every page again: about 2 ms of a 10 ms SimpleConvNet step (measured).
    This process is ours, so the CLI raises the mmap and trim thresholds; library
    users can do the same with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_.
    Returns False where there is no glibc (nothing changed).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 128 << 20) == 1
    return bool(mallopt(m_trim_threshold, 256 << 20) == 1 and ok)


def _train(args) -> int:
    from . import get_num_threads, set_num_threads
    from .network import SimpleConvNet
    from .optimizers import get_optimizer
    from .trainer import Trainer

    if (args.plot or args.filters or args.feature_maps) and (
            importlib.util.find_spec("matplotlib") is None):
        _err("--plot, --filters and --feature-maps need matplotlib: pip install pyconv[plot]")
        return 1
    if args.threads is not None:
        set_num_threads(args.threads)
    _keep_freed_memory()
    try:
        ((x_train, t_train), (x_test, t_test)), source = _load_data(args)
    except (OSError, ValueError) as e:
        _err(f"could not load MNIST: {e}")
        return 1
    x_train, t_train = x_train[:args.limit], t_train[:args.limit]
    x_test, t_test = x_test[:args.test_limit], t_test[:args.test_limit]

    network = SimpleConvNet(input_dim=x_train.shape[1:], weight_init_std=args.weight_init,
                            dtype=np.dtype(args.dtype), seed=args.seed)
    lr = args.lr if args.lr is not None else _DEFAULT_LR.get(args.optimizer)
    optimizer = get_optimizer(args.optimizer, **({} if lr is None else {"lr": lr}))
    filters_before = network.params["W1"].copy() if args.filters else None
    verbose = not args.quiet
    print(f"data: {source}: {len(x_train)} training / {len(x_test)} test images")
    print(f"network: {network}")
    print(f"optimizer: {optimizer}, batch {args.batch_size}, epochs {args.epochs}, "
          f"augment shift {args.augment_shift}, seed {args.seed}, "
          f"{get_num_threads()} threads", flush=True)
    trainer = Trainer(network, x_train, t_train, x_test, t_test, epochs=args.epochs,
                      mini_batch_size=args.batch_size, optimizer=optimizer,
                      evaluate_sample_num_per_epoch=args.eval_samples, verbose=verbose,
                      seed=args.seed, augment_shift=args.augment_shift)
    start = time.perf_counter()
    acc = trainer.train()
    total = time.perf_counter() - start
    train_s = sum(h.seconds for h in trainer.history)
    per_epoch = train_s / len(trainer.history)
    if not verbose:  # the trainer prints it otherwise
        print(f"final test acc: {acc:.4f} ({len(x_test)} test images)")
    rate = len(x_train) * len(trainer.history) / train_s
    print(f"time: {per_epoch:.2f} s per epoch, {rate:,.0f} images/s (training steps); "
          f"{total:.1f} s in total with evaluation")

    if args.save:
        print(f"saved parameters to {network.save_params(args.save)}")
    if args.plot or args.filters or args.feature_maps:
        from . import plot

        if args.plot:
            print(f"wrote {plot.plot_training_curves(trainer, args.plot)}")
        if args.filters:
            written = plot.plot_filters(filters_before, args.filters, after=network.params["W1"])
            print(f"wrote {written}")
        if args.feature_maps:
            print(f"wrote {plot.plot_feature_maps(network, x_test[0], args.feature_maps)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyconv`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "info":
        return _info()
    return _train(args)


def _bench(argv: list[str]) -> int:
    try:
        from . import bench
    except ModuleNotFoundError as e:
        if e.name == "pyconv.bench":
            _err("'pyconv bench' is not available: the module pyconv.bench is missing from "
                 "this installation")
        else:
            _err(f"'pyconv bench' could not start: {e} (try: pip install pyconv[bench])")
        return 1
    return int(bench.main(argv) or 0)


def _info() -> int:
    from . import show_config

    show_config()
    return 0
