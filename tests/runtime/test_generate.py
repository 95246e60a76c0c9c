"""``medexport generate``: rank-independent images, atomic shards that resume, the ADM .npz, refusals."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medexport import Pipeline
from medexport.cli import cli
from medexport.core.request import SampleRequest, image_seed
from tests.conftest import tiny_model

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--num", "10", "--batch", "3", "--sampler", "sde", "--steps", "6", "--cfg-scale", "2",
        "--schedule", "16:0.5,64", "--threads", "1"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def npz(folder):
    (path,) = Path(folder).glob("samples_*.npz")
    with np.load(path) as z:
        return z["arr_0"], z["labels"]


def test_each_image_depends_on_its_own_seed_only():
    pipe = Pipeline.from_models({16: tiny_model(16), 64: tiny_model(64)}, device="cpu")
    seeds, labels = [image_seed(3, i) for i in range(4)], [1, 2, 3, 4]
    kw = dict(sampler="sde", steps=6, cfg_scale=2.0, schedule="16:0.5,64")
    whole = pipe.run(SampleRequest(labels, image_seeds=seeds, **kw)).latents
    parts = torch.cat([pipe.run(SampleRequest(labels[i:i + 1], image_seeds=seeds[i:i + 1], **kw)).latents
                       for i in range(4)])
    assert (parts - whole).abs().max() < 1e-5  # batch composition changes float rounding only
    with pytest.raises(Exception, match="seed or image_seeds"):
        SampleRequest(labels, seed=1, image_seeds=seeds)


def test_generate_writes_the_adm_npz_and_resumes(tiny_bundle, tmp_path):
    out = tmp_path / "run"
    r = run("generate", tiny_bundle, "-o", out, *ARGS)
    assert r.exit_code == 0, r.output
    arr, labels = npz(out)
    assert arr.shape == (10, 4, 16, 16) and arr.dtype == np.float32  # a latent model without --vae: its latents
    assert labels.shape == (10,) and set(labels) <= set(range(10))
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 10 and report["world_size"] == 1 and report["ranks"][0]["blocks_done"] == 4

    (out / "shards" / "block-000002.npz").unlink()  # a rank killed before its third block
    r = run("generate", tiny_bundle, "-o", out, *ARGS)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["ranks"][0]["blocks_done"] == 1 and report["ranks"][0]["blocks_skipped"] == 3
    again, _ = npz(out)
    assert np.array_equal(again, arr)

    r = run("generate", tiny_bundle, "-o", out, *[a if a != "6" else "8" for a in ARGS])  # other settings
    assert r.exit_code == 1 and "holds the shards of another run" in r.output and "sampling" in r.output
    assert "or choose another --output" in r.output  # the option's name
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    r = run("generate", tiny_bundle, "-o", tmp_path / "mine", *ARGS)
    assert r.exit_code == 1 and "not a `medexport generate` folder: choose an empty or new --output" in r.output
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


def test_help_gives_the_torchrun_command_that_works():
    """torchrun reads --num as an abbreviation of its own options unless -- ends them: the help says so."""
    r = run("generate", "--help")
    assert r.exit_code == 0, r.output
    line = next(x.strip() for x in r.output.splitlines() if x.strip().startswith("torchrun "))
    assert line == "torchrun --nproc_per_node K --no-python -- medexport generate BUNDLE --num N -o DIR"
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(line.split()[1:])  # torchrun's own parser leaves every option to us
    assert args.no_python and args.training_script == "medexport"
    assert args.training_script_args == ["generate", "BUNDLE", "--num", "N", "-o", "DIR"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(tiny_bundle, out, per_rank_args, timeout=240):
    """Start len(per_rank_args) processes as torchrun would (gloo on the CPU)."""
    port = _free_port()
    procs = []
    for rank, extra in enumerate(per_rank_args):
        env = {**os.environ, "WORLD_SIZE": str(len(per_rank_args)), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(REPO / "cli.py"), "generate", str(tiny_bundle), "-o",
                                       str(out), *ARGS, *extra], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]


def test_two_ranks_give_the_images_of_one(tiny_bundle, tmp_path):
    one = tmp_path / "one"
    assert run("generate", tiny_bundle, "-o", one, *ARGS).exit_code == 0
    results = _ranks(tiny_bundle, tmp_path / "two", [[], []])
    assert all(rc == 0 for rc, _ in results), results
    a, la = npz(one)
    b, lb = npz(tmp_path / "two")
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["world_size"] == 2 and [r["blocks_done"] for r in report["ranks"]] == [2, 2]


def test_ranks_with_different_arguments_are_refused(tiny_bundle, tmp_path):
    results = _ranks(tiny_bundle, tmp_path / "x", [["--seed", "1"], ["--seed", "2"]])
    assert all(rc == 1 for rc, _ in results), results
    assert all("different settings" in text for _, text in results)
    assert not (tmp_path / "x").exists()


def test_every_rank_stops_when_the_folder_is_another_runs(tiny_bundle, tmp_path):
    """Rank 0 judges the folder and every rank learns its verdict: none waits for one that gave up."""
    out = tmp_path / "run"
    assert run("generate", tiny_bundle, "-o", out, *ARGS).exit_code == 0
    results = _ranks(tiny_bundle, out, [["--seed", "5"], ["--seed", "5"]], timeout=120)
    assert [rc for rc, _ in results] == [1, 1]
    assert all("holds the shards of another run" in text for _, text in results)
