"""Datasets: shapes and dtypes, seeding, train-only standardisation, the MNIST file readers."""

import gzip
import os
import struct

import numpy as np
import pytest

from fnn import data

SYNTHETIC = {
    "xor": {"n": 200},
    "moons": {"n": 200},
    "circles": {"n": 200},
    "spirals": {"n": 300, "classes": 3},
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_shapes_dtypes_classes(name):
    ds = data.load(name, seed=1, test_fraction=0.25, **SYNTHETIC[name])
    n = SYNTHETIC[name]["n"]
    want_classes = SYNTHETIC[name].get("classes", 2)
    assert ds.name == name and ds.classes == want_classes and ds.feature_shape == (2,)
    assert ds.loss == "softmax_cross_entropy"
    assert len(ds.x_train) + len(ds.x_test) == n
    assert len(ds.x_test) == pytest.approx(0.25 * n, abs=want_classes)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape == (len(y), 2)
        assert np.all(np.isfinite(x))
    # Balanced classes, and stratification keeps the balance in both parts.
    for y in (ds.y_train, ds.y_test):
        counts = np.bincount(y, minlength=want_classes)
        assert counts.max() - counts.min() <= want_classes


def test_spirals_classes_argument():
    ds = data.spirals(n=100, classes=5, seed=0)
    assert ds.classes == 5 and set(np.unique(ds.y_train)) == set(range(5))


def test_xor_truth_table():
    ds = data.xor(4, 0.0, test_fraction=0, standardize=False)
    assert len(ds.x_test) == 0 and ds.x_test.shape == (0, 2)
    rows = sorted(zip(map(tuple, ds.x_train.tolist()), ds.y_train.tolist(), strict=True))
    assert rows == [((0.0, 0.0), 0), ((0.0, 1.0), 1), ((1.0, 0.0), 1), ((1.0, 1.0), 0)]


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_same_seed_same_data_other_seed_differs(name):
    a = data.load(name, seed=3, **SYNTHETIC[name])
    b = data.load(name, seed=3, **SYNTHETIC[name])
    c = data.load(name, seed=4, **SYNTHETIC[name])
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_train, c.x_train)


def test_noise_argument_changes_the_spread():
    quiet = data.moons(n=400, noise=0.0, seed=0, standardize=False)
    loud = data.moons(n=400, noise=0.3, seed=0, standardize=False)
    # Noise-free moons lie exactly on unit half circles around (0, 0) and (1, 0.5).
    x, y = quiet.x_train.astype(np.float64), quiet.y_train
    centres = np.where(y[:, None] == 0, [0.0, 0.0], [1.0, 0.5])
    np.testing.assert_allclose(np.linalg.norm(x - centres, axis=1), 1.0, atol=1e-6)
    xl, yl = loud.x_train.astype(np.float64), loud.y_train
    centres = np.where(yl[:, None] == 0, [0.0, 0.0], [1.0, 0.5])
    assert np.std(np.linalg.norm(xl - centres, axis=1)) > 0.1


def test_standardisation_uses_train_statistics_only():
    raw = data.circles(n=300, noise=0.1, seed=5, standardize=False)
    ds = data.circles(n=300, noise=0.1, seed=5)
    x_tr, x_te = raw.x_train.astype(np.float64), raw.x_test.astype(np.float64)
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1.0, atol=1e-5)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-6)  # raw is float32-rounded
    np.testing.assert_allclose(ds.x_test, (x_te - mean) / std, rtol=1e-5, atol=1e-6)
    # The test part's own statistics were not used: its mean is not exactly 0.
    assert np.abs(ds.x_test.mean(axis=0)).max() > 1e-4


def test_standardize_guards_constant_features():
    x_tr = np.array([[1.0, 5.0], [3.0, 5.0]])
    x_te = np.array([[2.0, 7.0]])
    a, b, mean, std = data.standardize(x_tr, x_te)
    assert std.tolist() == [1.0, 1.0] and mean.tolist() == [2.0, 5.0]
    assert a.tolist() == [[-1.0, 0.0], [1.0, 0.0]] and b.tolist() == [[0.0, 2.0]]


def test_split_is_stratified_and_seeded():
    x = np.arange(100, dtype=np.float64)[:, None]
    y = np.array([0] * 80 + [1] * 20)
    xa, ya, xb, yb = data.split(x, y, test_fraction=0.25, seed=0)
    assert np.bincount(yb).tolist() == [20, 5] and np.bincount(ya).tolist() == [60, 15]
    assert sorted(np.concatenate([xa, xb])[:, 0].tolist()) == list(range(100))
    again = data.split(x, y, test_fraction=0.25, seed=0)
    np.testing.assert_array_equal(again[2], xb)
    with pytest.raises(ValueError, match=r"test_fraction: expected a number in \[0, 1\), got 1"):
        data.split(x, y, test_fraction=1.0)
    with pytest.raises(ValueError, match="empty"):
        data.split(x[:0], y[:0])


