"""Datasets as plain arrays: synthetic 2-D problems, scikit-learn's digits, MNIST from files.

Every loader returns a :class:`Dataset`: ``x_train, y_train, x_test, y_test`` as NumPy arrays
(``x`` float32 ``[n, *feature_shape]``, ``y`` int32 class labels ``[n]``) plus metadata. The
synthetic generators (:func:`xor`, :func:`moons`, :func:`circles`, :func:`spirals`) are seeded
NumPy code, so a seed names one dataset on every machine. :func:`digits` wraps
scikit-learn's bundled 8x8 digits (offline). :func:`mnist` reads files you already have;
nothing is ever downloaded.

Every loader without a fixed split draws a seeded, stratified train/test split
(:func:`split`), then standardises each feature with the mean and standard deviation of the
*training* part only (:func:`standardize`), so no statistic of the test set leaks into
training. Labels are integers ``0 .. classes-1`` for every dataset, two-class ones included:
they pair with ``softmax_cross_entropy`` on ``classes`` logits (the ``loss`` field), which
for two classes is the same model as a sigmoid on one logit, so one code path serves all.

Example:
    >>> from fnn import data
    >>> ds = data.load("moons", seed=0)
    >>> ds.x_train.shape, ds.x_train.dtype.name, ds.y_train.dtype.name, ds.classes
    ((400, 2), 'float32', 'int32', 2)
    >>> round(float(abs(ds.x_train.mean(axis=0)).max()), 6)   # standardised on the train part
    0.0
"""

from __future__ import annotations

import inspect
import os
from typing import NamedTuple

import numpy as np

from fnn.idx import read_idx

#: Names :func:`load` accepts (MNIST as ``"mnist:PATH"``).
NAMES = ("xor", "moons", "circles", "spirals", "digits", "mnist:PATH")


