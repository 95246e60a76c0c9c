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
ARGS = [
    "--num",
    "10",
    "--batch",
    "3",
    "--sampler",
    "sde",
    "--steps",
    "6",
    "--cfg-scale",
    "2",
    "--schedule",
    "16:0.5,64",
    "--threads",
    "1",
]


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
    parts = torch.cat(
        [pipe.run(SampleRequest(labels[i : i + 1], image_seeds=seeds[i : i + 1], **kw)).latents for i in range(4)]
    )
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
        env = {
            **os.environ,
            "WORLD_SIZE": str(len(per_rank_args)),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "cli.py"), "generate", str(tiny_bundle), "-o", str(out), *ARGS, *extra],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
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


def _rewrite_shard(path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_the_record_vouches_for_each_shard_and_a_resume_redoes_the_others(tiny_bundle, tmp_path):
    """A shard edited after it was written, or copied in from a run with another seed, is sampled again."""
    out, other = tmp_path / "run", tmp_path / "other"
    assert run("generate", tiny_bundle, "-o", out, *ARGS).exit_code == 0
    assert run("generate", tiny_bundle, "-o", other, *ARGS, "--seed", "7").exit_code == 0
    record = json.loads((out / "generate.json").read_text())
    shards = sorted((out / "shards").glob("block-*.npz"))
    assert sorted(record["shards"]) == [p.name for p in shards]
    from medexport.core.files import file_sha256

    assert all(record["shards"][p.name] == file_sha256(p) for p in shards)
    arr, labels = npz(out)

    edited = out / "shards" / "block-000001.npz"
    with np.load(edited) as z:
        _rewrite_shard(edited, samples=z["samples"] + 1)  # values changed, index and labels kept
    (out / "shards" / "block-000002.npz").write_bytes((other / "shards" / "block-000002.npz").read_bytes())
    r = run("generate", tiny_bundle, "-o", out, *ARGS)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())["ranks"][0]
    assert (report["blocks_done"], report["blocks_skipped"], report["blocks_replaced"]) == (2, 2, 2)
    assert "2 shards sampled again (they did not match the run's record)" in r.output
    again, again_labels = npz(out)
    assert np.array_equal(again, arr) and np.array_equal(again_labels, labels)


def test_the_gather_merges_only_vouched_shards(tiny_bundle, tmp_path):
    from medexport.errors import SamplingError
    from medexport.runtime.generate import GenerateSpec, _gather

    out = tmp_path / "run"
    assert run("generate", tiny_bundle, "-o", out, *ARGS).exit_code == 0
    spec = GenerateSpec(**json.loads((out / "generate.json").read_text())["spec"])
    shard = out / "shards" / "block-000003.npz"
    with np.load(shard) as z:
        _rewrite_shard(shard, samples=z["samples"] * 0)  # changed after its rank vouched for it, before the gather
    with pytest.raises(
        SamplingError,
        match=r"1 blocks are missing or do not match the run's record \(3\): run the "
        r"same command again",
    ):
        _gather(out, spec, [], None, 1)
    record = json.loads((out / "generate.json").read_text())
    del record["shards"]["block-000000.npz"]  # a shard the record does not vouch for
    (out / "generate.json").write_text(json.dumps(record))
    shard.unlink()
    with pytest.raises(SamplingError, match=r"\(0, 3\)"):
        _gather(out, spec, [], None, 1)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "{not json",
        '{"kind": "medexport-generate", "key": 1}',
        '{"kind": "medexport-generate", "key": "k", "shards": []}',
    ],
)
def test_a_record_that_is_not_one_is_a_clear_error(tiny_bundle, tmp_path, text):
    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    (out / "generate.json").write_text(text)
    r = run("generate", tiny_bundle, "-o", out, *ARGS)
    assert r.exit_code == 1, r.output
    assert "generate.json" in r.output and "Choose another --output" in r.output and "Traceback" not in r.output
    assert (out / "generate.json").read_text() == text  # nothing written
    assert not list((out / "shards").iterdir())


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_holds_it(tiny_bundle, tmp_path):
    import fcntl

    out = tmp_path / "run"
    assert run("generate", tiny_bundle, "-o", out, *ARGS).exit_code == 0
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    with open(out / "generate.lock", "a") as held:  # a run in progress holds the folder's lock
        fcntl.flock(held, fcntl.LOCK_EX)
        r = run("generate", tiny_bundle, "-o", out, *ARGS)
        assert r.exit_code == 1 and "another `medexport generate` run is writing into" in r.output, r.output
        assert f"process {os.getpid()} (" in r.output, r.output  # who holds it: this test, by the earlier run's record
        assert "wait for it to finish" in r.output and "Traceback" not in r.output
        r = run("generate", tiny_bundle, "-o", tmp_path / "new", *ARGS)  # a new folder is not affected
        assert r.exit_code == 0, r.output
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before
    r = run("generate", tiny_bundle, "-o", out, *ARGS)  # the lock is free again: resumes (nothing to do)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "report.json").read_text())["ranks"][0]["blocks_skipped"] == 4
    (out / "generate.lock").unlink()
    (out / "generate.lock").symlink_to(tmp_path / "elsewhere")
    r = run("generate", tiny_bundle, "-o", out, *ARGS)
    assert r.exit_code == 1 and "generate.lock is a symbolic link" in r.output, r.output
    assert not (tmp_path / "elsewhere").exists()


