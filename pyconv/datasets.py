"""MNIST: find the four canonical IDX files (or download them once), verify, parse,
and return arrays in the book's format; or load the small subset shipped in the package.

Images are returned as float32 (N, 784) or (N, 1, 28, 28); labels as int64 (N,) or
one-hot float32 (N, 10).

Verification policy
-------------------
* Every file is validated structurally: IDX magic number (2051 images, 2049 labels),
  28 x 28 images, exact length (no truncation, no trailing bytes), labels in 0..9, and
  equal image/label counts within a split.
* A file found locally whose decompressed size equals the canonical one (i.e. it claims
  to be the full MNIST file) must also match the canonical sha256 of the *decompressed*
  bytes, so a re-compressed ``.gz`` is accepted and a corrupted or substituted copy
  (e.g. Fashion-MNIST, which has the same names and sizes) is rejected. A structurally
  valid file of another length is not MNIST-sized and is loaded as-is (a user's own
  IDX subset, or a test fixture).
* A downloaded file is always hashed, and is renamed into place only once it matches.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import tempfile
import urllib.request
import zlib
from importlib import resources
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np

__all__ = ["MIRRORS", "find_mnist", "load_mnist"]

PathLike = Union[str, "os.PathLike[str]"]


class _IdxFile(NamedTuple):
    name: str  # canonical file name, without ".gz"
    sha256: str  # of the decompressed file
    nbytes: int  # size of the decompressed file


# Keyed by (split, kind). Tests may monkeypatch entries (hash and size) to serve fixtures.
_FILES: dict[tuple[str, str], _IdxFile] = {
    ("train", "images"): _IdxFile(
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        16 + 60000 * 28 * 28,
    ),
    ("train", "labels"): _IdxFile(
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        8 + 60000,
    ),
    ("test", "images"): _IdxFile(
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        16 + 10000 * 28 * 28,
    ),
    ("test", "labels"): _IdxFile(
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        8 + 10000,
    ),
}

#: HTTPS mirrors serving ``<name>.gz``, tried in order (yann.lecun.com no longer serves them).
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

_IMAGE_MAGIC = 2051
_LABEL_MAGIC = 2049
_ROWS = _COLS = 28
_NUM_CLASSES = 10
_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # the largest .gz is about 9.9 MB
_TIMEOUT_S = 60.0
_SUBSETS = (None, "full", "mini")
_MINI_RESOURCE = "mnist_mini.npz"

_HOW_TO_FIX = (
    "Pass root='/path/to/mnist' or set the environment variable PYCONV_DATA to a directory "
    "holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (each raw or .gz), or call with download=True to fetch them once "
    "into the cache directory; load_mnist(subset='mini') needs no files at all."
)


# --------------------------------------------------------------------------- locating


def _cache_dir() -> Path:
    """The per-user download directory: ``$XDG_CACHE_HOME/pyconv/mnist`` or
    ``~/.cache/pyconv/mnist`` (a relative XDG_CACHE_HOME is ignored, as the spec says)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "pyconv" / "mnist"


