"""``medexport flops`` and ``medexport info`` through click's runner."""

import re

from click.testing import CliRunner

import medexport
from medexport.cli import cli
from tests.conftest import tiny_model


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_flops_table_figures():
    r = run("flops", "--model", "SiT-XL/2", "--image-size", "512", "--mediators", "16,32,64")
    assert r.exit_code == 0, r.output
    rows = re.findall(r"│\s+(\d+) │\s+(\dx\d) │\s+([\d.]+) │\s+([\d.]+) │\s+([\d.]+)%", r.output)
    assert [(n, g, f, full) for n, g, f, full, _ in rows] == [
        ("16", "4x4", "459.3", "524.5"),
        ("32", "4x8", "461.4", "524.5"),
        ("64", "8x8", "465.6", "524.5"),
    ]


def test_flops_bad_input_exits_without_traceback():
    r = run("flops", "--image-size", "100")
    assert r.exit_code == 1 and "not a multiple of 16" in r.output and "Traceback" not in r.output
    r = run("flops", "--mediators", "16,x")
    assert r.exit_code == 2 and "comma-separated" in r.output
    r = run("flops", "--mediators", "16,16")
    assert r.exit_code == 2 and "more than once" in r.output
    r = run("flops", "--mediators", "300")
    assert r.exit_code == 1 and "exceed the 256 tokens" in r.output


def test_flops_refuses_0_mediators_and_points_to_the_full_attention_column():
    """0 is the full-attention twin's count, not a mediator count (as ``build --mediators 0``): no "0 mediators,
    grid 0x0" row; every row has the full-attention model's GFLOPs beside it."""
    for value in ("0", "16,0"):
        r = run("flops", "--mediators", value)
        assert r.exit_code == 2, r.output
        assert "--mediators" in r.output and "0 is not a mediator count" in r.output, r.output
        assert '"full attention GFLOPs"' in r.output and "--attention full" in r.output, r.output
        assert "0x0" not in r.output and "Traceback" not in r.output


def test_info_reports_architecture(tmp_path):
    path = medexport.save_checkpoint(tiny_model(32), tmp_path / "m.pt", form="trainer")
    r = run("info", str(path))
    assert r.exit_code == 0, r.output
    for text in ("trainer dict", "ema", "2 / 64 / 4", "32 (4 x 8 grid)", "8 x 8 = 64", "10 (+ null class)"):
        assert text in r.output, text
    st = medexport.save_checkpoint(tiny_model(16), tmp_path / "m.safetensors", form="safetensors")
    r = run("info", str(st))
    assert r.exit_code == 0 and "safetensors" in r.output and "16 (4 x 4 grid)" in r.output
    vanilla = medexport.save_checkpoint(tiny_model(0, attention="full"), tmp_path / "v.safetensors", form="safetensors")
    r = run("info", str(vanilla))
    assert r.exit_code == 0 and "none: full attention" in r.output and "--attention full" in r.output


def test_info_bad_files(tmp_path):
    r = run("info", str(tmp_path / "missing.pt"))
    assert r.exit_code == 1 and "does not exist" in r.output and "Traceback" not in r.output
    (tmp_path / "junk.pt").write_text("junk")
    r = run("info", str(tmp_path / "junk.pt"))
    assert r.exit_code == 1 and "neither" in r.output


def test_info_prints_a_path_as_text_not_markup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd[").mkdir()
    medexport.save_checkpoint(tiny_model(16), tmp_path / "odd[" / "]m16.pt", form="trainer")
    r = CliRunner().invoke(cli, ["info", "odd[/]m16.pt"])
    assert r.exit_code == 0, r.output
    assert "odd[/]m16.pt" in r.output and "16 (4 x 4 grid)" in r.output
