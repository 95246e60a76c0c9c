"""Sampling settings (one type for recommendations, choices and what runs): validation, the user's choices on top
of a recommendation, resolution to the reference's defaults, and a bundle's record of them."""

import json

import pytest

from medexport.bundle import Bundle
from medexport.core.settings import SamplingSettings
from medexport.errors import BundleError, SamplingError, ScheduleError

from ..conftest import copy_bundle

DEMO = SamplingSettings(
    sampler="ode", method="euler", steps=20, cfg_scale=3.0, cfg_channels="all", schedule="4:0.3,8:0.6,16"
)


def test_defaults_are_the_reference_s():
    d = SamplingSettings()
    assert all(v is None for v in d.to_dict().values())  # nothing chosen
    r = d.resolved()
    assert (r.sampler, r.method, r.steps, r.cfg_scale, r.cfg_channels, r.schedule, r.last_step, r.last_step_size) == (
        "sde",
        "euler",
        250,
        1.0,
        "3",
        None,
        "mean",
        0.04,
    )
    assert SamplingSettings(sampler="ode").resolved().method == "dopri5"
    assert d.recommendation() == {
        "sampler": "sde",
        "method": None,
        "steps": None,
        "cfg_scale": 1.0,
        "cfg_channels": "3",
        "schedule": None,
    }


def test_override_keeps_what_the_user_leaves_out():
    assert DEMO.override() == DEMO
    assert DEMO.override(steps=8, schedule="16") == SamplingSettings(
        sampler="ode", method="euler", steps=8, cfg_scale=3.0, cfg_channels="all", schedule="16"
    )
    # another sampler: the recorded method and steps belonged to the recorded one
    sde = DEMO.override(sampler="sde")
    assert (sde.method, sde.steps, sde.resolved_steps, sde.cfg_scale, sde.schedule) == (
        None,
        None,
        250,
        3.0,
        "4:0.3,8:0.6,16",
    )
    assert DEMO.override(sampler="ode").method == "euler"


def test_schedules_are_stored_canonically_and_round_trip():
    d = SamplingSettings(schedule="adaptive:4,8,16:ratios=0.9,0.7")
    assert d.schedule == "adaptive:4,8,16:ratios=0.9,0.7:warmup=3:distance=mae"
    assert SamplingSettings.from_dict(json.loads(json.dumps(d.to_dict()))) == d


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(sampler="euler"), "unknown sampler"),
        (dict(sampler="sde", method="dopri5"), "dopri5 is an ode method"),
        (dict(steps=1), "steps must be"),
        (dict(cfg_scale=0.5), "below 1"),
        (dict(cfg_scale=float("nan")), "below 1"),
        (dict(cfg_channels="2"), "'3'"),
        (dict(schedule=16.5), "schedule is text"),
        (dict(steps=10**12), "steps must be"),
        (dict(cfg_channels=0), "'3'"),
    ],
)
def test_bad_settings_are_refused(fields, message):
    with pytest.raises((SamplingError, ScheduleError), match=message):
        SamplingSettings(**fields)


def test_bad_schedule_is_refused():
    with pytest.raises(ScheduleError, match="segment 2"):
        SamplingSettings(schedule="16:0.3,")


def test_unknown_keys_are_refused():
    with pytest.raises(SamplingError, match="unknown sampling settings"):
        SamplingSettings.from_dict({"sampler": "ode", "temperature": 2})


def test_bundle_without_a_record_uses_the_reference_defaults(tiny_bundle, tmp_path):
    b = Bundle(tiny_bundle)
    assert b.sampling.resolved() == SamplingSettings().resolved() and b.data is None
    path = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["sampling"]  # a bundle of an earlier medexport
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert Bundle(path).sampling == SamplingSettings()
    assert SamplingSettings(schedule=16).schedule == "16"  # one count for every step


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sampling", {"sampler": "ode", "steps": "many"}, "'sampling'"),
        ("sampling", {"cfg_scale": 2, "colour": "red"}, "'sampling'"),
        ("sampling", {"schedule": "16:0.3,"}, "'sampling'"),
        ("data", {"space": "latent"}, "'data'"),
        ("data", "fashion-mnist", "'data'"),
    ],
)
def test_malformed_records_are_refused(tiny_bundle, tmp_path, field, value, message):
    path = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest[field] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        Bundle(path)