def test_digits():
    ds = data.digits(seed=0)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.feature_shape == (64,) and ds.classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int32
    assert set(np.unique(ds.y_train)) == set(range(10))
    other = data.load("digits", seed=1)
    assert not np.array_equal(ds.y_test, other.y_test)


def test_load_errors():
    with pytest.raises(
        ValueError,
        match=r"unknown dataset 'mnsit'.*xor, moons, circles, spirals, digits, mnist:PATH",
    ):
        data.load("mnsit")
    with pytest.raises(ValueError, match=r"'mnist' needs a path: mnist:PATH"):
        data.load("mnist")
    with pytest.raises(ValueError, match=r"dataset 'digits': unknown option\(s\) \['noise'\]"):
        data.load("digits", noise=0.1)
    with pytest.raises(ValueError, match=r"n: expected an int >= 1, got 0"):
        data.load("xor", n=0)
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        data.load("mnist:/nowhere/at/all")


# ------------------------------------------------------------------------ MNIST files


def idx_bytes(array, code=0x08):
    """An IDX file's bytes, written here from the format description (not by fnn)."""
    array = np.asarray(array)
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(">u1" if code == 0x08 else ">i4").tobytes()


def fake_mnist(rng, n, hw=(6, 5)):
    images = rng.integers(0, 256, (n, *hw), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)  # 0..min(n,10)-1, no gaps
    return images, labels


