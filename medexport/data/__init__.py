"""Data sets medexport reads from local files (nothing is downloaded)."""

from .fashion_mnist import CLASSES, DATA_RECORD, DEFAULT_DIR, load_fashion_mnist

__all__ = ["CLASSES", "DATA_RECORD", "DEFAULT_DIR", "load_fashion_mnist"]