class Dataset(NamedTuple):
    """A train/test pair of arrays and what a trainer needs to know about them.

    Attributes:
        x_train: ``[n_train, *feature_shape]`` float32 inputs.
        y_train: ``[n_train]`` int32 class labels in ``0 .. classes-1``.
        x_test: ``[n_test, *feature_shape]`` float32 inputs (``n_test`` may be 0).
        y_test: ``[n_test]`` int32 class labels.
        name: the dataset's name (``"moons"``, ``"mnist"``, ...).
        classes: number of classes (the width of the model's output layer).
        feature_shape: shape of one input, e.g. ``(2,)`` or ``(784,)``.
        loss: the loss the labels are meant for (``"softmax_cross_entropy"`` on logits).
        mean: ``[*feature_shape]`` training mean that was subtracted, or ``None``.
        std: ``[*feature_shape]`` training std that was divided by, or ``None``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    classes: int
    feature_shape: tuple
    loss: str = "softmax_cross_entropy"
    mean: np.ndarray | None = None
    std: np.ndarray | None = None


# ----------------------------------------------------------------- split and standardise


def split(x, y, *, test_fraction: float = 0.2, seed: int = 0, stratify: bool = True):
    """A seeded train/test split, stratified by label so each class keeps its share.

    Args:
        x: ``[n, ...]`` inputs.
        y: ``[n]`` integer labels.
        test_fraction: share of samples in the test part, in ``[0, 1)``; ``0`` gives an
            empty test part. Per class it is rounded, keeping at least one training sample.
        seed: the split's seed; the same seed gives the same split.
        stratify: split each class separately (otherwise split the whole set at once).

    Returns:
        ``(x_train, y_train, x_test, y_test)``, each part in a seeded random order.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or y.shape != x.shape[:1]:
        raise ValueError(f"split: expected x [n, ...] and y [n], got x {x.shape} and y {y.shape}")
    if len(y) == 0:
        raise ValueError("split: the dataset is empty (0 samples)")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    train, test = [], []
    for idx in groups:
        idx = rng.permutation(idx)
        n_test = min(int(round(test_fraction * len(idx))), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train, test = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
    return x[train], y[train], x[test], y[test]


def standardize(x_train, x_test):
    """Standardise each feature with the training part's mean and std, applied to both parts.

    Statistics are computed in float64 over axis 0 of ``x_train`` only. A feature that is
    constant in the training part (std 0, e.g. a blank border pixel) keeps std 1, so it maps
    to 0 rather than to inf or NaN.

    Args:
        x_train: ``[n_train, *features]``.
        x_test: ``[n_test, *features]``.

    Returns:
        ``(x_train, x_test, mean, std)``: the parts as float32, and the float64 statistics
        ``[*features]`` that were used.
    """
    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    _check_finite("standardize", "x_train", x_train)
    _check_finite("standardize", "x_test", x_test)
    if x_train.shape[1:] != x_test.shape[1:] or len(x_train) == 0:
        raise ValueError(
            f"standardize: expected x_train [n>0, *f] and x_test [m, *f] with the same "
            f"features, got {x_train.shape} and {x_test.shape}"
        )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    # Relative guard: a std at round-off level of the mean is a constant feature.
    std = np.where(std <= 1e-12 * np.maximum(1.0, np.abs(mean)), 1.0, std)
    out = [((a - mean) / std).astype(np.float32) for a in (x_train, x_test)]
    return out[0], out[1], mean, std


def _make(name, x, y, *, seed, test_fraction, standardize_, classes=None) -> Dataset:
    x_tr, y_tr, x_te, y_te = split(x, y, test_fraction=test_fraction, seed=seed)
    return _finish(name, x_tr, y_tr, x_te, y_te, standardize_, classes)


def _finish(name, x_tr, y_tr, x_te, y_te, standardize_, classes=None) -> Dataset:
    mean = std = None
    if standardize_:
        x_tr, x_te, mean, std = standardize(x_tr, x_te)
    classes = int(max(y_tr.max(), y_te.max(initial=0))) + 1 if classes is None else classes
    return Dataset(
        np.asarray(x_tr, np.float32),
        np.asarray(y_tr, np.int32),
        np.asarray(x_te, np.float32),
        np.asarray(y_te, np.int32),
        name=name,
        classes=classes,
        feature_shape=tuple(x_tr.shape[1:]),
        mean=mean,
        std=std,
    )


def _check_size(n: int, noise: float, least: int = 1) -> None:
    if int(n) != n or n < least:
        raise ValueError(f"n: expected an int >= {least}, got {n!r}")
    if not noise >= 0:
        raise ValueError(f"noise: expected a number >= 0, got {noise!r}")


def _counts(n: int, k: int) -> list[int]:
    # n samples over k classes, as even as possible (the first n % k classes get one more).
    return [n // k + (i < n % k) for i in range(k)]


# ---------------------------------------------------------------------- synthetic data


def xor(
    n: int = 400,
    noise: float = 0.15,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
) -> Dataset:
    """XOR: Gaussian blobs of std ``noise`` around the corners of the unit square.

    The label is ``x0 XOR x1`` of the corner, so opposite corners share a class and no line
    separates them. ``xor(4, 0.0, test_fraction=0)`` is the four-row truth table itself
    (with an empty test part: evaluate on the training points).

    Returns:
        A :class:`Dataset` with ``feature_shape (2,)`` and 2 classes.
    """
    _check_size(n, noise)
    rng = np.random.default_rng(seed)
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float64)
    which = np.arange(n) % 4  # cycle the corners so every corner has n/4 samples
    x = corners[which] + noise * rng.standard_normal((n, 2))
    y = (corners[which, 0] != corners[which, 1]).astype(np.int32)
    return _make("xor", x, y, seed=seed, test_fraction=test_fraction, standardize_=standardize)


def moons(
    n: int = 500,
    noise: float = 0.1,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
) -> Dataset:
    """Two interleaving half circles (class 0 on top, class 1 shifted below), plus noise.

    Returns:
        A :class:`Dataset` with ``feature_shape (2,)`` and 2 classes.
    """
    _check_size(n, noise, least=2)
    rng = np.random.default_rng(seed)
    n0, n1 = _counts(n, 2)
    t0, t1 = np.linspace(0, np.pi, n0), np.linspace(0, np.pi, n1)
    upper = np.stack([np.cos(t0), np.sin(t0)], axis=1)
    lower = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], axis=1)
    x = np.concatenate([upper, lower]) + noise * rng.standard_normal((n, 2))
    y = np.repeat(np.array([0, 1], np.int32), [n0, n1])
    return _make("moons", x, y, seed=seed, test_fraction=test_fraction, standardize_=standardize)


