"""The command line on the base install (no torch, no matplotlib): sample, inspect and verify run ONNX Runtime
bundles through medexport.lite; the rest name the extra they need in one line; every --help works.

torch is hidden from a subprocess by an import hook (the wheel in a real venv is tests/test_packaging.py's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medexport.cli.main import COMMANDS

REPO = Path(__file__).resolve().parents[1]
HIDDEN = ("torch", "onnx", "onnxscript", "polygraphy", "matplotlib", "torchdiffeq", "diffusers", "triton")
WITHOUT_TORCH = textwrap.dedent(f"""
    import sys
    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {HIDDEN!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Absent())
    if sys.argv[1] == "-c":
        exec(sys.argv[2])
    else:
        from medexport.cli import cli
        try:
            cli(sys.argv[1:], prog_name="medexport")
        finally:
            assert "torch" not in sys.modules
""")
INSTALL_BUILD = 'pip install -e ".[build]" from a medexport checkout'


def base(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "COLUMNS": "100", "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_works_without_torch_and_is_fast(command):
    out = base(command, "--help")
    assert out.returncode == 0 and "Usage:" in out.stdout, out.stderr
    # the import time of the command alone, in this process's interpreter (the subprocess above adds start-up)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(REPO / "cli.py"), command, "--help"],
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert time.perf_counter() - start < 1.5, f"medexport {command} --help is slow"  # < 0.5 s measured; CI margin


def _sample_both(bundle: Path, tmp_path: Path, args: list[str]) -> tuple[Path, Path]:
    """``medexport sample`` with torch and without it (the base install), into tmp_path/torch and tmp_path/base."""
    with_torch = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "sample", str(bundle), *args, "-o", str(tmp_path / "torch")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert with_torch.returncode == 0, with_torch.stderr
    out = base("sample", bundle, *args, "-o", tmp_path / "base")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "step-latency plot" in out.stderr and ".[build]" in out.stderr  # skipped, naming the extra
    assert not (tmp_path / "base" / "step_latency.png").exists()
    assert (tmp_path / "base" / "report.json").is_file()
    return tmp_path / "torch", tmp_path / "base"


ARGS = ["--labels", "0,1,2", "--seed", "3", "--sampler", "ode", "--method", "euler", "--steps", "4", "--threads", "1"]


def test_sample_on_the_base_install_makes_the_same_latents(tiny_bundle, tmp_path):
    torch_dir, base_dir = _sample_both(tiny_bundle, tmp_path, ARGS)
    a, b = np.load(torch_dir / "latents.npy"), np.load(base_dir / "latents.npy")
    assert a.shape == b.shape and a.shape[0] == 3
    assert np.abs(a - b).max() == 0  # max abs diff 0 (the ODE: bit for bit)


DEMO = REPO / "engines" / "fashion-mnist-demo"


@pytest.mark.skipif(not (DEMO / "manifest.json").is_file(), reason="needs the demo bundle: medexport build")
def test_sample_on_the_base_install_makes_the_same_images_and_grid(tmp_path):
    torch_dir, base_dir = _sample_both(DEMO, tmp_path, ARGS)
    files = sorted(p.relative_to(torch_dir) for p in torch_dir.rglob("*.png") if p.name != "step_latency.png")
    assert Path("grid.png") in files and len([f for f in files if f.parts[0] == "images"]) == 3
    for f in files:
        a = np.asarray(Image.open(torch_dir / f), dtype=np.int16)
        b = np.asarray(Image.open(base_dir / f), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() == 0, f  # max abs diff 0


def test_sample_labels_are_the_same_with_and_without_torch(tiny_bundle, tmp_path):
    import json

    out = base(
        "sample",
        tiny_bundle,
        "--num",
        "5",
        "--seed",
        "9",
        "--sampler",
        "ode",
        "--method",
        "euler",
        "--steps",
        "3",
        "-o",
        tmp_path / "b",
    )
    assert out.returncode == 0, out.stderr
    labels = json.loads((tmp_path / "b" / "report.json").read_text())["request"]["labels"]
    assert labels == np.random.default_rng(9).integers(0, 10, 5).tolist()


def test_inspect_and_verify_without_torch(tiny_bundle):
    out = base("inspect", tiny_bundle)
    assert out.returncode == 0, out.stderr
    assert "runs here" in out.stdout and "{" not in out.stdout  # build settings as words, no dicts
    out = base("verify", tiny_bundle)
    assert out.returncode == 0, out.stderr
    assert "PASS" in out.stdout and "FAIL" not in out.stdout
    assert "comparison with PyTorch was skipped" in out.stdout and ".[build]" in out.stdout


def test_export_triton_without_torch(tiny_bundle, tmp_path):
    out = base("export-triton", tiny_bundle, "-o", tmp_path / "repo")
    assert out.returncode == 0, out.stderr
    assert {"medexport_sampler", "medexport-triton.json"} <= {p.name for p in (tmp_path / "repo").iterdir()}


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "x"],
        ["tune", "x", "--budget-fraction", "0.8"],
        ["bench", "x"],
        ["build"],
        ["sample", "x", "--backend", "torch"],
    ],
)
def test_what_needs_torch_says_so_in_one_line(command):
    out = base(*command)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    line = out.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and line.endswith(INSTALL_BUILD), line


def test_the_api_names_the_extra_without_torch():
    out = base(
        "-c", "import medexport\ntry:\n    medexport.Pipeline\nexcept medexport.MedexportError as e:\n    print(e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"medexport.Pipeline needs torch, which is not installed: {INSTALL_BUILD}"
