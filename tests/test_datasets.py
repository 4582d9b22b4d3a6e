"""pyconv.datasets: IDX parsing and validation on small fixtures, search order, the
download path (with a fake fetch: tests never touch the network), the embedded subset,
and the real MNIST files when they are available."""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from pyconv import datasets

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
NAMES = {key: spec.name for key, spec in datasets._FILES.items()}
# From the README next to the real files (REAL_MNIST).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
REAL_FETCH = datasets._fetch  # saved before the autouse fixture replaces it


# --------------------------------------------------------------------------- fixtures


def idx_images(x: np.ndarray, magic: int = 2051) -> bytes:
    """(N, R, C) uint8 -> IDX3 bytes (big-endian header)."""
    n, rows, cols = x.shape
    return np.array([magic, n, rows, cols], ">u4").tobytes() + x.astype(np.uint8).tobytes()


def idx_labels(t: np.ndarray, magic: int = 2049) -> bytes:
    """(N,) uint8 -> IDX1 bytes."""
    return np.array([magic, len(t)], ">u4").tobytes() + t.astype(np.uint8).tobytes()


def make_split(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    t = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(t)
    return x, t


def fixture_bytes(n_train: int = 30, n_test: int = 20, seed: int = 0) -> dict:
    """Decompressed bytes of the four files, keyed like datasets._FILES, plus the arrays."""
    train, test = make_split(n_train, seed), make_split(n_test, seed + 1)
    blobs = {
        ("train", "images"): idx_images(train[0]),
        ("train", "labels"): idx_labels(train[1]),
        ("test", "images"): idx_images(test[0]),
        ("test", "labels"): idx_labels(test[1]),
    }
    return {"blobs": blobs, "train": train, "test": test}


def write_files(directory: Path, blobs: dict, gz: bool | dict = True) -> None:
    """Write each blob under its canonical name, gzip-compressed (``name.gz``) or raw."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, data in blobs.items():
        use_gz = gz[key] if isinstance(gz, dict) else gz
        if use_gz:
            (directory / (NAMES[key] + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / NAMES[key]).write_bytes(data)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """An empty cache dir, no PYCONV_DATA, and a fetch that fails the test if called."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PYCONV_DATA", raising=False)

    def no_network(url, dest):
        pytest.fail(f"a test tried to download {url}")

    monkeypatch.setattr(datasets, "_fetch", no_network)


def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "xdg" / "pyconv" / "mnist"


def expected_format(x, t, normalize=True, flatten=True, one_hot=False):
    images = x.astype(np.float32) / (255.0 if normalize else 1.0)
    images = images.reshape(len(x), -1) if flatten else images.reshape(len(x), 1, 28, 28)
    labels = np.eye(10, dtype=np.float32)[t] if one_hot else t.astype(np.int64)
    return images.astype(np.float32), labels


