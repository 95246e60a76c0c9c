"""Output a person can read: tables whole at any width, dicts as words, quiet logs, one folder per command."""

from __future__ import annotations

import io
import logging

import click
from rich.console import Console
from rich.table import Table

from medexport.cli.main import cli
from medexport.cli.sample_cmd import steps_in_words
from medexport.cli.tables import print_table

NAME = "fashion-mnist-demo-int8-static-with-a-long-name"


def _table() -> Table:
    table = Table(title="eval")
    for col in ("bundle", "schedule", "accuracy", "steps per count"):
        table.add_column(col, overflow="fold")
    table.add_row(NAME, "4:0.3,8:0.6,16", "91.0%", "4 mediators: 6 steps, 8: 6, 16: 7")
    return table


def _printed(width: int) -> str:
    out = io.StringIO()
    print_table(_table(), Console(file=out, width=width, color_system=None))
    return out.getvalue()


def test_a_table_that_fits_prints_as_a_table():
    text = _printed(140)
    assert NAME in text and "┃ bundle" in text.replace("\u2503 bundle", "┃ bundle")
    assert max(map(len, text.splitlines())) <= 140


def test_a_table_too_wide_becomes_a_list_with_every_name_whole():
    for width in (40, 100):
        text = _printed(width)
        assert f"bundle: {NAME}" in text and "accuracy: 91.0%" in text, text
        assert "…" not in text


def test_dicts_are_printed_as_words():
    assert steps_in_words({4: 6, 8: 6, 16: 7}) == "4 mediators: 6 steps, 8: 6, 16: 7"
    assert steps_in_words({4: 1}) == "4 mediators: 1 step"


def test_each_command_writes_into_its_own_default_folder():
    defaults = {}
    for name, option in (("sample", "out_dir"), ("eval", "report"), ("tune", "report"), ("bench", "out_dir")):
        command = cli.get_command(click.Context(cli), name)
        (param,) = [p for p in command.params if p.name == option]
        defaults[name] = str(param.default or "")
    assert defaults["eval"] == "out/eval/eval.json" and defaults["tune"] == "out/tune/tune.json", defaults
    # sample and bench name theirs in the help (the folder is made per run): out/sample, out/bench
    helps = {n: cli.get_command(click.Context(cli), n).get_help(click.Context(cli)) for n in ("sample", "bench")}
    assert "out/sample" in helps["sample"] and "out/bench" in helps["bench"]


def test_other_libraries_info_lines_only_with_v(tmp_path):
    from click.testing import CliRunner

    @cli.command("log-probe", hidden=True)
    def probe():
        logging.info("Quantization parameters for tensor:x not specified")  # ONNX Runtime logs on the root
        logging.getLogger("medexport.x").info("medexport progress")

    try:
        runner = CliRunner()
        quiet = runner.invoke(cli, ["log-probe"])
        loud = runner.invoke(cli, ["-v", "log-probe"])
    finally:
        cli.commands.pop("log-probe")
    assert quiet.exit_code == 0 and loud.exit_code == 0
    assert "Quantization parameters" not in quiet.output and "medexport progress" in quiet.output
    assert "Quantization parameters" in loud.output


def test_an_adaptive_schedule_says_what_it_did():
    from types import SimpleNamespace

    from medexport.cli.sample_cmd import adaptive_in_words
    from medexport.core.schedule import Switch

    never = SimpleNamespace(
        switches=[],
        counts=(4, 8, 16),
        per_sample=False,
        d0=2.0,
        warmup=3,
        distances=[9, 2, 2, 2, 1.8, 1.62, 1.7],
        ratios=(0.5, 0.2),
    )
    assert adaptive_in_words(never) == (
        "adaptive schedule: never switched, 4 mediators throughout: the smallest step change was 0.81 of the "
        "warm-up's (d_i / d_0), above the first ratio 0.5 by 0.31; a ratio above 0.81 would switch"
    )
    switched = SimpleNamespace(switches=[Switch(4, 4, 8), Switch(13, 8, 16)], counts=(4, 8, 16))
    assert adaptive_in_words(switched) == (
        "adaptive schedule: 4 -> 8 mediators after step 4, 8 -> 16 mediators after step 13"
    )


def _demo():
    from pathlib import Path

    import pytest

    demo = Path(__file__).resolve().parents[1] / "engines" / "fashion-mnist-demo"
    if not (demo / "manifest.json").is_file():
        pytest.skip("needs the demo bundle: medexport build")
    return demo


def test_last_step_means_the_same_in_every_command(tmp_path):
    """--last-step with the ODE (the demo's sampler) is refused alike by every command that takes it, before
    anything is written."""
    from click.testing import CliRunner

    demo = _demo()
    runner = CliRunner()
    for args in (
        ["sample", demo, "-o", tmp_path / "s"],
        ["eval", demo, "--report", tmp_path / "e" / "eval.json"],
        ["tune", demo, "--budget-fraction", "0.8", "--report", tmp_path / "t" / "tune.json"],
        ["generate", demo, "--num", "2", "-o", tmp_path / "g"],
    ):
        r = runner.invoke(cli, [*map(str, args), "--last-step", "euler"])
        assert r.exit_code == 1, (args[0], r.output)
        assert "--last-step euler applies to the SDE sampler only" in r.output, (args[0], r.output)
    assert not any(tmp_path.iterdir())


def test_sample_keeps_the_raw_latents_when_asked(tmp_path):
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    demo = _demo()
    r = CliRunner().invoke(
        cli,
        [
            "sample",
            str(demo),
            "--labels",
            "0,1",
            "--steps",
            "6",
            "--threads",
            "1",
            "--save-latents",
            "-o",
            str(tmp_path / "s"),
        ],
    )
    assert r.exit_code == 0, r.output
    raw = np.load(tmp_path / "s" / "latents.npy")
    assert raw.shape == (2, 1, 28, 28)
    png = np.asarray(Image.open(tmp_path / "s" / "images" / "000.png"), dtype=np.float32)
    want = np.round((np.clip(raw[0, 0], -1, 1) + 1) * 127.5)
    assert np.abs(png - want).max() == 0  # the image is the clamped sample
