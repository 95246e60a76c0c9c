"""torch.compile (TorchInductor) as a backend: it builds nothing into the bundle and compiles the PyTorch model
the engines were built from when a runner is made, fusing the block's small operations (pooling, biases,
depth-wise conv, modulation) around the mediator-attention op, whose own kernel (Triton on CUDA) it calls. On
CUDA it replays CUDA graphs (``mode="reduce-overhead"``). The vanilla twin is compiled the same way, so
``medexport bench --backend inductor`` compares like with like.

It is never chosen by "auto" (compiling takes a while, once per count and batch size): ``sample --backend
inductor``, ``bench --backend inductor``. What it compiles is kept across process starts in a persistent cache
(``inductor/`` in medexport's cache folder, ``~/.cache/medexport`` by default; ``TORCHINDUCTOR_CACHE_DIR`` where
set: :mod:`.cache`).
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path

from ...core.precision import precision as precision_of
from ...errors import BackendUnavailableError
from ..pytorch import PyTorchBackend
from ..registry import RunnerInputs


class InductorBackend(PyTorchBackend):
    """The PyTorch backend's model source and build rules (nothing built, the count's model run), compiled."""

    name = "inductor"
    is_reference = False

    def status(self) -> tuple[bool, str]:
        """Usable where torch.compile can compile for at least one device here: the CPU (a working C++ compiler)
        or CUDA (a GPU and Triton)."""
        ok, why = super().status()
        if not ok:
            return ok, why
        import torch

        if not hasattr(torch, "compile"):
            return False, f"torch {torch.__version__} has no torch.compile"
        forms = {device: device_status(device) for device in ("cpu", "cuda")}
        usable = [d for d, (works, _) in forms.items() if works]
        if not usable:
            return False, (
                "; ".join(reason for _, reason in forms.values())
                + ". --backend torch runs the same model without compiling"
            )
        return True, f"torch.compile (inductor) on {' and '.join(usable)}, {why}"

    def runner(self, inputs: RunnerInputs):
        import torch

        from .runner import CompiledRunner

        if inputs.model is None:
            raise BackendUnavailableError("the inductor backend compiles the model the engines were built from")
        device = inputs.device or ("cuda" if torch.cuda.is_available() else "cpu")
        ok, why = device_status(torch.device(device).type)
        if not ok:  # found now, not as a compiler traceback at the first forward
            raise BackendUnavailableError(
                f"--backend inductor cannot compile for {device} here: {why}. "
                f"--backend torch runs the same model without compiling"
            )
        # the bundle's float precision; quantised graphs (ONNX Runtime int8, Q/DQ) have no PyTorch form: fp32
        precision = precision_of(inputs.precision).source
        return CompiledRunner(inputs.model(), device=device, precision=precision)


def device_status(device: str) -> tuple[bool, str]:
    """(whether torch.compile can compile for ``device`` ("cpu" or "cuda") here, why not / with what)."""
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible (the CUDA form needs one)"
        from torch.utils._triton import has_triton

        if not has_triton():
            return False, "Triton is not installed or does not support this GPU (pip install triton)"
        return True, f"CUDA with Triton on {torch.cuda.get_device_name()}"
    if device != "cpu":
        return False, f"torch.compile here compiles for cpu and cuda, not {device}"
    from torch._inductor import config

    search = tuple(config.cpp.cxx) if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    return _cpu_compiler_status(search)


@functools.lru_cache(maxsize=None)
def _cpu_compiler_status(search: tuple) -> tuple[bool, str]:
    """Whether the C++ compiler inductor would use (``search``: its ``cpp.cxx`` setting) exists and compiles a
    program: inductor's CPU code is C++ built at the first forward."""
    from torch._inductor import exc
    from torch._inductor.cpp_builder import cpp_compiler_search

    names = ", ".join(str(c) for c in search if c is not None) or "none"
    try:
        cxx = cpp_compiler_search(search)
    except exc.InvalidCxxCompiler:
        return False, (
            f"no working C++ compiler (tried {names}; the CPU form compiles C++): install one "
            f"(apt-get install -y g++) or set CXX"
        )
    with tempfile.TemporaryDirectory(prefix="medexport-cxx-") as tmp:
        source = Path(tmp) / "probe.cpp"
        source.write_text("int main() { return 0; }\n")
        try:
            done = subprocess.run(
                [cxx, str(source), "-o", str(Path(tmp) / "probe")], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError) as e:
            return False, f"the C++ compiler {cxx} does not run ({e}): install a working one or set CXX"
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        first = said[0] if said else f"exit status {done.returncode}"
        return False, (
            f"the C++ compiler {cxx} cannot compile a program ({first}): install a working one "
            f"(apt-get install -y g++) or set CXX"
        )
    return True, f"C++ compiler {cxx}"


def __getattr__(name: str):
    if name == "CompiledRunner":  # torch: loaded on first use
        from .runner import CompiledRunner

        return CompiledRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


BACKEND = InductorBackend()
