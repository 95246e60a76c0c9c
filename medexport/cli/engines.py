"""Which engines run where: the ``--backend``, ``--device`` and ``--threads`` group, parsed into one
:class:`EngineChoice` that sets the CPU threads (the one place that does) and opens a bundle's pipeline.

Light to import (no torch). On the base install (no torch) a bundle's ONNX Runtime engines run through
:mod:`medexport.lite`; a choice that needs torch (``--backend torch``, a TensorRT bundle, ``--device cuda``
through torch) is refused in one line naming the extra.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError, MissingExtraError
from ..extras import INSTALL, missing_extra_error

LITE_BACKEND = "onnxruntime"


def torch_installed() -> bool:
    """Whether torch is importable here (the ``build`` extra), without importing it."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # an import hook refusing it, or a broken install: not usable
        return False


def needs_extra(what: str, extra: str = "build", module: str = "torch") -> MissingExtraError:
    """One line: ``what`` needs ``module``, which ``extra`` brings."""
    return missing_extra_error(module, extra, what)


@dataclass(frozen=True)
class EngineChoice:
    """``--backend`` (auto, torch, inductor or an engine backend), ``--device`` (None: the backend's) and
    ``--threads`` (None: all cores) of one command."""

    backend: str = "auto"
    device: str | None = None
    threads: int | None = None

    def set_threads(self) -> None:
        """Set the CPU threads of PyTorch (where it is loaded or installed) once for the whole run; ONNX Runtime
        sessions take ``threads`` when they are made."""
        if self.threads is None or not torch_installed():
            return
        import torch

        torch.set_num_threads(self.threads)

    def lite(self, bundle: Path) -> bool:
        """Whether ``bundle`` runs through the torch-free runtime: torch is absent here. Raises where the choice
        needs torch."""
        if torch_installed():
            return False
        if self.backend not in ("auto", LITE_BACKEND):
            raise needs_extra(f"--backend {self.backend}")
        if self.device not in (None, "cpu"):
            raise needs_extra(f"--device {self.device} (the torch-free runtime runs ONNX Runtime on the CPU)")
        from ..core.manifest import read_complete

        manifest = read_complete(bundle)
        lacking = [n for n, e in manifest.counts.items() if LITE_BACKEND not in e.engines]
        if lacking:
            have = sorted({b for e in manifest.counts.values() for b in e.engines}) or ["none"]
            raise BundleError(
                f"{bundle} holds {', '.join(have)} engines (none of {LITE_BACKEND} for "
                f"{', '.join(map(str, lacking))} mediators): running them needs torch, which is not "
                f"installed: {INSTALL.format(extra='build')}"
            )
        return True

    def open(self, bundle: Path):
        """The bundle's pipeline: :class:`medexport.Pipeline` where torch is installed, else
        :class:`medexport.lite.LitePipeline` (ONNX Runtime bundles)."""
        self.set_threads()
        if self.lite(Path(bundle)):
            from ..lite import LitePipeline

            return LitePipeline.from_bundle(bundle, threads=self.threads)
        from ..runtime.pipeline import Pipeline, check_device

        check_device(self.device)
        return Pipeline.from_bundle(bundle, backend=self.backend, device=self.device, threads=self.threads)
