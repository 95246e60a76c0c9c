"""medexport's own cache folder: what a machine measured or compiled once and may reuse in later processes.

``MEDEXPORT_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/medexport``, else ``~/.cache/medexport``. Everything
kept there can be deleted at any time (it is measured or compiled again); nothing there is ever required.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "MEDEXPORT_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a subfolder of it); not created here."""
    root = os.environ.get(ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "medexport") if xdg else os.path.join(os.path.expanduser("~"), ".cache", "medexport")
    return Path(root).joinpath(*parts)


__all__ = ["ENV", "cache_dir"]
