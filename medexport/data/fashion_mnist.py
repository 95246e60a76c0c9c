"""Fashion-MNIST from its four idx files, as Debian's ``dataset-fashion-mnist`` package installs them.

Fashion-MNIST: 70,000 28x28 grayscale images of 10 clothing classes, MIT licence, (c) Zalando SE
(https://github.com/zalandoresearch/fashion-mnist). The files are read from a local folder, gzipped or not;
nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
from pathlib import Path

import numpy as np

from ..errors import DataError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "apt-get install -y dataset-fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801
#: sha256 of each idx file's content (uncompressed), as published by Zalando and packaged by Debian: the same
#: whether the file is gzipped or not.
KNOWN_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
#: sha256 of the gzipped files of Debian's ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist).
DEBIAN_GZ_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
#: What a model trained on this data generates, as a bundle's manifest records it (``data``).
DATA_RECORD = {
    "space": "pixel",
    "dataset": "fashion-mnist",
    "range": [-1.0, 1.0],
    "class_names": list(CLASSES),
    "licence": "MIT, (c) Zalando SE",
}


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"Fashion-MNIST file {stem}.gz is missing from {str(folder)!r}: install the data with "
        f"`{INSTALL_HINT}` or pass a folder holding the four idx files (gzipped or not)"
    )


def _read_idx(path: Path, magic: int, dims: int, genuine: bool = False) -> np.ndarray:
    try:
        packed = path.read_bytes()
        raw = gzip.decompress(packed) if path.suffix == ".gz" else packed
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(
            f"cannot read {str(path)!r} ({e}): the file is truncated or corrupt; reinstall it "
            f"(`apt-get install --reinstall dataset-fashion-mnist`)"
        ) from None
    header = 4 + 4 * dims
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{str(path)!r} is not an idx file of the expected kind (magic {magic:#010x})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if len(raw) - header != math.prod(shape):  # Python integers: a header's product never wraps
        raise DataError(
            f"{str(path)!r} holds {len(raw) - header} bytes of data where its header announces "
            f"{' x '.join(map(str, shape))} = {math.prod(shape)}: the file is truncated or corrupt; "
            f"reinstall it (`apt-get install --reinstall dataset-fashion-mnist`)"
        )
    if genuine:
        stem = path.name.removesuffix(".gz")
        known = KNOWN_SHA256.get(stem)
        if DEBIAN_GZ_SHA256.get(path.name) != hashlib.sha256(packed).hexdigest() and (
            known is None or hashlib.sha256(raw).hexdigest() != known
        ):
            raise DataError(
                f"{str(path)!r} is not the published Fashion-MNIST file {stem} (its sha256 differs from "
                f"the known one): a modified copy or another data set. Use the original files "
                f"(`{INSTALL_HINT}`, {DEFAULT_DIR})"
            )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_fashion_mnist(
    split: str = "train", data_dir: str | os.PathLike | None = None, *, genuine: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the "train" (60,000) or "test" (10,000) split.

    ``data_dir`` defaults to ``$MEDEXPORT_FASHION_MNIST`` or Debian's folder (``/usr/share/datasets/fashion-mnist``).
    ``genuine``: the files must be the published ones (:data:`KNOWN_SHA256`), as a reference score needs; without
    it, any files of the format load (your own data, say).
    """
    if split not in SPLITS:
        raise DataError(f"unknown Fashion-MNIST split {split!r}: choose 'train' or 'test'")
    folder = Path(data_dir or os.environ.get("MEDEXPORT_FASHION_MNIST") or DEFAULT_DIR)
    if not folder.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {str(folder)!r} does not exist: install the data with "
            f"`{INSTALL_HINT}` or pass a folder holding the four idx files"
        )
    image_stem, label_stem, count = SPLITS[split]
    images = _read_idx(_find(folder, image_stem), IMAGE_MAGIC, 3, genuine)
    labels = _read_idx(_find(folder, label_stem), LABEL_MAGIC, 1, genuine).astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST {split} files in {str(folder)!r} do not fit together: images "
            f"{images.shape}, labels {labels.shape}"
        )
    if len(images) != count:
        raise DataError(
            f"Fashion-MNIST {split} split in {str(folder)!r} holds {len(images)} images, not {count}: "
            f"a partial copy? Reinstall with `{INSTALL_HINT}`"
        )
    if labels.size and labels.max() >= len(CLASSES):
        raise DataError(f"Fashion-MNIST {split} labels in {str(folder)!r} go up to {labels.max()}: not Fashion-MNIST")
    return images, labels