def write_mnist_dir(directory, n_train=5, n_test=3, gz=False, overrides=None):
    rng = np.random.default_rng(0)
    parts = {}
    parts["train-images-idx3-ubyte"], parts["train-labels-idx1-ubyte"] = fake_mnist(rng, n_train)
    parts["t10k-images-idx3-ubyte"], parts["t10k-labels-idx1-ubyte"] = fake_mnist(rng, n_test)
    for name, arr in parts.items():
        raw = (overrides or {}).get(name, idx_bytes(arr))
        if gz:
            with gzip.open(os.path.join(directory, name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(raw)
    return parts


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_folder(tmp_path, gz):
    parts = write_mnist_dir(tmp_path, gz=gz)
    ds = data.load(f"mnist:{tmp_path}", standardize=False)
    assert ds.name == "mnist" and ds.feature_shape == (30,)
    assert ds.x_train.shape == (5, 30) and ds.x_test.shape == (3, 30)
    np.testing.assert_array_equal(ds.y_train, parts["train-labels-idx1-ubyte"])
    np.testing.assert_allclose(
        ds.x_test, parts["t10k-images-idx3-ubyte"].reshape(3, 30) / 255.0, rtol=1e-7
    )
    kept = data.mnist(tmp_path, flatten=False)
    assert kept.feature_shape == (6, 5)
    np.testing.assert_allclose(kept.x_train.mean(axis=0), 0.0, atol=1e-6)


def test_mnist_npz(tmp_path):
    rng = np.random.default_rng(1)
    xa, ya = fake_mnist(rng, 7)
    xb, yb = fake_mnist(rng, 4)
    path = tmp_path / "mini.npz"
    np.savez(path, x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    ds = data.load(f"mnist:{path}", standardize=False)
    np.testing.assert_array_equal(ds.y_test, yb)
    np.testing.assert_allclose(ds.x_train, xa.reshape(7, -1) / 255.0, rtol=1e-7)
    assert ds.classes == int(max(ya.max(), yb.max())) + 1

    np.savez(tmp_path / "bad.npz", x_train=xa, y_train=ya, x_test=xb)
    with pytest.raises(ValueError, match=r"bad\.npz.*missing arrays \['y_test'\]"):
        data.mnist(tmp_path / "bad.npz")
    np.savez(tmp_path / "count.npz", x_train=xa, y_train=ya[:6], x_test=xb, y_test=yb)
    with pytest.raises(ValueError, match=r"count\.npz: count mismatch: 7 images.*6 labels"):
        data.mnist(tmp_path / "count.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"junk\.npz: corrupt \.npz archive"):
        data.mnist(tmp_path / "junk.npz")
    (tmp_path / "text.npz").write_bytes(b"hello")
    with pytest.raises(ValueError, match=r"text\.npz: not an \.npz archive"):
        data.mnist(tmp_path / "text.npz")


def _valid(name):
    images, labels = fake_mnist(np.random.default_rng(2), 5)
    return idx_bytes(images if "images" in name else labels)


@pytest.mark.parametrize(
    ("file", "raw", "pattern"),
    [
        (
            "train-images-idx3-ubyte",
            lambda: _valid("labels"),
            r"train-images-idx3-ubyte: wrong magic number 0x00000801, expected 0x00000803",
        ),
        (
            "train-labels-idx1-ubyte",
            lambda: b"\x12\x34\x08\x01" + _valid("labels")[4:],
            r"train-labels-idx1-ubyte: wrong magic number 0x12340801",
        ),
        (
            "train-images-idx3-ubyte",
            lambda: b"\x00\x00",
            r"train-images-idx3-ubyte: only 2 bytes, too short for an IDX header",
        ),
        (
            "train-images-idx3-ubyte",
            lambda: _valid("images")[:10],
            r"train-images-idx3-ubyte: corrupt header: 3 dimensions need 16 header bytes",
        ),
        (
            "t10k-images-idx3-ubyte",
            lambda: _valid("images")[:-7],
            r"t10k-images-idx3-ubyte: truncated: header promises 5x6x5 = 150 data bytes, the file holds 143",
        ),
        (
            "t10k-labels-idx1-ubyte",
            lambda: _valid("labels") + b"\x00\x00",
            r"t10k-labels-idx1-ubyte: size mismatch: .*holds 7 \(2 extra\)",
        ),
        (
            "train-labels-idx1-ubyte",
            lambda: idx_bytes(np.arange(4) % 10),
            r"count mismatch: 5 images in train-images-idx3-ubyte but 4 labels in train-labels-idx1-ubyte",
        ),
    ],
)
def test_mnist_corrupt_files(tmp_path, file, raw, pattern):
    write_mnist_dir(tmp_path, n_test=5, overrides={file: raw()})
    with pytest.raises(ValueError, match=pattern) as info:
        data.load(f"mnist:{tmp_path}")
    assert str(tmp_path) in str(info.value)


def test_mnist_corrupt_gzip_and_missing_file(tmp_path):
    write_mnist_dir(tmp_path, gz=True)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: cannot decompress"):
        data.mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    target.write_bytes(b"")
    os.remove(target)
    with pytest.raises(FileNotFoundError, match=r"no file train-images-idx3-ubyte"):
        data.mnist(tmp_path)


def test_read_idx_other_types(tmp_path):
    p = tmp_path / "ints-idx2-int"
    arr = np.arange(6, dtype=np.int32).reshape(2, 3) - 2
    p.write_bytes(idx_bytes(arr, code=0x0C))
    got = data.read_idx(p)
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


# ------------------------------------------------------------ hostile files (issue 19)


def test_gzip_bomb_is_refused_after_reading_what_the_header_promises(tmp_path, monkeypatch):
    write_mnist_dir(tmp_path, gz=True)
    bomb = tmp_path / "t10k-labels-idx1-ubyte.gz"
    # A 3-label header followed by 64 MiB of zeros: a few KiB compressed.
    with gzip.open(bomb, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + bytes(3))
        for _ in range(64):
            f.write(bytes(1 << 20))
    before = bomb.read_bytes()
    sizes = []
    real_read = gzip.GzipFile.read

    def counting_read(self, size=-1):
        sizes.append(size)
        return real_read(self, size)

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    with pytest.raises(
        ValueError,
        match=r"t10k-labels-idx1-ubyte\.gz: size mismatch: header "
        r"promises 3 = 3 data bytes, the file holds more",
    ):
        data.mnist(tmp_path)
    assert -1 not in sizes and max(sizes) <= 3 + 1 + 5 * 6 * 5  # never the whole stream
    assert bomb.read_bytes() == before


def test_labels_with_a_gap_are_refused_and_named(tmp_path):
    images, labels = fake_mnist(np.random.default_rng(0), 11)
    labels[4] = 255
    write_mnist_dir(tmp_path, overrides={"train-labels-idx1-ubyte": idx_bytes(labels)}, n_train=11)
    with pytest.raises(
        ValueError,
        match=r"train-labels-idx1-ubyte and .*t10k-labels-idx1-ubyte: "
        r"the labels must be 0..K-1 without gaps; found 0, 1, .*255, which would "
        r"make 256 classes",
    ):
        data.mnist(tmp_path)


def test_nan_pixels_are_named_by_row_before_standardising(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(40, 3)),
        "y_train": np.arange(40) % 2,
        "x_test": rng.normal(size=(8, 3)),
        "y_test": np.arange(8) % 2,
    }
    arrays["x_train"][17, 1] = np.nan
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(
        ValueError,
        match=r"d\.npz: 1 of 40 rows of x_train hold NaN or inf "
        r"\(rows 17\)",
    ):
        data.mnist(tmp_path / "d.npz")
    with pytest.raises(ValueError, match=r"standardize: 1 of 40 rows of x_train hold NaN or inf"):
        data.standardize(arrays["x_train"], arrays["x_test"])
