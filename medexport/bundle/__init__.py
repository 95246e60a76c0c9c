"""Engine bundles: build (export + engines + manifest), open, verify."""

from .build import BuildReport, build_bundle, open_bundle, resolve_backend
from .manifest import MANIFEST, Bundle
from .runners import engine_runner, runnable_here
from .settings import BuildSettings, ModelSource
from .verify import TOLERANCE, VerifyResult, verify_bundle

__all__ = ["MANIFEST", "TOLERANCE", "Bundle", "BuildReport", "BuildSettings", "ModelSource", "VerifyResult",
           "build_bundle", "engine_runner", "open_bundle", "resolve_backend", "runnable_here", "verify_bundle"]
