"""Tiny Fashion-MNIST-shaped idx files for tests (the real files may not be installed)."""

import gzip
from pathlib import Path

import numpy as np

NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x00000800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake(folder: Path, counts=(60_000, 10_000), gz: bool = True, seed: int = 0, images_per_split=None) -> Path:
    """Four idx files with the real split sizes (or ``counts``): class-dependent blobs so a model can learn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for (split, (img_name, lbl_name)), n in zip(NAMES.items(), counts):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, y in enumerate(labels):  # a bright square whose place encodes the class
            r, c = divmod(int(y), 5)
            images[i, 4 + 10 * r : 12 + 10 * r, 2 + 5 * c : 7 + 5 * c] = 255
        for name, arr in ((img_name, images), (lbl_name, labels)):
            data = idx_bytes(arr)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data, compresslevel=1))
            else:
                (folder / name).write_bytes(data)
    return folder