def circles(
    n: int = 500,
    noise: float = 0.05,
    *,
    factor: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
) -> Dataset:
    """Two concentric circles: class 0 of radius 1, class 1 of radius ``factor``, plus noise.

    Returns:
        A :class:`Dataset` with ``feature_shape (2,)`` and 2 classes.
    """
    _check_size(n, noise, least=2)
    if not 0 < factor < 1:
        raise ValueError(f"factor: expected a number in (0, 1), got {factor!r}")
    rng = np.random.default_rng(seed)
    counts = _counts(n, 2)
    t = rng.uniform(0, 2 * np.pi, n)
    radius = np.repeat([1.0, factor], counts)
    x = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    x = x + noise * rng.standard_normal((n, 2))
    y = np.repeat(np.array([0, 1], np.int32), counts)
    return _make("circles", x, y, seed=seed, test_fraction=test_fraction, standardize_=standardize)


def spirals(
    n: int = 600,
    classes: int = 3,
    noise: float = 0.05,
    *,
    turns: float = 1.0,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = True,
) -> Dataset:
    """``classes`` interleaved spiral arms from the origin, ``turns`` turns each, plus noise.

    Arm ``k`` is ``r (cos a, sin a)`` with ``r`` from 0 to 1 and
    ``a = 2 pi (k / classes + turns r)``; Gaussian noise of std ``noise`` is added to the
    coordinates (it blurs the arms most near the centre, where they meet).

    Returns:
        A :class:`Dataset` with ``feature_shape (2,)`` and ``classes`` classes.
    """
    if int(classes) != classes or classes < 2:
        raise ValueError(f"classes: expected an int >= 2, got {classes!r}")
    _check_size(n, noise, least=classes)
    rng = np.random.default_rng(seed)
    counts = _counts(n, classes)
    r = np.concatenate([np.linspace(0.0, 1.0, c) for c in counts])
    y = np.repeat(np.arange(classes, dtype=np.int32), counts)
    a = 2 * np.pi * (y / classes + turns * r)
    x = r[:, None] * np.stack([np.cos(a), np.sin(a)], axis=1)
    x = x + noise * rng.standard_normal((n, 2))
    return _make(
        "spirals",
        x,
        y,
        seed=seed,
        test_fraction=test_fraction,
        standardize_=standardize,
        classes=int(classes),
    )


# ---------------------------------------------------------------------- real images


