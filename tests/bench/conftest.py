"""The vanilla twin of the tiny bundle, built once per session for every bench test."""

import pytest
from click.testing import CliRunner

import medexport
from medexport.cli import cli
from medexport.core.config import FULL
from tests.conftest import tiny_model

#: The quickest bench run the CLI takes: one image, three ODE Euler steps, one round and run, no warm-up runs.
QUICK_BENCH = (
    "--num",
    "1",
    "--steps",
    "3",
    "--sampler",
    "ode",
    "--method",
    "euler",
    "--threads",
    "1",
    "--rounds",
    "1",
    "--runs",
    "1",
    "--warmup",
    "0",
)


@pytest.fixture(scope="session")
def vanilla_checkpoint(tmp_path_factory):
    model = tiny_model(FULL, attention="full")
    return medexport.save_checkpoint(
        model, tmp_path_factory.mktemp("vanilla") / "tiny-vanilla.safetensors", form="safetensors"
    )


@pytest.fixture(scope="session")
def twin_bundle(tmp_path_factory, vanilla_checkpoint):
    """The tiny model's vanilla twin (full attention), ONNX Runtime engines, batch 1:2:4. Do not modify it."""
    out = tmp_path_factory.mktemp("twin") / "tiny-full"
    r = CliRunner().invoke(
        cli,
        [
            "build",
            "--attention",
            "full",
            "--checkpoint",
            str(vanilla_checkpoint),
            "--backend",
            "onnxruntime",
            "--batch",
            "1:2:4",
            "-o",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 0, r.output
    return out
