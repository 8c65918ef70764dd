"""CIFAR-10 python batches and ImageFolder trees load from a local folder; bad input fails with DataError."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from caltrain.data import DatasetUnavailable, load_dataset
from caltrain.errors import DataError


class Python2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Writes what CIFAR-10's own batches hold: Python 2 pickles (protocol 2), whose strings are byte strings
    (BINSTRING, read back as bytes with encoding="bytes") and whose arrays name numpy.core.multiarray."""

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "").replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())  # type: ignore[attr-defined]
        self.memoize(obj)


def _write_cifar(root: Path, n: int = 4) -> np.ndarray:
    """Small batches in CIFAR-10's "python version" layout: data_batch_1..5 and test_batch, each a dict of
    batch_label, labels (a list), data (N×3072 uint8, rows of 1024 red, green, blue values) and filenames."""
    rng = np.random.default_rng(0)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        first = data if first is None else first
        batch = {
            "batch_label": f"{name} of 5",
            "labels": list(range(n)),
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with open(root / name, "wb") as f:
            Python2Pickler(f, protocol=2).dump(batch)
    assert first is not None
    return first


def test_cifar10_batches_load_as_nchw_in_unit_range(tmp_path: Path) -> None:
    raw = _write_cifar(tmp_path)
    train, test = load_dataset("cifar10", root=tmp_path)
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    assert train.y.tolist()[:4] == [0, 1, 2, 3] and train.num_classes == 10
    # channel-major rows: the first 1024 values are the red plane
    np.testing.assert_allclose(train.x[0, 0].ravel(), raw[0, :1024] / 255.0, rtol=1e-6)


def test_cifar10_batches_are_python2_pickles(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    raw = (tmp_path / "test_batch").read_bytes()
    assert raw.startswith(b"\x80\x02") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"X\x04\x00\x00\x00data" not in raw and b"U\x04data" in raw  # a byte string key, not unicode


def test_colour_digits_are_3x32x32_and_learnable_shapes() -> None:
    train, test = load_dataset("colour-digits")
    assert train.x.shape[1:] == (3, 32, 32) and len(train) + len(test) == 1797 and train.num_classes == 10
    assert train.x.min() >= 0.0 and train.x.max() <= 1.0
    again, _ = load_dataset("colour-digits")
    np.testing.assert_array_equal(train.x, again.x)  # generated from a fixed seed
    colours = train.x.mean(axis=(2, 3))
    assert colours.std(axis=0).min() > 0.1  # colours vary between images, per channel
    digits, _ = load_dataset("digits")
    assert sorted(np.bincount(np.concatenate([train.y, test.y]))) == sorted(
        np.bincount(np.concatenate([digits.y, load_dataset("digits")[1].y]))
    )


def test_cifar10_refuses_pickles_that_name_code(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Path("x"), b"labels": [0]}, f)  # would construct an arbitrary class
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_missing_batch_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match="data_batch_1"):
        load_dataset("cifar10", root=tmp_path)


def _write_folder(root: Path, mode: str, size: tuple[int, int] = (6, 5)) -> None:
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(5):
            value = 40 * c + i
            Image.new(mode, size, value if mode == "L" else (value, 0, 255)).save(root / name / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_image_folder_grey_and_rgb(tmp_path: Path) -> None:
    _write_folder(tmp_path / "grey", "L")
    train, test = load_dataset(f"imagefolder:{tmp_path / 'grey'}", seed=0)
    assert len(train) == 8 and len(test) == 2 and train.x.shape[1:] == (1, 5, 6)
    assert train.num_classes == 2
    for x, y in zip(np.concatenate([train.x, test.x]), np.concatenate([train.y, test.y]), strict=True):
        assert (round(float(x.max()) * 255) >= 40) == (y == 1)  # labels follow the sorted class folders
    _write_folder(tmp_path / "rgb", "RGB")
    train, _ = load_dataset(f"imagefolder:{tmp_path / 'rgb'}")
    assert train.x.shape[1:] == (3, 5, 6)
    np.testing.assert_allclose(train.x[:, 2], 1.0)


def test_image_folder_rejects_mixed_sizes_and_empty_trees(tmp_path: Path) -> None:
    _write_folder(tmp_path / "a", "L")
    Image.new("L", (7, 7)).save(tmp_path / "a" / "cat" / "big.png")
    with pytest.raises(DataError, match="differ in size"):
        load_dataset(f"imagefolder:{tmp_path / 'a'}")
    with pytest.raises(DatasetUnavailable, match="no images"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
