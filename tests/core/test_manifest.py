"""The typed manifest: one validation when a bundle is opened, shared by every command, the Python API and the
torch-free runtime. Hand-edited manifests are BundleErrors that name the bad part, never a KeyError or
TypeError."""

import json

import pytest

pytest.importorskip("torch", reason="these checks open bundles built with torch (the [build] extra)")

from click.testing import CliRunner  # noqa: E402

from medexport.bundle import Bundle  # noqa: E402
from medexport.cli import cli  # noqa: E402
from medexport.core.manifest import Manifest  # noqa: E402
from medexport.errors import BundleError  # noqa: E402
from medexport.lite import LitePipeline  # noqa: E402

from ..conftest import copy_bundle  # noqa: E402


def first(m):
    return next(iter(m["counts"].values()))


EDITS = {
    "counts as a list": (lambda m: m.update(counts=list(m["counts"].values())), "'counts' must be an object"),
    "a config of {}": (lambda m: first(m).update(config={}), "config: incomplete model config"),
    "an engine without sha256": (lambda m: first(m)["engines"]["onnxruntime"].pop("sha256"), "'sha256'"),
    "sampling as text": (lambda m: m.update(sampling="ode"), "'sampling' must be an object"),
    "a source of {}": (lambda m: first(m).update(source={}), "source 'kind' must be one of"),
    "a random source without seed": (
        lambda m: first(m).update(source={"kind": "random", "model": "SiT-S/2"}),
        "a random source needs",
    ),
    "requested of other types": (lambda m: m.update(requested=["x", 99]), "'requested' must list mediator counts"),
    "an older format_version": (lambda m: m.update(format_version=0), "format_version 0 is not 1"),
    "a count key that is no count": (lambda m: m["counts"].update(abc=first(m)), "counts key 'abc'"),
    "a model of {}": (lambda m: m.update(model={}), "'model': incomplete model config"),
}


@pytest.fixture
def edited(tiny_bundle, tmp_path, request):
    edit, message = EDITS[request.param]
    path = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path, message


@pytest.mark.parametrize("edited", list(EDITS), indirect=True)
def test_every_reader_refuses_a_hand_edited_manifest_the_same_way(edited):
    path, message = edited
    for open_it in (Manifest.read, Bundle, LitePipeline.from_bundle):
        with pytest.raises(BundleError, match=message):
            open_it(path)
    for command in ("inspect", "verify", "sample"):
        r = CliRunner().invoke(cli, [command, str(path)])
        assert r.exit_code == 1 and "Traceback" not in r.output and "not a valid medexport manifest" in r.output, (
            command,
            r.output,
        )


def test_a_manifest_without_its_timestamps_still_opens(tiny_bundle, tmp_path):
    path = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["updated"], manifest["created"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    r = CliRunner().invoke(cli, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert Manifest.read(path).counts.keys() == Bundle(tiny_bundle).info.counts.keys()
