"""The README is tested: every `medexport` command of its shell blocks parses against the CLI (options, choices,
ranges), its Python API and torch-free blocks run (small sizes), and the quick-start block runs end to end in a
fresh folder (slow). A false sentence there fails here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest

from medexport.cli import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DEMO = REPO / "engines" / "fashion-mnist-demo"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def medexport_commands() -> list[list[str]]:
    """Each `medexport ...` invocation of the bash blocks, continuation lines joined, comments and `&&` split."""
    out = []
    for block in blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part)
                if "--" in words and "torchrun" in words:  # torchrun ... --no-python -- medexport ...
                    words = words[words.index("--") + 1 :]
                if words[:1] == ["medexport"]:
                    out.append(words[1:])
    return out


COMMANDS = medexport_commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 20 and {"build", "sample", "eval", "tune", "bench", "inspect"} <= {c[0] for c in COMMANDS}


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_readme_command_parses(args):
    """Parsing only (nothing runs): an option, choice or range the CLI does not take fails here."""
    group_ctx = cli.make_context("medexport", list(args), resilient_parsing=False)
    with warnings.catch_warnings():  # click 8.2 deprecates protected_args; older clicks keep the name there
        warnings.simplefilter("ignore", DeprecationWarning)
        tokens = [*group_ctx.protected_args, *group_ctx.args]
    name, command, rest = cli.resolve_command(group_ctx, tokens)
    try:
        command.make_context(name, rest, parent=group_ctx)
    except click.UsageError as e:
        pytest.fail(f"README: `medexport {' '.join(args)}`: {e.format_message()}")


def _run_python(code: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


@pytest.mark.skipif(
    not (DEMO / "manifest.json").is_file(), reason="needs the demo bundle: medexport build (the README's first command)"
)
def test_the_python_api_block_runs():
    (api,) = [b for b in blocks("python") if "medexport.Pipeline.from_bundle" in b and "serve" not in b]
    check = (
        "\nassert tuple(v.shape) == (2, 4, 32, 32)\nassert tuple(result.latents.shape) == (2, 1, 28, 28)\n"
        "assert result.trace and abs(float(result.latents.abs().max()) - 1) < 0.5\n"
    )
    out = _run_python(api + check, REPO)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.skipif(
    not (DEMO / "manifest.json").is_file(), reason="needs the demo bundle: medexport build (the README's first command)"
)
def test_the_torch_free_block_runs_without_torch():
    (lite,) = [b for b in blocks("python") if "LitePipeline" in b]
    guard = (
        "import sys\nclass Absent:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n            raise ModuleNotFoundError(name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
    )
    check = "\nassert images.shape == (3, 1, 28, 28) and str(images.dtype) == 'float32'\n"
    out = _run_python(guard + lite + check, REPO)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.skipif(
    not (DEMO / "manifest.json").is_file(), reason="needs the demo bundle: medexport build (the README's first command)"
)
def test_the_in_process_server_block_runs():
    (server,) = [b for b in blocks("python") if "SamplingServer" in b]
    check = "\nassert [i.shape for i in images] == [(1, 1, 28, 28)] * 2 and not server.ready\n"
    out = _run_python(server + check, REPO)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_the_quick_start_runs_in_a_fresh_folder(tmp_path):
    """The first block without its installs (the environment has them): build, verify, sample, in a folder of
    its own; the grid lands where the README says."""
    (quick,) = [b for b in blocks("bash") if "medexport build &&" in b]
    steps = [p.strip() for p in quick.replace("\\\n", " ").split("&&") if p.strip().startswith("medexport")]
    assert [s.split()[1] for s in steps] == ["build", "verify", "sample"]
    exe = [sys.executable, str(REPO / "cli.py")]
    for step in steps:
        out = subprocess.run(
            exe + shlex.split(step)[1:] + (["--threads", "1"] if " sample " in f" {step} " else []),
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=900,
        )
        assert out.returncode == 0, f"{step}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    assert (tmp_path / "out" / "sample" / "grid.png").is_file()
    assert len(list((tmp_path / "out" / "sample" / "images").glob("*.png"))) == 20
