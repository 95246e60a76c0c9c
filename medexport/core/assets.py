"""Files shipped inside the package (demo weights, the judge), each checked against a recorded sha256.

A folder of shipped files holds ``SHA256SUMS`` in ``sha256sum``'s format; :func:`verified_file` refuses a
file that is missing, unrecorded or changed, naming it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MedexportError
from .files import file_sha256, write_text

SUMS = "SHA256SUMS"


class AssetError(MedexportError):
    """A file shipped with medexport is missing or does not match its recorded sha256."""


def read_sums(folder: Path) -> dict[str, str]:
    """{file name: sha256} from ``folder/SHA256SUMS`` (empty when there is none)."""
    sums = Path(folder) / SUMS
    if not sums.is_file():
        return {}
    try:
        text = sums.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise AssetError(f"{sums} cannot be read ({e}): reinstall medexport") from None
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise AssetError(
                f"{sums}, line {number}: {line.strip()[:80]!r} is not '<sha256>  <file name>' (64 hex "
                f"digits, then the name): the file is damaged; reinstall medexport"
            )
        out[parts[1].lstrip("*")] = digest
    return out


def record_sums(folder: Path, names: list[str]) -> None:
    """Add or update the sha256 of ``names`` in ``folder/SHA256SUMS`` (written to a temporary name, then renamed)."""
    folder = Path(folder)
    sums = read_sums(folder)
    sums.update({name: file_sha256(folder / name) for name in names})
    write_text(folder / SUMS, "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


def verified_file(folder: Path, name: str, what: str) -> Path:
    """``folder/name`` once its sha256 matches the folder's record; AssetError naming the file otherwise."""
    path = Path(folder) / name
    if not path.is_file():
        raise AssetError(f"the shipped {what} {str(path)!r} is missing: reinstall medexport")
    expected = read_sums(Path(folder)).get(name)
    if expected is None:
        raise AssetError(
            f"no sha256 is recorded for the shipped {what} {str(path)!r} in {Path(folder) / SUMS}: reinstall medexport"
        )
    actual = file_sha256(path)
    if actual != expected:
        raise AssetError(
            f"the shipped {what} {str(path)!r} is damaged or was changed: its sha256 is "
            f"{actual[:16]}..., expected {expected[:16]}... Reinstall medexport."
        )
    return path
