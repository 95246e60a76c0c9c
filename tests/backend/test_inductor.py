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
