"""Engine bundles: build (export + engines + manifest), open, verify.

Every name loads on first use: the build settings import no torch (``build --help`` stays fast), opening a
bundle and making runners (what sampling needs) import neither the exporter nor Polygraphy, and
``build_bundle`` and ``verify_bundle`` load them when first used.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "MANIFEST": "manifest",
    "Bundle": "manifest",
    "open_bundle": "manifest",
    "engine_runner": "runners",
    "runnable_here": "runners",
    "sampling_backend": "runners",
    "BuildSettings": "settings",
    "ModelSource": "settings",
    "BuildReport": "build",
    "build_bundle": "build",
    "resolve_backend": "build",
    "VerifyResult": "verify",
    "verify_bundle": "verify",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MANIFEST",
    "Bundle",
    "BuildReport",
    "BuildSettings",
    "ModelSource",
    "VerifyResult",
    "build_bundle",
    "engine_runner",
    "open_bundle",
    "resolve_backend",
    "runnable_here",
    "sampling_backend",
    "verify_bundle",
]
