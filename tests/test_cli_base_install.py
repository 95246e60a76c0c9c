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
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "COLUMNS": "100", "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_works_without_torch_and_is_fast(command):
    out = base(command, "--help")
    assert out.returncode == 0 and "Usage:" in out.stdout, out.stderr
    # the import time of the command alone, in this process's interpreter (the subprocess above adds start-up)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "cli.py"), command, "--help"], capture_output=True, cwd=REPO,
                   timeout=60, check=False)
    assert time.perf_counter() - start < 1.5, f"medexport {command} --help is slow"  # < 0.5 s measured; CI margin


def test_sample_on_the_base_install_makes_the_same_images(tiny_bundle, tmp_path):
    args = ["--labels", "0,1,2", "--seed", "3", "--sampler", "ode", "--method", "euler", "--steps", "4",
            "--threads", "1"]
    with_torch = subprocess.run([sys.executable, str(REPO / "cli.py"), "sample", str(tiny_bundle), *args, "-o",
                                 str(tmp_path / "torch")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert with_torch.returncode == 0, with_torch.stderr
    out = base("sample", tiny_bundle, *args, "-o", tmp_path / "base")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "step-latency plot" in out.stderr and '.[build]' in out.stderr  # skipped, naming the extra
    files = sorted(p.relative_to(tmp_path / "torch") for p in (tmp_path / "torch").rglob("*.png"))
    assert Path("grid.png") in files and len([f for f in files if f.parts[0] == "images"]) == 3
    for f in files:
        if f.name == "step_latency.png":
            assert not (tmp_path / "base" / f).exists()
            continue
        a = np.asarray(Image.open(tmp_path / "torch" / f), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "base" / f), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() == 0, f  # max abs diff 0
    assert (tmp_path / "base" / "report.json").is_file()


def test_sample_labels_are_the_same_with_and_without_torch(tiny_bundle, tmp_path):
    import json

    out = base("sample", tiny_bundle, "--num", "5", "--seed", "9", "--sampler", "ode", "--method", "euler",
               "--steps", "3", "-o", tmp_path / "b")
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


@pytest.mark.parametrize("command", [["eval", "x"], ["tune", "x", "--budget-fraction", "0.8"], ["bench", "x"],
                                     ["build"], ["sample", "x", "--backend", "torch"]])
def test_what_needs_torch_says_so_in_one_line(command):
    out = base(*command)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    line = out.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and line.endswith(INSTALL_BUILD), line


def test_the_api_names_the_extra_without_torch():
    out = base("-c", "import medexport\ntry:\n    medexport.Pipeline\nexcept medexport.MedexportError as e:\n"
                     "    print(e)\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"medexport.Pipeline needs torch, which is not installed: {INSTALL_BUILD}"
