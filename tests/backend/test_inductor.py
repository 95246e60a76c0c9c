"""The torch.compile (inductor) backend on the CPU: one graph without breaks, the eager model's numbers."""

import torch

from medexport.backend import registry
from medexport.backend.inductor.runner import CompiledRunner
from medexport.backend.pytorch.runner import TorchRunner
from tests.conftest import model_inputs, tiny_model


def test_compiled_runner_matches_eager():
    """fullgraph=True: the mediator-attention op (its fake kernel's contiguous output included) compiles without a
    graph break; the fused graph gives the eager model's outputs within float32 rounding."""
    model = tiny_model(16)
    runner = CompiledRunner(model, device="cpu")
    eager = TorchRunner(model, device="cpu")
    for batch in (2, 3):  # one compiled graph per batch size
        x, t, y = model_inputs(model.config, batch=batch, seed=batch)
        torch.testing.assert_close(runner(x, t, y), eager(x, t, y), rtol=1e-5, atol=1e-5)
    backend = registry.get("inductor")
    assert not backend.builds_engine and backend.preference is None  # never chosen by "auto"
    assert "inductor" in registry.sample_choices()


def test_without_a_working_cxx_compiler_the_cpu_form_is_unavailable(tiny_bundle, tmp_path):
    """Inductor's CPU code is C++ compiled at the first forward: without a compiler that works the backend says
    so, with the reason and the fallback, when it is chosen (never an InvalidCxxCompiler traceback mid-run)."""
    import pytest
    from torch._inductor import config

    from medexport import Pipeline
    from medexport.backend.inductor import device_status
    from medexport.errors import BackendUnavailableError

    broken = tmp_path / "broken-c++"  # answers --version, compiles nothing
    broken.write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'broken 1.0'; exit 0; }\n"
        "echo 'broken: cannot compile' >&2\nexit 1\n"
    )
    broken.chmod(0o755)
    cases = [
        ((str(tmp_path / "absent-c++"),), "no working C++ compiler (tried"),
        ((str(broken),), f"the C++ compiler {broken} cannot compile a program (broken: cannot compile)"),
    ]
    for cxx, message in cases:
        with config.patch({"cpp.cxx": cxx}):  # torch's own way to set its config for a while
            ok, why = device_status("cpu")
            assert not ok and message in why, why
            if not torch.cuda.is_available():
                ok, why = registry.get("inductor").status()
                assert not ok and message in why and "no CUDA GPU is visible" in why, why
            else:  # the CUDA form still works: the backend is usable, its runner for the CPU is not
                assert registry.get("inductor").status()[0]
            with pytest.raises(
                BackendUnavailableError,
                match="--backend inductor cannot (run|compile for cpu) here: .*"
                "--backend torch runs the same model without compiling",
            ):
                Pipeline.from_bundle(tiny_bundle, backend="inductor", device="cpu")
    assert device_status("cpu")[0], device_status("cpu")  # this machine's compiler works