# --------------------------------------------------------------------------- loading fixtures


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("flatten", [True, False])
@pytest.mark.parametrize("one_hot", [False, True])
def test_load_fixture(tmp_path, gz, normalize, flatten, one_hot):
    fx = fixture_bytes()
    write_files(tmp_path / "d", fx["blobs"], gz=gz)
    (x_train, t_train), (x_test, t_test) = datasets.load_mnist(
        normalize=normalize,
        flatten=flatten,
        one_hot_label=one_hot,
        root=tmp_path / "d",
        download=False,
    )
    for (x, t), (x_ref, t_ref) in (
        ((x_train, t_train), fx["train"]),
        ((x_test, t_test), fx["test"]),
    ):
        want_x, want_t = expected_format(x_ref, t_ref, normalize, flatten, one_hot)
        assert x.shape == want_x.shape and x.dtype == np.float32
        assert t.shape == want_t.shape and t.dtype == want_t.dtype
        np.testing.assert_allclose(x, want_x, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(t, want_t)
        assert x.flags.writeable and t.flags.writeable
    if normalize:
        assert 0.0 <= x_train.min() and x_train.max() <= 1.0


def test_mixed_raw_gzip_and_misnamed_gz(tmp_path):
    # A browser may unpack a download and keep the ".gz" name: the content decides.
    fx = fixture_bytes()
    d = tmp_path / "d"
    write_files(d, fx["blobs"], gz={k: k[1] == "images" for k in fx["blobs"]})
    (d / NAMES[("test", "labels")]).rename(d / (NAMES[("test", "labels")] + ".gz"))
    (_, t_train), (_, t_test) = datasets.load_mnist(root=d, download=False)
    np.testing.assert_array_equal(t_test, fx["test"][1])
    np.testing.assert_array_equal(t_train, fx["train"][1])


def test_empty_splits_are_valid(tmp_path):
    fx = fixture_bytes(n_train=0, n_test=0)
    write_files(tmp_path, fx["blobs"])
    (x, t), _ = datasets.load_mnist(root=tmp_path, download=False, flatten=False)
    assert x.shape == (0, 1, 28, 28) and t.shape == (0,)


def _corrupt(case: str, blobs: dict) -> dict:
    blobs = dict(blobs)
    ti, tl = ("train", "images"), ("train", "labels")
    x, t = make_split(5, 42)
    if case == "image magic":
        blobs[ti] = idx_images(x, magic=2049)
    elif case == "label magic":
        blobs[tl] = idx_labels(t, magic=2051)
    elif case == "truncated images":
        blobs[ti] = blobs[ti][:-1]
    elif case == "trailing bytes":
        blobs[tl] = blobs[tl] + b"\x00"
    elif case == "truncated header":
        blobs[ti] = blobs[ti][:10]
    elif case == "empty labels file":
        blobs[tl] = b""
    elif case == "count mismatch":
        blobs[tl] = idx_labels(np.zeros(len(make_split(30, 0)[1]) - 1, np.uint8))
    elif case == "label out of range":
        t[3] = 10
        blobs[ti], blobs[tl] = idx_images(x), idx_labels(t)
    elif case == "wrong dims":
        blobs[ti] = idx_images(np.zeros((5, 27, 28), np.uint8))
    else:
        raise AssertionError(case)
    return blobs


CORRUPT = {
    "image magic": "bad magic number 2049, expected 2051",
    "label magic": "bad magic number 2051, expected 2049",
    "truncated images": "truncated: header says 30 images",
    "trailing bytes": "trailing bytes: header says 30 labels",
    "truncated header": "truncated IDX header",
    "empty labels file": "truncated IDX header",
    "count mismatch": "30 images but 29 labels",
    "label out of range": "label 10 out of range",
    "wrong dims": "images are 27x28, expected 28x28",
}


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_files_raise(tmp_path, case, gz):
    blobs = _corrupt(case, fixture_bytes()["blobs"])
    write_files(tmp_path, blobs, gz=gz)
    with pytest.raises(ValueError, match=CORRUPT[case]) as info:
        datasets.load_mnist(root=tmp_path, download=False)
    assert str(tmp_path) in str(info.value)  # the message names the file or directory


def test_truncated_gzip_raises(tmp_path):
    fx = fixture_bytes()
    write_files(tmp_path, fx["blobs"])
    p = tmp_path / (NAMES[("test", "images")] + ".gz")
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        datasets.load_mnist(root=tmp_path, download=False)


def test_oversized_file_rejected(tmp_path, monkeypatch):
    fx = fixture_bytes()
    write_files(tmp_path, fx["blobs"])
    key = ("test", "labels")
    spec = datasets._FILES[key]
    monkeypatch.setitem(datasets._FILES, key, spec._replace(nbytes=len(fx["blobs"][key]) - 1))
    with pytest.raises(ValueError, match="larger than the canonical MNIST file"):
        datasets.load_mnist(root=tmp_path, download=False)


def test_canonical_size_local_file_is_hashed(tmp_path, monkeypatch):
    # A local file of the canonical size must carry the canonical sha256.
    fx = fixture_bytes()
    write_files(tmp_path, fx["blobs"])
    key = ("test", "labels")
    good = hashlib.sha256(fx["blobs"][key]).hexdigest()
    size = len(fx["blobs"][key])
    monkeypatch.setitem(datasets._FILES, key, datasets._IdxFile(NAMES[key], good, size))
    datasets.load_mnist(root=tmp_path, download=False)  # matches: loads
    monkeypatch.setitem(datasets._FILES, key, datasets._IdxFile(NAMES[key], "0" * 64, size))
    with pytest.raises(ValueError, match="sha256 of the decompressed data"):
        datasets.load_mnist(root=tmp_path, download=False)


# --------------------------------------------------------------------------- search order


def test_not_found_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_mnist(root=tmp_path / "nowhere", download=False)
    msg = str(info.value)
    for needle in (
        str(tmp_path / "nowhere"),
        str(cache_dir(tmp_path)),
        "PYCONV_DATA",
        "root=",
        "download=True",
        "subset='mini'",
    ):
        assert needle in msg
    assert datasets.find_mnist(tmp_path / "nowhere") is None


def test_incomplete_directory_is_not_found(tmp_path):
    blobs = fixture_bytes()["blobs"]
    del blobs[("test", "labels")]
    write_files(tmp_path, blobs)
    assert datasets.find_mnist(tmp_path) is None
    with pytest.raises(FileNotFoundError):
        datasets.load_mnist(root=tmp_path, download=False)


def test_search_order(tmp_path, monkeypatch):
    def write(directory: Path, seed: int):
        fx = fixture_bytes(seed=seed)
        write_files(directory, fx["blobs"])
        return fx["test"][1]

    labels_cache = write(cache_dir(tmp_path), 1)
    assert datasets.find_mnist() == cache_dir(tmp_path)
    np.testing.assert_array_equal(datasets.load_mnist(download=False)[1][1], labels_cache)

    labels_env = write(tmp_path / "env" / "mnist", 2)  # $PYCONV_DATA/mnist also counts
    monkeypatch.setenv("PYCONV_DATA", str(tmp_path / "env"))
    assert datasets.find_mnist() == tmp_path / "env" / "mnist"
    np.testing.assert_array_equal(datasets.load_mnist(download=False)[1][1], labels_env)

    labels_root = write(tmp_path / "root", 3)
    assert datasets.find_mnist(str(tmp_path / "root")) == tmp_path / "root"
    got = datasets.load_mnist(root=str(tmp_path / "root"), download=False)[1][1]
    np.testing.assert_array_equal(got, labels_root)

    # A root without the files falls back to $PYCONV_DATA, then to the cache.
    assert datasets.find_mnist(tmp_path / "empty") == tmp_path / "env" / "mnist"


def test_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets._cache_dir() == tmp_path / "home" / ".cache" / "pyconv" / "mnist"


# --------------------------------------------------------------------------- download


@pytest.fixture
def served(monkeypatch):
    """Fixture files registered as 'canonical' (hash and size), and a fake fetch that
    serves their .gz from a per-URL table; returns (fixture, table, calls)."""
    fx = fixture_bytes()
    for key, data in fx["blobs"].items():
        spec = datasets._IdxFile(NAMES[key], hashlib.sha256(data).hexdigest(), len(data))
        monkeypatch.setitem(datasets._FILES, key, spec)
    table = {}
    for mirror in datasets.MIRRORS:
        for key, data in fx["blobs"].items():
            table[mirror + NAMES[key] + ".gz"] = gzip.compress(data)
    calls = []

    def fake_fetch(url, dest):
        calls.append(url)
        assert url.startswith("https://")
        assert Path(dest).parent == datasets._cache_dir()
        body = table[url]
        if isinstance(body, Exception):
            raise body
        Path(dest).write_bytes(body)

    monkeypatch.setattr(datasets, "_fetch", fake_fetch)
    return fx, table, calls


def test_download_renames_verified_files_into_cache(tmp_path, served, capsys):
    fx, _, calls = served
    (x_train, t_train), (_, t_test) = datasets.load_mnist(download=True)
    assert len(calls) == 4 and all(u.startswith(datasets.MIRRORS[0]) for u in calls)
    cache = cache_dir(tmp_path)
    assert sorted(p.name for p in cache.iterdir()) == sorted(n + ".gz" for n in NAMES.values())
    np.testing.assert_array_equal(t_train, fx["train"][1])
    np.testing.assert_array_equal(t_test, fx["test"][1])
    assert "downloading" in capsys.readouterr().err
    # Second call: found in the cache, nothing fetched.
    datasets.load_mnist(download=True)
    assert len(calls) == 4
    assert datasets.find_mnist() == cache


def test_download_only_missing_files(tmp_path, served):
    fx, _, calls = served
    blobs = dict(fx["blobs"])
    del blobs[("train", "images")]
    write_files(cache_dir(tmp_path), blobs, gz=False)
    datasets.load_mnist()
    assert calls == [datasets.MIRRORS[0] + NAMES[("train", "images")] + ".gz"]


def test_download_bad_hash_rejected_and_nothing_left(tmp_path, served):
    _, table, calls = served
    bad = idx_labels(np.zeros(20, np.uint8))  # structurally valid, wrong content
    for mirror in datasets.MIRRORS:
        table[mirror + NAMES[("test", "labels")] + ".gz"] = gzip.compress(bad)
    with pytest.raises(ValueError, match="could not download a verified t10k-labels") as info:
        datasets.load_mnist()
    assert "sha256" in str(info.value)
    assert len([u for u in calls if "t10k-labels" in u]) == len(datasets.MIRRORS)
    names = {p.name for p in cache_dir(tmp_path).iterdir()}
    assert NAMES[("test", "labels")] + ".gz" not in names
    assert not any(n.endswith(".part") for n in names)


def test_download_falls_back_to_next_mirror(tmp_path, served):
    fx, table, calls = served
    key = ("train", "labels")
    table[datasets.MIRRORS[0] + NAMES[key] + ".gz"] = b"<html>not found</html>"
    table[datasets.MIRRORS[0] + NAMES[("test", "images")] + ".gz"] = urllib.error.URLError("down")
    (_, t_train), _ = datasets.load_mnist()
    np.testing.assert_array_equal(t_train, fx["train"][1])
    assert datasets.MIRRORS[1] + NAMES[key] + ".gz" in calls
    assert not any(p.name.endswith(".part") for p in cache_dir(tmp_path).iterdir())


def test_download_network_failure(tmp_path, served):
    _, table, _ = served
    for url in table:
        table[url] = urllib.error.URLError("no route to host")
    with pytest.raises(FileNotFoundError, match="no route to host"):
        datasets.load_mnist()
    assert list(cache_dir(tmp_path).iterdir()) == []


def test_fetch_refuses_plain_http(tmp_path):
    with pytest.raises(ValueError, match="non-HTTPS"):
        REAL_FETCH("http://example.com/x.gz", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- subset option


@pytest.mark.parametrize("bad", ["tiny", "FULL", "", 0, 1.0, ["mini"]])
def test_subset_validated(bad):
    with pytest.raises(ValueError, match="subset must be None, 'full' or 'mini'"):
        datasets.load_mnist(subset=bad)


def test_subset_full_is_the_default(tmp_path):
    fx = fixture_bytes()
    write_files(tmp_path, fx["blobs"])
    a = datasets.load_mnist(root=tmp_path, subset="full", download=False)
    b = datasets.load_mnist(root=tmp_path, subset=None, download=False)
    np.testing.assert_array_equal(a[0][0], b[0][0])


@pytest.fixture(scope="module")
def mini_raw():
    return datasets.load_mnist(normalize=False, flatten=False, subset="mini")


def test_mini_shapes_and_stratification(mini_raw):
    (x_train, t_train), (x_test, t_test) = mini_raw
    assert x_train.shape == (10000, 1, 28, 28) and x_test.shape == (2000, 1, 28, 28)
    assert x_train.dtype == x_test.dtype == np.float32
    assert t_train.dtype == t_test.dtype == np.int64
    assert np.bincount(t_train, minlength=10).tolist() == [1000] * 10
    assert np.bincount(t_test, minlength=10).tolist() == [200] * 10
    assert x_train.max() == 255.0 and x_train.min() == 0.0
    np.testing.assert_array_equal(x_train, np.round(x_train))  # 0..255 integers as float32


def test_mini_options(mini_raw):
    (x_raw, t), _ = mini_raw
    (x, t_one_hot), (x_test, _) = datasets.load_mnist(one_hot_label=True, subset="mini")
    assert x.shape == (10000, 784) and x_test.shape == (2000, 784) and x.dtype == np.float32
    np.testing.assert_allclose(x, x_raw.reshape(10000, 784) / 255.0, rtol=1e-6)
    assert t_one_hot.shape == (10000, 10) and t_one_hot.dtype == np.float32
    np.testing.assert_array_equal(t_one_hot.argmax(axis=1), t)
    np.testing.assert_array_equal(t_one_hot.sum(axis=1), 1.0)


def test_mini_ignores_root_and_download(tmp_path):
    (x, _), _ = datasets.load_mnist(subset="mini", root=tmp_path / "nowhere", download=False)
    assert x.shape == (10000, 784)


def test_mini_package_data_files():
    data = Path(datasets.__file__).parent / "data"
    size = (data / "mnist_mini.npz").stat().st_size
    assert size < 4 * 1024 * 1024
    readme = (data / "README.md").read_text(encoding="utf-8")
    for needle in (
        "Yann LeCun",
        "Corinna Cortes",
        "Burges",
        "Attribution-Share Alike 3.0",
        "tools/make_mnist_mini.py",
        "seed 0",
    ):
        assert needle in readme
    with np.load(data / "mnist_mini.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(
            ["x_train", "t_train", "train_indices", "x_test", "t_test", "test_indices"]
        )


# --------------------------------------------------------------------------- real MNIST

needs_real = pytest.mark.skipif(
    not all((REAL_MNIST / (n + ".gz")).is_file() for n in NAMES.values()),
    reason=f"real MNIST not found in {REAL_MNIST}",
)


@pytest.fixture(scope="module")
def real():
    return datasets.load_mnist(normalize=False, flatten=False, root=REAL_MNIST, download=False)


@needs_real
def test_real_mnist_known_facts(real):
    (x_train, t_train), (x_test, t_test) = real
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(t_train).tolist() == TRAIN_COUNTS
    assert np.bincount(t_test).tolist() == TEST_COUNTS
    assert t_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert t_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@needs_real
@pytest.mark.parametrize("key", list(NAMES))
def test_real_mnist_sha256(key):
    spec = datasets._FILES[key]
    data = gzip.decompress((REAL_MNIST / (spec.name + ".gz")).read_bytes())
    assert len(data) == spec.nbytes
    assert hashlib.sha256(data).hexdigest() == spec.sha256
    datasets._load_idx(REAL_MNIST / (spec.name + ".gz"), spec, key[1], require_hash=True)


@needs_real
def test_real_mnist_tampered_copy_rejected(tmp_path):
    # Same size as the canonical file, one label changed: structurally valid, wrong hash.
    d = tmp_path / "copy"
    d.mkdir()
    for name in NAMES.values():
        (d / (name + ".gz")).write_bytes((REAL_MNIST / (name + ".gz")).read_bytes())
    name = NAMES[("test", "labels")]
    data = bytearray(gzip.decompress((d / (name + ".gz")).read_bytes()))
    data[8] = (data[8] + 1) % 10
    (d / (name + ".gz")).unlink()
    (d / name).write_bytes(bytes(data))  # raw this time
    with pytest.raises(ValueError, match="not MNIST"):
        datasets.load_mnist(root=d, download=False)


@needs_real
def test_mini_is_the_documented_subset_of_real(real):
    (x_train, t_train), (x_test, t_test) = real
    with np.load(
        Path(datasets.__file__).parent / "data" / "mnist_mini.npz", allow_pickle=False
    ) as z:
        for split, x, t in (("train", x_train, t_train), ("test", x_test, t_test)):
            idx = z[f"{split}_indices"]
            assert np.all(np.diff(idx) > 0)
            np.testing.assert_array_equal(z[f"x_{split}"], x[idx, 0].astype(np.uint8))
            np.testing.assert_array_equal(z[f"t_{split}"], t[idx])
