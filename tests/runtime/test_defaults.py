"""Recommended sampling settings: validation, the user's choices on top, and a bundle's record of them."""

import json

import pytest

from medexport.bundle import Bundle
from medexport.errors import BundleError, SamplingError, ScheduleError
from medexport.runtime.defaults import SamplingDefaults

from ..conftest import copy_bundle

DEMO = SamplingDefaults(sampler="ode", method="euler", steps=20, cfg_scale=3.0, cfg_channels="all",
                        schedule="4:0.3,8:0.6,16")


def test_defaults_are_the_reference_s():
    d = SamplingDefaults()
    assert (d.sampler, d.resolved_method, d.resolved_steps, d.cfg_scale, d.cfg_channels, d.schedule) == \
        ("sde", "euler", 250, 1.0, "3", None)


def test_override_keeps_what_the_user_leaves_out():
    assert DEMO.override() == DEMO
    assert DEMO.override(steps=8, schedule="16") == SamplingDefaults(
        sampler="ode", method="euler", steps=8, cfg_scale=3.0, cfg_channels="all", schedule="16")
    # another sampler: the recorded method and steps belonged to the recorded one
    sde = DEMO.override(sampler="sde")
    assert (sde.method, sde.steps, sde.resolved_steps, sde.cfg_scale, sde.schedule) == (None, None, 250, 3.0,
                                                                                      "4:0.3,8:0.6,16")
    assert DEMO.override(sampler="ode").method == "euler"


def test_schedules_are_stored_canonically_and_round_trip():
    d = SamplingDefaults(schedule="adaptive:4,8,16:ratios=0.9,0.7")
    assert d.schedule == "adaptive:4,8,16:ratios=0.9,0.7:warmup=3:distance=mae"
    assert SamplingDefaults.from_dict(json.loads(json.dumps(d.to_dict()))) == d


@pytest.mark.parametrize("fields, message", [
    (dict(sampler="euler"), "unknown sampler"),
    (dict(sampler="sde", method="dopri5"), "dopri5 is an ode method"),
    (dict(steps=1), "steps must be"),
    (dict(cfg_scale=0.5), "below 1"),
    (dict(cfg_scale=float("nan")), "below 1"),
    (dict(cfg_channels="2"), "'3'"),
    (dict(schedule=16), "schedule is text"),
])
def test_bad_settings_are_refused(fields, message):
    with pytest.raises(SamplingError, match=message):
        SamplingDefaults(**fields)


def test_bad_schedule_is_refused():
    with pytest.raises(ScheduleError, match="segment 2"):
        SamplingDefaults(schedule="16:0.3,")


def test_unknown_keys_are_refused():
    with pytest.raises(SamplingError, match="unknown sampling settings"):
        SamplingDefaults.from_dict({"sampler": "ode", "temperature": 2})


def test_bundle_without_a_record_uses_the_reference_defaults(tiny_bundle, tmp_path):
    b = Bundle(tiny_bundle)
    assert b.sampling_defaults == SamplingDefaults() and b.data is None
    path = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["sampling"]  # a bundle of an earlier medexport
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert Bundle(path).sampling_defaults == SamplingDefaults()


@pytest.mark.parametrize("field, value, message", [
    ("sampling", {"sampler": "ode", "steps": "many"}, "'sampling'"),
    ("sampling", {"cfg_scale": 2, "colour": "red"}, "'sampling'"),
    ("sampling", {"schedule": "16:0.3,"}, "'sampling'"),
    ("data", {"space": "latent"}, "'data'"),
    ("data", "fashion-mnist", "'data'"),
])
def test_malformed_records_are_refused(tiny_bundle, tmp_path, field, value, message):
    path = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest[field] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        Bundle(path)
