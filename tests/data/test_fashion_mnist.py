"""The Fashion-MNIST loader: real files where installed, tiny fake ones otherwise, and every kind of bad file."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from medexport.data import CLASSES, DEFAULT_DIR, load_fashion_mnist
from medexport.errors import DataError

from .fake_idx import write_fake

REAL = Path(DEFAULT_DIR)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake(tmp_path_factory.mktemp("fmnist"))


@pytest.mark.skipif(
    not REAL.is_dir(), reason="dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)"
)
def test_real_files():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8 and y.shape == (10_000,)
    assert np.bincount(y).tolist() == [1000] * 10  # the test split is balanced
    assert len(CLASSES) == 10


@pytest.mark.parametrize("gz", [True, False])
def test_fake_files_gzipped_or_not(tmp_path, gz):
    folder = write_fake(tmp_path / "d", gz=gz)
    x, y = load_fashion_mnist("train", folder)
    assert x.shape == (60_000, 28, 28) and y.dtype == np.int64 and y.max() <= 9
    x[0, 0, 0] = 7  # a writable copy, not a view of the file bytes


def test_missing_folder_names_the_apt_command(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "nowhere")


def test_missing_file_names_it(tmp_path, fake):
    import shutil

    folder = shutil.copytree(fake, tmp_path / "partial")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    load_fashion_mnist("train", folder)  # the other split still loads
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is missing.*apt-get install"):
        load_fashion_mnist("test", folder)


def test_truncated_and_wrong_files(tmp_path, fake):
    import shutil

    folder = shutil.copytree(fake, tmp_path / "bad")
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])  # a truncated download
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_fashion_mnist("test", folder)
    raw = gzip.decompress((fake / "t10k-images-idx3-ubyte.gz").read_bytes())
    path.write_bytes(gzip.compress(raw[: -28 * 28]))  # one image short of what the header says
    with pytest.raises(DataError, match="header announces"):
        load_fashion_mnist("test", folder)
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))  # a label file's magic
    with pytest.raises(DataError, match="not an idx file"):
        load_fashion_mnist("test", folder)


def test_partial_split_and_unknown_split(tmp_path):
    folder = write_fake(tmp_path / "small", counts=(100, 10))
    with pytest.raises(DataError, match="holds 100 images, not 60000"):
        load_fashion_mnist("train", folder)
    with pytest.raises(DataError, match="unknown Fashion-MNIST split"):
        load_fashion_mnist("validation", folder)


def test_a_header_that_promises_more_than_the_file_holds(tmp_path, fake):
    import shutil

    folder = shutil.copytree(fake, tmp_path / "huge")
    header = (0x00000803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4))
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header))  # 2^64 pixels: the product wraps
    with pytest.raises(
        DataError,
        match=r"holds 0 bytes of data where its header announces 2147483648 x 2147483648 "
        r"x 4 = 18446744073709551616: the file is truncated or corrupt",
    ):
        load_fashion_mnist("train", folder)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(28 * 28)))
    with pytest.raises(DataError, match="header announces"):
        load_fashion_mnist("train", folder)


def test_genuine_files_only_where_asked(fake):
    load_fashion_mnist("test", fake)  # any files of the format: your own data
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz' is not the published Fashion-MNIST file"):
        load_fashion_mnist("test", fake, genuine=True)


@pytest.mark.skipif(
    not REAL.is_dir(), reason="dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)"
)
def test_the_installed_files_are_the_published_ones():
    x, y = load_fashion_mnist("test", genuine=True)
    assert len(x) == len(y) == 10_000
