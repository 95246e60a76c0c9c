"""Writing files so that a reader never sees half of one: write a temporary sibling, then rename over the target.

An interrupted write leaves the previous file (or none) and at most a ``*.partial`` file, which the next write
replaces.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path`` (with ``mode`` if given),
    on failure removed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, *, durable: bool = False) -> Path:
    """Write ``text`` atomically; ``durable`` also flushes it to disk before the rename (a manifest that must
    survive a power cut names only files that exist)."""
    with replacing(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | os.PathLike, data: object, *, durable: bool = False) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n", durable=durable)


def replace_folder(complete: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the finished folder ``complete`` at ``target``; a folder already there is replaced as a whole (moved
    aside, then removed), never mixed with the new one."""
    import shutil

    complete, target = Path(complete), Path(target)
    old = None
    if target.exists():
        old = target.with_name(target.name + ".old.partial")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(complete, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