def test_a_lock_path_that_is_not_a_file_is_refused_before_it_is_opened(tiny_bundle, tmp_path):
    """``generate.lock`` (or ``shards/record.lock``) as a folder was an IsADirectoryError traceback: the open came
    before the "not a regular file" check."""
    out = tmp_path / "run"
    (out / "generate.lock").mkdir(parents=True)
    r = run("generate", tiny_bundle, "-o", out, *ARGS)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert (
        f"{out / 'generate.lock'} is a folder, not a lock file (not made by medexport): remove it, or choose "
        f"another --output" in r.output
    ), r.output
    assert sorted(p.name for p in out.iterdir()) == ["generate.lock"]  # nothing written
    (out / "generate.lock").rmdir()
    (out / "shards" / "record.lock").mkdir(parents=True)
    r = run("generate", tiny_bundle, "-o", out, *ARGS)
    assert r.exit_code == 1 and f"{out / 'shards' / 'record.lock'} is a folder, not a lock file" in r.output, r.output
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["record.lock"]  # no shard sampled


_HOLD_LOCK = """
import sys, time
from medexport.core.files import take_lock
take_lock(sys.argv[1], error=RuntimeError, busy=str)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_record_lock_held_by_a_live_process_is_named_not_waited_for(tiny_bundle, tmp_path, monkeypatch):
    """A stuck rank of an earlier run that still holds ``shards/record.lock`` once made a new run write one shard
    and then wait forever without a word. Now the run says, within seconds and before sampling, which lock and
    which process, and what to do; nothing is sampled."""
    from medexport.runtime import generate as generate_module

    monkeypatch.setattr(generate_module, "CLAIM_RECORD_LOCK_WAIT", 0.5)
    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    lock = out / "shards" / "record.lock"
    # the earlier run's rank; it lets go after 30 s, so that the old code's endless wait ends in a failure
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = run("generate", tiny_bundle, "-o", out, *ARGS)
        assert holder.poll() is None, "the holder ended before the run was refused"
        # a rank adding its shard (after the claim) waits a bounded time too, then says the same
        monkeypatch.setattr(generate_module, "RECORD_LOCK_WAIT", 0.3)
        with pytest.raises(generate_module.GenerateError, match=rf"held for 0.3 s by process {holder.pid} \("):
            generate_module._vouch(out, "key", "block-000000.npz", "sha")
    finally:
        holder.kill()
        holder.wait()
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"{lock} has been held for 0.5 s by process {holder.pid} (" in r.output, r.output
    assert "end it" in r.output and "run this command again" in r.output, r.output
    assert [p.name for p in (out / "shards").iterdir()] == ["record.lock"]  # no shard sampled
    r = run("generate", tiny_bundle, "-o", out, *ARGS)  # its holder gone, the lock is free: the run goes on
    assert r.exit_code == 0, r.output


def test_two_runs_into_one_folder_at_once(tiny_bundle, tmp_path):
    """Started together: one finishes the run, the other says that the folder is taken (or, started after the
    first one finished, resumes it with nothing to do); nothing crashes and no block is sampled twice."""
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "cli.py"), "generate", str(tiny_bundle), "-o", str(out), *ARGS],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=240), p.stdout.read()) for p in procs]
    assert all(rc in (0, 1) for rc, _ in results), results
    assert all("Traceback" not in text for _, text in results), results
    refused = [text for rc, text in results if rc == 1]
    assert all("another `medexport generate` run is writing into" in text for text in refused), results
    assert sum("0 blocks already done" in text for rc, text in results if rc == 0) == 1, results
    arr, _ = npz(out)
    assert arr.shape[0] == 10