def _candidate_dirs(root: PathLike | None) -> list[Path]:
    """Directories searched, in order: root, $PYCONV_DATA (each also with a ``mnist``
    sub-directory), then the cache directory."""
    dirs: list[Path] = []
    env = os.environ.get("PYCONV_DATA", "")
    for base in (root, env or None):
        if base is not None:
            base = Path(os.fspath(base)).expanduser()
            dirs += [base, base / "mnist"]
    dirs.append(_cache_dir())
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _existing_file(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz``, whichever exists first."""
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def find_mnist(root: PathLike | None = None) -> Path | None:
    """Return the first directory holding all four MNIST IDX files, or None.

    Searches ``root``, then ``$PYCONV_DATA`` (each also with a ``mnist``
    sub-directory), then the user cache directory (``$XDG_CACHE_HOME/pyconv/mnist``
    or ``~/.cache/pyconv/mnist``). Only checks that the files exist (raw or ``.gz``);
    ``load_mnist`` validates and verifies them. Never downloads.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Directory to look in first.

    Returns
    -------
    pathlib.Path or None
    """
    for directory in _candidate_dirs(root):
        if all(_existing_file(directory, f.name) for f in _FILES.values()):
            return directory
    return None


# --------------------------------------------------------------------------- reading


def _read_decompressed(path: Path, limit: int) -> bytes:
    """The file's bytes, gunzipped if they start with the gzip magic (whatever the
    extension says: browsers sometimes unpack a .gz and keep the name)."""
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head != b"\x1f\x8b":
            data = f.read(limit + 1)
        else:
            try:
                with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                    data = gz.read(limit + 1)
            except (OSError, EOFError, zlib.error) as e:
                raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from e
    if len(data) > limit:
        raise ValueError(
            f"{path}: larger than the canonical MNIST file ({limit} bytes decompressed); "
            "not an MNIST IDX file"
        )
    return data


def _parse_images(data: bytes, source: str) -> np.ndarray:
    """IDX3 bytes -> read-only uint8 view (N, 28, 28)."""
    if len(data) < 16:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} bytes, expected 16)")
    magic, n, rows, cols = (int(v) for v in np.frombuffer(data, ">u4", count=4))
    if magic != _IMAGE_MAGIC:
        raise ValueError(
            f"{source}: bad magic number {magic}, expected {_IMAGE_MAGIC} (IDX uint8 images)"
        )
    if (rows, cols) != (_ROWS, _COLS):
        raise ValueError(f"{source}: images are {rows}x{cols}, expected {_ROWS}x{_COLS}")
    expected = 16 + n * rows * cols
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "trailing bytes"
        raise ValueError(
            f"{source}: {kind}: header says {n} images ({expected} bytes), file has {len(data)}"
        )
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)


def _parse_labels(data: bytes, source: str) -> np.ndarray:
    """IDX1 bytes -> read-only uint8 view (N,), values checked to be 0..9."""
    if len(data) < 8:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} bytes, expected 8)")
    magic, n = (int(v) for v in np.frombuffer(data, ">u4", count=2))
    if magic != _LABEL_MAGIC:
        raise ValueError(
            f"{source}: bad magic number {magic}, expected {_LABEL_MAGIC} (IDX uint8 labels)"
        )
    expected = 8 + n
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "trailing bytes"
        raise ValueError(
            f"{source}: {kind}: header says {n} labels ({expected} bytes), file has {len(data)}"
        )
    labels = np.frombuffer(data, np.uint8, offset=8)
    if n and int(labels.max()) >= _NUM_CLASSES:
        raise ValueError(
            f"{source}: label {int(labels.max())} out of range, expected 0..{_NUM_CLASSES - 1}"
        )
    return labels


def _check_sha256(data: bytes, spec: _IdxFile, source: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ValueError(
            f"{source}: sha256 of the decompressed data is {digest}, but the canonical "
            f"{spec.name} has {spec.sha256}; the file is corrupt or not MNIST. "
            "Delete it and download again (download=True), or point root= elsewhere."
        )


def _load_idx(path: Path, spec: _IdxFile, kind: str, *, require_hash: bool) -> np.ndarray:
    """Read, validate and (per the module's policy) verify one IDX file."""
    data = _read_decompressed(path, spec.nbytes)
    source = str(path)
    arr = _parse_images(data, source) if kind == "images" else _parse_labels(data, source)
    if require_hash or len(data) == spec.nbytes:
        _check_sha256(data, spec, source)
    return arr


def _load_split(directory: Path, split: str, *, require_hash: bool = False):
    """(images (N, 28, 28) uint8, labels (N,) uint8) of one split from ``directory``."""
    arrays = {}
    for kind in ("images", "labels"):
        spec = _FILES[(split, kind)]
        path = _existing_file(directory, spec.name)
        if path is None:
            raise FileNotFoundError(f"{directory}: no {spec.name} or {spec.name}.gz")
        arrays[kind] = _load_idx(path, spec, kind, require_hash=require_hash)
    x, t = arrays["images"], arrays["labels"]
    if len(x) != len(t):
        raise ValueError(f"{directory}: the {split} split has {len(x)} images but {len(t)} labels")
    return x, t


# --------------------------------------------------------------------------- download


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` (HTTPS only) to the file ``dest``. Tests replace this function."""
    if not url.startswith("https://"):
        raise ValueError(f"refusing to download over a non-HTTPS URL: {url}")
    request = urllib.request.Request(url, headers={"User-Agent": "pyconv"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response, open(dest, "wb") as f:
        total = 0
        while chunk := response.read(1 << 20):
            total += len(chunk)
            if total > _MAX_DOWNLOAD_BYTES:
                raise ValueError(f"{url}: more than {_MAX_DOWNLOAD_BYTES} bytes; giving up")
            f.write(chunk)


def _download_missing(cache: Path) -> None:
    """Download every canonical file missing from ``cache``. Each download goes to a
    temporary file in ``cache``, is validated and hash-verified, and only then renamed
    to ``<name>.gz``; a failed attempt leaves nothing behind."""
    cache.mkdir(parents=True, exist_ok=True)
    for (_, kind), spec in _FILES.items():
        if _existing_file(cache, spec.name) is not None:
            continue
        errors: list[str] = []
        bad_data = False
        for mirror in MIRRORS:
            url = mirror + spec.name + ".gz"
            fd, tmp_name = tempfile.mkstemp(prefix=spec.name + ".", suffix=".part", dir=cache)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                print(f"pyconv: downloading {url}", file=sys.stderr)
                _fetch(url, tmp)
                _load_idx(tmp, spec, kind, require_hash=True)
                os.replace(tmp, cache / (spec.name + ".gz"))
                break
            except ValueError as e:
                bad_data = True
                errors.append(f"{url}: {e}")
            except OSError as e:  # network errors (URLError, HTTPError) are OSErrors
                errors.append(f"{url}: {e}")
            finally:
                if tmp.exists():
                    tmp.unlink()
        else:
            exc = ValueError if bad_data else FileNotFoundError
            raise exc(
                f"could not download a verified {spec.name}.gz into {cache}:\n  "
                + "\n  ".join(errors)
                + "\n"
                + _HOW_TO_FIX
            )


# --------------------------------------------------------------------------- embedded subset


def _load_mini():
    """The embedded stratified subset: ((x (10000,28,28), t), (x (2000,28,28), t)), uint8."""
    resource = resources.files("pyconv") / "data" / _MINI_RESOURCE
    try:
        blob = resource.read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"the embedded MNIST subset pyconv/data/{_MINI_RESOURCE} is missing from this "
            "installation; reinstall pyconv"
        ) from e
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: z[k] for k in ("x_train", "t_train", "x_test", "t_test")}
    for split in ("train", "test"):
        x, t = arrays["x_" + split], arrays["t_" + split]
        ok = (
            x.dtype == np.uint8
            and t.dtype == np.uint8
            and x.ndim == 3
            and x.shape[1:] == (_ROWS, _COLS)
            and t.shape == (len(x),)
            and (len(t) == 0 or int(t.max()) < _NUM_CLASSES)
        )
        if not ok:
            raise ValueError(f"the embedded MNIST subset {_MINI_RESOURCE} is malformed")
    return (arrays["x_train"], arrays["t_train"]), (arrays["x_test"], arrays["t_test"])


# --------------------------------------------------------------------------- public API


def _format(x: np.ndarray, t: np.ndarray, normalize: bool, flatten: bool, one_hot: bool):
    """uint8 (N, 28, 28) images and labels -> the book's arrays (fresh, writable)."""
    images = x.astype(np.float32)
    if normalize:
        images /= np.float32(255.0)
    n = len(images)
    images = images.reshape(n, _ROWS * _COLS) if flatten else images.reshape(n, 1, _ROWS, _COLS)
    if one_hot:
        labels = np.zeros((n, _NUM_CLASSES), dtype=np.float32)
        labels[np.arange(n), t] = 1.0
    else:
        labels = t.astype(np.int64)
    return images, labels


def load_mnist(
    normalize: bool = True,
    flatten: bool = True,
    one_hot_label: bool = False,
    root: PathLike | None = None,
    download: bool = True,
    subset: str | None = None,
):
    """Load MNIST in the book's format.

    The full set is looked for in ``root``, then ``$PYCONV_DATA`` (each also with a
    ``mnist`` sub-directory), then the user cache directory
    (``$XDG_CACHE_HOME/pyconv/mnist`` or ``~/.cache/pyconv/mnist``); the first directory
    holding all four canonical IDX files (``train-images-idx3-ubyte`` etc., raw or
    ``.gz``) is used. If none does and ``download`` is true, the missing files are
    downloaded over HTTPS into the cache directory (see ``MIRRORS``), verified against
    the canonical sha256 before being renamed into place. See the module docstring for
    what is validated and when local files are hashed.

    Parameters
    ----------
    normalize : bool
        Scale pixels to [0, 1]; otherwise keep 0..255 (float32 either way).
    flatten : bool
        Images as (N, 784); otherwise (N, 1, 28, 28).
    one_hot_label : bool
        Labels as one-hot (N, 10) float32; otherwise int64 class indices (N,).
    root : str or os.PathLike, optional
        Directory to look in first.
    download : bool
        Download the full set into the cache directory if it is not found.
    subset : {None, "full", "mini"}
        ``None``/``"full"``: the canonical 60000/10000 set. ``"mini"``: the stratified
        subset shipped inside the package (10000 training images, 1000 per class, and
        2000 test images, 200 per class; see ``pyconv/data/README.md``); ``root`` and
        ``download`` are then ignored.

    Returns
    -------
    ((x_train, t_train), (x_test, t_test))
        x : (N, 784) or (N, 1, 28, 28) float32; t : (N,) int64 or (N, 10) float32.

    Raises
    ------
    FileNotFoundError
        The files are not found and ``download`` is false or every mirror failed.
    ValueError
        A file is malformed or fails verification, or ``subset`` is unknown.
    """
    if not (subset is None or (isinstance(subset, str) and subset in _SUBSETS)):
        raise ValueError(f"load_mnist: subset must be None, 'full' or 'mini', but got {subset!r}")
    if subset == "mini":
        train, test = _load_mini()
    else:
        directory = find_mnist(root)
        if directory is None:
            searched = ", ".join(str(d) for d in _candidate_dirs(root))
            if not download:
                raise FileNotFoundError(
                    f"MNIST not found (looked in: {searched}) and download=False. " + _HOW_TO_FIX
                )
            directory = _cache_dir()
            _download_missing(directory)
        train = _load_split(directory, "train")
        test = _load_split(directory, "test")
    (x_train, t_train), (x_test, t_test) = (
        _format(x, t, normalize, flatten, one_hot_label) for x, t in (train, test)
    )
    return (x_train, t_train), (x_test, t_test)
