"""Which extra of ``pip install "medexport[EXTRA]"`` brings which package, and a clear error where one is missing.

The base install runs built bundles (numpy, onnxruntime); building and everything else that uses PyTorch needs
the ``build`` extra. This module imports nothing beyond the standard library and :mod:`medexport.errors`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

#: Top-level module -> the extra that installs it.
EXTRA_OF: dict[str, str] = {
    "torch": "build",
    "onnx": "build",
    "onnxscript": "build",
    "polygraphy": "build",
    "matplotlib": "build",
    "torchdiffeq": "ode",
    "diffusers": "vae",
    "triton": "triton",
}


#: How to install an extra: from a checkout (medexport is not on the package index).
INSTALL = 'pip install -e ".[{extra}]" from a medexport checkout'


def missing_extra_error(module: str, extra: str, purpose: str) -> MissingExtraError:
    """The error for ``purpose`` (e.g. "medexport build") needing ``module``, which ``extra`` installs."""
    return MissingExtraError(
        f"{purpose} needs {module}, which is not installed: {INSTALL.format(extra=extra)}", module=module, extra=extra
    )


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` and return it; where it is not installed, raise :class:`MissingExtraError` naming ``extra``.

    Only the module itself (or a package above it) being absent is reported so; a module that is installed but
    fails to import (one of its own dependencies missing, a broken install) keeps its own error.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        raise missing_extra_error(module, extra, purpose) from None


def explain(exc: ModuleNotFoundError, purpose: str) -> MissingExtraError | None:
    """The :class:`MissingExtraError` for ``exc`` where an extra of medexport brings the missing module, else None."""
    # Only a missing top-level package: "torch.foo" missing means torch is there, in another version (or broken).
    if exc.name not in EXTRA_OF:
        return None
    return missing_extra_error(exc.name, EXTRA_OF[exc.name], purpose)
