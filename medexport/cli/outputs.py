"""The folder a command writes its results into: never someone else's files, never two runs mixed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.files import locked_folder
from ..errors import MedexportError

LOCK = ".medexport.lock"


@contextmanager
def output_folder(path: Path, kind: str, names: set[str]) -> Iterator[Path]:
    """Hold ``path`` for one run of the command ``kind``, whose outputs are ``names``.

    Refuses a file, and a non-empty folder that is not an earlier output of the same command (one holding only
    ``names``, with a ``report.json`` of that kind), so a user's folder is never written into. A second run into
    the same folder is refused while the first holds it. After a successful run the caller removes the earlier
    run's outputs that it did not write again (:func:`remove_stale`).
    """
    if path.exists() and not path.is_dir():
        raise MedexportError(f"{path} is a file, not a folder: choose another --output")
    if path.is_dir():
        present = {p.name for p in path.iterdir()} - {LOCK}
        foreign = sorted(n for n in present if n not in names and not n.endswith((".partial", ".old", ".partial.npy")))
        if foreign:
            raise MedexportError(
                f"{path} holds files that {kind} did not write ({', '.join(foreign[:5])}): choose an "
                f"empty or new --output folder (nothing was written)"
            )
        if present & names and not _is_report_of(path / "report.json", kind):
            raise MedexportError(
                f"{path} is not the output of an earlier `medexport {kind}` (no report.json of "
                f"one): choose an empty or new --output folder (nothing was written)"
            )
    with locked_folder(  # a run refused or failed before writing anything leaves no folder behind
        path,
        LOCK,
        error=MedexportError,
        busy=lambda holder: (
            f"another `medexport {kind}` is writing {path} ({holder} holds {path / LOCK}): wait for it or "
            f"choose another --output"
        ),
    ):
        yield path


def _is_report_of(report: Path, kind: str) -> bool:
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") in (f"medexport-{kind}", None) and "trace" in data


def remove_stale(path: Path, names: set[str], written: set[str]) -> None:
    """Remove outputs of an earlier run (``names``) that this run did not write (``written``)."""
    import shutil

    for name in names - written:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