def digits(*, seed: int = 0, test_fraction: float = 0.2, standardize: bool = True) -> Dataset:
    """scikit-learn's bundled handwritten digits: 1,797 images of 8x8 pixels, 10 classes.

    Read from the copy installed with scikit-learn (offline). Images are flattened to 64
    features (grey levels 0..16 before standardisation).

    Returns:
        A :class:`Dataset` with ``feature_shape (64,)`` and 10 classes.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "the digits dataset needs scikit-learn; install it with: pip install 'fnn[examples]'"
        ) from err
    x, y = load_digits(return_X_y=True)
    return _make(
        "digits",
        x,
        y.astype(np.int32),
        seed=seed,
        test_fraction=test_fraction,
        standardize_=standardize,
        classes=10,
    )


_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find_idx(directory: str, stem: str) -> str:
    # Accept the canonical names and the common "train-images.idx3-ubyte" spelling, each
    # optionally gzip-compressed.
    variants = [stem, stem.replace("-idx", ".idx")]
    for name in variants:
        for candidate in (name, name + ".gz"):
            p = os.path.join(directory, candidate)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(f"{directory}: no file {stem} (or {stem}.gz) in this folder")


def _check_pair(where: str, x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> None:
    if y.ndim != 1 or x.ndim < 2:
        raise ValueError(
            f"{where}: expected {xname} [n, ...] and {yname} [n], got {x.shape} and {y.shape}"
        )
    if len(x) != len(y):
        raise ValueError(
            f"{where}: count mismatch: {len(x)} images in {xname} but {len(y)} labels in {yname}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: {yname} must hold integer labels, got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise ValueError(f"{where}: {yname} has a negative label {int(y.min())}")


def _few(values, n: int = 10) -> str:
    values = [int(v) for v in values]
    return ", ".join(map(str, values[:n])) + (
        f", ... ({len(values)} in all)" if len(values) > n else ""
    )


def _check_finite(where: str, name: str, x: np.ndarray) -> None:
    """Refuse images holding NaN or inf, naming the rows (before any transform)."""
    if x.dtype.kind not in "fc" or not len(x):
        return
    rows = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(rows):
        raise ValueError(
            f"{where}: {len(rows)} of {len(x)} rows of {name} hold NaN or inf (rows "
            f"{_few(rows)}); remove or repair them"
        )


def _check_label_set(where: str, *ys: np.ndarray) -> None:
    """Labels must be ``0..K-1`` without gaps: a stray 255 would make a 256-class model."""
    labels = np.unique(np.concatenate([np.asarray(y).ravel() for y in ys]))
    k = int(labels.max()) + 1 if len(labels) else 0
    if len(labels) != k:
        missing = sorted(set(range(k)) - set(labels.tolist()))
        raise ValueError(
            f"{where}: the labels must be 0..K-1 without gaps; found {_few(labels)}, which "
            f"would make {k} classes with {_few(missing)} never seen; relabel them "
            f"0..{len(labels) - 1}"
        )


def mnist(path, *, flatten: bool = True, standardize: bool = True) -> Dataset:
    """MNIST (or any dataset in its file layout) from local files; never downloads.

    Accepted forms of ``path``:

    * a folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally ``.gz``
      (``train-images.idx3-ubyte`` spellings are accepted too);
    * an ``.npz`` file with arrays ``x_train [n, ...]``, ``y_train [n]``, ``x_test [m, ...]``,
      ``y_test [m]``.

    The files' own train/test split is kept. ``uint8`` pixels are scaled to ``[0, 1]``, then
    (with ``standardize``) each pixel is standardised with the training statistics.

    Args:
        path: the folder or ``.npz`` file.
        flatten: flatten each image to a vector (``feature_shape (784,)`` for MNIST);
            otherwise keep its shape (``(28, 28)``).
        standardize: standardise features with the training statistics.

    Raises:
        FileNotFoundError: the path, or one of the four files, does not exist.
        ValueError: a corrupt file or mismatched counts, naming the file and the problem.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"mnist: {path} does not exist; pass a folder of IDX files or an .npz file"
        )
    if os.path.isdir(path):
        files = {k: _find_idx(path, stem) for k, stem in _MNIST_FILES.items()}
        arrays = {k: read_idx(p, ndim=3 if k[0] == "x" else 1) for k, p in files.items()}
    else:
        files = dict.fromkeys(_MNIST_FILES, path)
        arrays = _read_npz(path)
    for part in ("train", "test"):
        x, y = arrays["x_" + part], arrays["y_" + part]
        xf, yf = files["x_" + part], files["y_" + part]
        where = xf if xf == yf else f"{xf} and {yf}"
        _check_pair(
            where,
            x,
            y,
            os.path.basename(xf) if xf != yf else "x_" + part,
            os.path.basename(yf) if xf != yf else "y_" + part,
        )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ValueError(
            f"{path}: train images are {arrays['x_train'].shape[1:]} but test "
            f"images are {arrays['x_test'].shape[1:]}"
        )
    if len(arrays["x_train"]) == 0:
        raise ValueError(f"{path}: the training part is empty (0 images)")
    for k in ("x_train", "x_test"):  # before scaling: standardising would spread a NaN
        _check_finite(files[k], k, arrays[k])
    _check_label_set(
        f"{files['y_train']} and {files['y_test']}", arrays["y_train"], arrays["y_test"]
    )
    xs = []
    for k in ("x_train", "x_test"):
        x = arrays[k]
        x = x / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
        xs.append(x.reshape(len(x), -1) if flatten else x)
    return _finish("mnist", xs[0], arrays["y_train"], xs[1], arrays["y_test"], standardize)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        # Open the file here: np.load leaks its own handle when the archive is damaged.
        with open(path, "rb") as f:
            if f.read(4)[:2] != b"PK":  # every zip archive starts with "PK"
                raise ValueError(f"{path}: not an .npz archive (no zip signature)")
            f.seek(0)
            z = np.load(f, allow_pickle=False)
            assert isinstance(z, np.lib.npyio.NpzFile)  # the zip signature was checked
            with z:
                missing = [k for k in _MNIST_FILES if k not in z.files]
                if missing:
                    raise ValueError(
                        f"{path}: missing arrays {missing}; found "
                        f"{sorted(z.files)}, need x_train, y_train, x_test, y_test"
                    )
                return {k: z[k] for k in _MNIST_FILES}
    except FileNotFoundError:
        raise
    except ValueError as err:
        if str(err).startswith(path):
            raise
        raise ValueError(f"{path}: cannot read it as an .npz dataset: {err}") from err
    except Exception as err:  # zipfile.BadZipFile, OSError, EOFError from a damaged archive
        raise ValueError(f"{path}: corrupt .npz archive: {err}") from err


