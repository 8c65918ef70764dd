"""Dataset loaders. Nothing downloads: data comes from scikit-learn's bundled digits (also as generated
3-channel 32×32 colour images) or a local path."""

from __future__ import annotations

import gzip
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caltrain.errors import DataError

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = (
    "Fashion-MNIST is not installed. On Debian: "
    "`apt-get update && apt-get install -y dataset-fashion-mnist` (installs into /usr/share/datasets/fashion-mnist)"
)


class DatasetUnavailable(DataError):
    """The dataset's files are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class ArrayDataset:
    """Images as float32 N×C×H×W in [0, 1] and int64 labels."""

    x: np.ndarray
    y: np.ndarray
    name: str
    num_classes: int

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.x.dtype != np.float32:
            raise DataError(f"{self.name}: images must be float32 N×C×H×W, got {self.x.dtype} {self.x.shape}")
        if self.y.shape != (len(self.x),) or self.y.dtype != np.int64:
            raise DataError(f"{self.name}: labels must be int64 of length {len(self.x)}, got {self.y.shape}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise DataError(f"{self.name}: labels must lie in [0, {self.num_classes})")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    def subset(self, index: np.ndarray, name: str | None = None) -> ArrayDataset:
        return ArrayDataset(
            np.ascontiguousarray(self.x[index]), self.y[index].copy(), name or self.name, self.num_classes
        )


def _split(
    x: np.ndarray, y: np.ndarray, name: str, test_fraction: float, seed: int, num_classes: int | None = None
) -> tuple[ArrayDataset, ArrayDataset]:
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    full = ArrayDataset(x, y, name, num_classes or int(y.max()) + 1)
    return full.subset(order[n_test:]), full.subset(order[:n_test], f"{name}-test")


def load_digits_dataset(seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's bundled 8×8 digits (1,797 images), split 80/20 with a fixed seed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    train, test = _split(x, bunch.target.astype(np.int64), "digits", 0.2, seed)
    return train, test


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: IDX header says {dims} but holds {body.size} values")
    return body.reshape(dims)


def load_idx_pair(images: Path, labels: Path, name: str) -> ArrayDataset:
    x = _read_idx(images).astype(np.float32)[:, None, :, :] / 255.0
    y = _read_idx(labels).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"{name}: {len(x)} images but {len(y)} labels")
    return ArrayDataset(x, y, name, 10)


def load_mnist_style(root: Path, name: str) -> tuple[ArrayDataset, ArrayDataset]:
    """MNIST / Fashion-MNIST IDX files (optionally gzipped) under `root`."""

    def find(stem: str) -> Path:
        for candidate in (root / f"{stem}.gz", root / stem):
            if candidate.exists():
                return candidate
        hint = FASHION_MNIST_HINT if name == "fashion-mnist" else f"expected IDX files under {root}"
        raise DatasetUnavailable(f"{name}: {root / stem}[.gz] not found. {hint}")

    train = load_idx_pair(find("train-images-idx3-ubyte"), find("train-labels-idx1-ubyte"), name)
    test = load_idx_pair(find("t10k-images-idx3-ubyte"), find("t10k-labels-idx1-ubyte"), f"{name}-test")
    return train, test


def read_npz(path: Path) -> ArrayDataset:
    """Every record of an `.npz` with `x` (N×H×W or N×C×H×W numbers; uint8 0-255 or float 0-1) and `y` (integer
    labels); anything else (not a zip, truncated, text or object arrays, no records) is a `DataError` naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise DataError(f"{path}: the .npz has no array {missing[0]!r} (it has {sorted(data.files)})")
            x, y = data["x"], data["y"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = "empty file" if isinstance(exc, EOFError) else f"{type(exc).__name__}: {exc}"
        raise DataError(f"{path}: not a readable .npz with arrays 'x' and 'y' ({reason})") from None
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: 'x' holds {x.dtype} values; images must be numbers")
    if y.dtype.kind not in "biu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise DataError(f"{path}: 'y' holds {y.dtype} values; labels must be integers")
    if len(x) == 0:
        raise DataError(f"{path}: holds no records")
    if y.shape != (len(x),):
        raise DataError(f"{path}: {len(x)} images but labels of shape {y.shape}")
    labels = y.astype(np.int64)
    return ArrayDataset(as_images(x), labels, Path(path).stem, max(int(labels.max()) + 1, 1))


def load_npz(path: Path, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """An `.npz` (see `read_npz`); 20% held out for testing."""
    full = read_npz(path)
    return _split(full.x, full.y, full.name, 0.2, seed, full.num_classes)


def load_records(name: str, *, root: Path | None = None) -> ArrayDataset:
    """Every record of a named dataset (train and test splits together) or of an .npz: what a participant
    packs, all of it unless a holdout is asked for."""
    if name.endswith(".npz"):
        return read_npz(Path(name))
    train, test = load_dataset(name, root=root)
    return ArrayDataset(np.concatenate([train.x, test.x]), np.concatenate([train.y, test.y]), train.name,
                        max(train.num_classes, test.num_classes))


def check_records(dataset: ArrayDataset, value_range: tuple[float, float] = (0.0, 1.0)) -> None:
    """Refuse a dataset with no records, or a record holding NaN, infinity or values outside `value_range`,
    naming the first offending record."""
    if len(dataset) == 0:
        raise DataError(f"{dataset.name}: holds no records")
    flat = dataset.x.reshape(len(dataset), -1)
    low, high = value_range
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~(np.isfinite(flat).all(1) & (flat >= low).all(1) & (flat <= high).all(1)))
    if len(bad):
        raise DataError(f"{dataset.name}: record {bad[0]} holds NaN, infinity or values outside [{low}, {high}]")


def as_images(x: np.ndarray) -> np.ndarray:
    """Normalise an array of images to float32 N×C×H×W in [0, 1]."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(f"images must be numbers, got {x.dtype} values")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"images must be N×H×W or N×C×H×W, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return np.ascontiguousarray(x, dtype=np.float32)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; unpickling runs code, so only numpy's array constructors may be named."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: a CIFAR batch holds only arrays and lists")
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"  # the batches were written by numpy 1 (numpy 2 renamed, and warns)
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
    except FileNotFoundError:
        raise DatasetUnavailable(f"cifar10: {path} not found (expected data_batch_1..5 and test_batch)") from None
    except (OSError, pickle.UnpicklingError, KeyError, TypeError, EOFError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    x = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(labels, dtype=np.int64)


def load_colour_digits(seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's digits as 3×32×32 colour images, a generated stand-in with CIFAR-10's shape (no 3-channel
    data set ships offline): each 8×8 digit is upsampled 4× (bilinear) and painted in a random colour on a random
    background of the other brightness (dark on light or light on dark), with a little pixel noise; all drawn
    from a fixed seed, so the set is the same everywhere. Labels are the digits; split 80/20 with `seed`."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    ink = F.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False).clamp_(0, 1).numpy()
    rng = np.random.default_rng(1797)
    n = len(ink)
    dark, light = rng.uniform(0.0, 0.45, (n, 3, 1, 1)), rng.uniform(0.55, 1.0, (n, 3, 1, 1))
    flip = rng.random((n, 1, 1, 1)) < 0.5
    fg, bg = np.where(flip, dark, light), np.where(flip, light, dark)
    x = bg + (fg - bg) * ink + rng.normal(0.0, 0.03, (n, 3, 32, 32))
    images = np.clip(x, 0.0, 1.0).astype(np.float32)
    return _split(images, bunch.target.astype(np.int64), "colour-digits", 0.2, seed)


def load_cifar10(root: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 "python version" batches under `root` (the folder `cifar-10-batches-py`)."""
    parts = [_read_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _read_cifar_batch(root / "test_batch")
    x_train, y_train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return (
        ArrayDataset(as_images(x_train), y_train, "cifar10", 10),
        ArrayDataset(as_images(x_test), y_test, "cifar10-test", 10),
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def load_image_folder(root: Path, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """A class-per-subfolder tree (classes in sorted order); 20% held out. All images must share one size;
    they load as grey when every image is grey, else as RGB."""
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())]
    files = [(f, c) for f, c in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DatasetUnavailable(f"imagefolder: no images under {root}/<class>/ (suffixes {IMAGE_SUFFIXES})")
    try:
        images = [Image.open(f) for f, _ in files]
        mode = "L" if all(im.mode in ("1", "L", "I;16", "I") for im in images) else "RGB"
        arrays = [np.asarray(im.convert(mode)) for im in images]
    except OSError as exc:
        raise DataError(f"imagefolder: cannot read an image under {root}: {exc}") from None
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise DataError(f"imagefolder: images under {root} differ in size {sorted(sizes)}; resize them first")
    x = np.stack(arrays)
    x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)
    y = np.array([c for _, c in files], dtype=np.int64)
    return _split(as_images(x), y, root.name, 0.2, seed, len(classes))


def load_dataset(name: str, *, root: Path | None = None, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test split of a named dataset: digits, colour-digits, fashion-mnist, mnist, cifar10 (with
    `root`), `imagefolder:PATH`, or an .npz path."""
    if name == "digits":
        return load_digits_dataset(seed)
    if name == "colour-digits":
        return load_colour_digits(seed)
    if name == "fashion-mnist":
        return load_mnist_style(root or FASHION_MNIST_ROOT, name)
    if name == "mnist":
        if root is None:
            raise DatasetUnavailable("mnist: pass the folder holding its IDX files (nothing downloads)")
        return load_mnist_style(root, name)
    if name == "cifar10":
        if root is None:
            raise DatasetUnavailable(
                "cifar10: pass the folder holding data_batch_1..5 and test_batch (nothing downloads)"
            )
        return load_cifar10(root)
    if name.startswith("imagefolder:"):
        return load_image_folder(Path(name.removeprefix("imagefolder:")), seed)
    if name.endswith(".npz"):
        return load_npz(Path(name), seed)
    raise DataError(
        f"unknown dataset {name!r}: use digits, colour-digits, fashion-mnist, mnist, cifar10, imagefolder:PATH, "
        "or a path to an .npz"
    )


def split_among(dataset: ArrayDataset, parts: int, *, seed: int) -> list[ArrayDataset]:
    """Shuffle and deal a dataset into `parts` disjoint, near-equal shares (one per participant)."""
    if parts < 1 or parts > len(dataset):
        raise DataError(f"cannot split {len(dataset)} records among {parts} participants")
    order = np.random.default_rng(seed).permutation(len(dataset))
    return [dataset.subset(np.sort(idx), f"{dataset.name}-{i}") for i, idx in enumerate(np.array_split(order, parts))]
