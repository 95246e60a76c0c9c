"""The typed manifest entries: one place reads, writes and checks every file of an ONNX graph or engine."""

import json

import pytest

from medexport.bundle import MANIFEST, Bundle
from medexport.core.artifact import Artifact, ArtifactError
from medexport.errors import BundleError
from tests.conftest import copy_bundle

GOOD = {
    "file": "m.onnx",
    "sha256": "a" * 64,
    "files": ["m.onnx", "m.onnx.data"],
    "hashes": ["a" * 64, "b" * 64],
    "precision": "fp16",
    "batch": "1:2:4",
    "key": "k",
    "providers": ["CPUExecutionProvider"],
}


def test_round_trip_keeps_the_backend_record():
    art = Artifact.from_dict(GOOD)
    assert art.files == ("m.onnx", "m.onnx.data") and str(art.batch) == "1:2:4"
    assert art.record == {"providers": ["CPUExecutionProvider"]}
    assert art.to_dict() == GOOD


@pytest.mark.parametrize(
    "change, what",
    [
        ({"precision": "fp4"}, "precision 'fp4'"),
        ({"precision": None}, "precision None"),
        ({"batch": "junk"}, "batch range 'junk'"),
        ({"batch": 4}, "batch 4"),
        ({"files": ["other.onnx"], "hashes": ["a" * 64]}, "must start with"),
        ({"files": ["m.onnx"]}, "same length"),
        ({"file": "../outside.onnx", "files": ["../outside.onnx"]}, "plain 'file'"),
        ({"files": ["m.onnx", "../x.data"]}, "plain file names"),
        ({"key": 3}, "'key'"),
    ],
)
def test_malformed_entries_say_what_is_wrong(change, what):
    with pytest.raises(ArtifactError, match=what.replace("(", r"\(").replace("[", r"\[")):
        Artifact.from_dict({**GOOD, **change})


def test_a_malformed_engine_entry_is_a_bundle_error_naming_it(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    m = json.loads((bundle / MANIFEST).read_text())
    m["counts"]["32"]["engines"]["onnxruntime"]["batch"] = "2:1:4"
    (bundle / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"counts\['32'\].engines\['onnxruntime'\] batch range must satisfy"):
        Bundle(bundle)


def test_every_file_of_an_artifact_is_checked(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    art = Bundle(bundle).onnx(16)
    assert art.check(bundle) == bundle / art.file
    (bundle / "extra.data").write_bytes(b"weights")
    two = Artifact(art.files + ("extra.data",), art.hashes + ("0" * 64,), art.precision, key="k")
    with pytest.raises(BundleError, match="extra.data does not match the hash"):
        two.check(bundle)
    assert not two.up_to_date(bundle, "k")  # same key, a changed file: rebuilt
    assert Artifact(art.files, art.hashes, art.precision, key="k").up_to_date(bundle, "k")