# ---------------------------------------------------------------------------- by name

_LOADERS = {"xor": xor, "moons": moons, "circles": circles, "spirals": spirals, "digits": digits}


def load(
    spec: str, *, seed: int = 0, test_fraction: float = 0.2, standardize: bool = True, **options
) -> Dataset:
    """A dataset by name: ``xor``, ``moons``, ``circles``, ``spirals``, ``digits`` or
    ``mnist:PATH``.

    Args:
        spec: the name, or ``"mnist:PATH"`` with PATH a folder of IDX files or an ``.npz``.
        seed: seed of the synthetic data and of the train/test split.
        test_fraction: share of the test part (ignored by ``mnist``, whose files fix it).
        standardize: standardise features with the training statistics.
        **options: passed to the generator (e.g. ``n=1000, noise=0.2`` or ``classes=4``).

    Raises:
        ValueError: unknown name or option (listing the valid ones); FileNotFoundError: a
            missing MNIST path.
    """
    if not isinstance(spec, str):
        raise TypeError(f"dataset: expected a name such as 'digits', got {type(spec).__name__}")
    name, sep, arg = spec.partition(":")
    if name == "mnist":
        if not arg:
            raise ValueError(
                "dataset 'mnist' needs a path: mnist:PATH (a folder of IDX files or an .npz file)"
            )
        fn, kwargs = mnist, {"standardize": standardize}
    elif name in _LOADERS and not sep:
        fn = _LOADERS[name]
        kwargs = {"seed": seed, "test_fraction": test_fraction, "standardize": standardize}
    else:
        raise ValueError(f"unknown dataset {spec!r}; expected one of: {', '.join(NAMES)}")
    accepted = [p for p in inspect.signature(fn).parameters if p not in (*kwargs, "path")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"dataset {name!r}: unknown option(s) {unknown}; it accepts {accepted or 'none'}"
        )
    return fn(arg, **kwargs, **options) if name == "mnist" else fn(**kwargs, **options)
