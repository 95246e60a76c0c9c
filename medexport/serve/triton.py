"""``medexport export-triton``: a Triton Inference Server model repository generated from a bundle's manifest.

    REPO/
      README.md                       how to start it and call it
      medexport-triton.json           what was exported (bundle, variant, models): marks the folder as ours
      medexport_m16/config.pbtxt      one model per mediator count, dynamic batching, instance groups
      medexport_m16/1/model.onnx      how it is served is its backend's variant (``backend/<name>/``): onnx
                                      (platform onnxruntime_onnx), python (+ model.py: ONNX Runtime inside
                                      Triton's python backend), tensorrt (model.plan), ...
      medexport_sampler/config.pbtxt  the sampler (python backend, BLS): medexport's sampling core, calling the
      medexport_sampler/1/model.py    per-count models step by step; a SampleRequest's fields are its inputs
      medexport_sampler/1/medexport/  medexport's torch-free packages (core, lite), copied beside it

Triton's dynamic batcher merges the step calls of concurrent sampler requests into one batch per count. The
repository is written under a temporary name and renamed when complete; a folder that is not an earlier export
is never written into, and an earlier export is replaced only with ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..backend import registry
from ..backend.registry import TritonVariant
from ..core.files import check_output_folder, partial_folder, replace_folder, write_json, write_text
from ..errors import BackendUnavailableError, MedexportError

MARKER = "medexport-triton.json"
SAMPLER = "medexport_sampler"
#: The torch-free packages the sampler model runs (the sampling core and its numpy runtime), copied whole, and
#: the root modules they import.
RUNTIME_PACKAGES = ("core", "lite")
RUNTIME_MODULES = ("__init__.py", "version.py", "errors.py")
TEMPLATES = Path(__file__).parent / "triton_models"


def variants() -> dict[str, tuple]:
    """Every variant a backend offers: name -> (backend, :class:`TritonVariant`)."""
    return registry.triton_variants()


class TritonExportError(MedexportError):
    """A model repository that cannot be written as asked."""


def model_name(n: int) -> str:
    return f"medexport_m{n}"


def count_config(
    n: int,
    variant: str | TritonVariant,
    shape: tuple[int, int, int],
    max_batch: int,
    instances: int,
    queue_delay_us: int,
    threads: int,
) -> str:
    """config.pbtxt of one mediator count's model, served as ``variant`` (its name or the object)."""
    C, S, _ = shape
    tv = variant if isinstance(variant, TritonVariant) else _variant(variant)[1]
    head, kind = tv.header, tv.kind
    params = (
        f'\nparameters: {{ key: "threads" value: {{ string_value: "{threads}" }} }}' if tv.threads_parameter else ""
    )
    # t and y are (B,) in the engine: one element per batch item, reshaped away on the model side.
    return f'''name: "{model_name(n)}"
{head}
max_batch_size: {max_batch}
input [
  {{ name: "x" data_type: TYPE_FP32 dims: [ {C}, {S}, {S} ] }},
  {{ name: "t" data_type: TYPE_FP32 dims: [ 1 ] reshape: {{ shape: [ ] }} }},
  {{ name: "y" data_type: TYPE_INT64 dims: [ 1 ] reshape: {{ shape: [ ] }} }}
]
output [
  {{ name: "v" data_type: TYPE_FP32 dims: [ {C}, {S}, {S} ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}
instance_group [ {{ count: {instances} kind: {kind} }} ]{params}
'''


def sampler_config(shape: tuple[int, int, int], instances: int) -> str:
    C, S, _ = shape
    optional = "optional: true"
    return f'''name: "{SAMPLER}"
backend: "python"
max_batch_size: 0
input [
  {{ name: "labels" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "seed" data_type: TYPE_INT64 dims: [ 1 ] {optional} }},
  {{ name: "image_seeds" data_type: TYPE_INT64 dims: [ -1 ] {optional} }},
  {{ name: "cfg_channels" data_type: TYPE_STRING dims: [ 1 ] {optional} }},
  {{ name: "steps" data_type: TYPE_INT32 dims: [ 1 ] {optional} }},
  {{ name: "cfg_scale" data_type: TYPE_FP32 dims: [ 1 ] {optional} }},
  {{ name: "schedule" data_type: TYPE_STRING dims: [ 1 ] {optional} }},
  {{ name: "sampler" data_type: TYPE_STRING dims: [ 1 ] {optional} }},
  {{ name: "method" data_type: TYPE_STRING dims: [ 1 ] {optional} }},
  {{ name: "noise" data_type: TYPE_FP32 dims: [ -1, {C}, {S}, {S} ] {optional} }}
]
output [
  {{ name: "samples" data_type: TYPE_FP32 dims: [ -1, {C}, {S}, {S} ] }}
]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
'''


def export_triton(
    bundle_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    variant: str = "python",
    force: bool = False,
    instances: int = 1,
    sampler_instances: int = 4,
    queue_delay_us: int = 500,
    threads: int = 1,
) -> Path:
    """Write the model repository for ``bundle_path`` into ``out``; returns ``out``."""
    from ..bundle import open_bundle

    engine_backend, tv = _variant(variant)
    out = Path(out)
    _check_output(out, force)
    bundle = open_bundle(bundle_path)
    backend = engine_backend.name
    for n in bundle.counts:
        if backend not in bundle.backends(n):
            raise BackendUnavailableError(
                f"variant {variant} needs {backend} engines; bundle {bundle_path} has "
                f"{', '.join(bundle.backends(n))} for {n} mediators: rebuild it with "
                f"--backend {backend}, or choose another --variant"
            )
    cfg = bundle.config(bundle.counts[0])
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    tmp = partial_folder(out, TritonExportError)
    try:
        models = {}
        for n in bundle.counts:
            engine = bundle.engine(n, backend)
            engine.check(bundle.path)
            version = tmp / model_name(n) / "1"
            version.mkdir(parents=True)
            for i, f in enumerate(engine.files):  # the engine, then its other files under their own names
                shutil.copyfile(bundle.path / f, version / (tv.model_file if i == 0 else f))
            if tv.python_model is not None:
                shutil.copyfile(tv.python_model, version / "model.py")
            batch = engine.batch
            max_batch = batch.max if batch else 64
            write_text(
                tmp / model_name(n) / "config.pbtxt",
                count_config(n, tv, shape, max_batch, instances, queue_delay_us, threads),
            )
            models[str(n)] = {"model": model_name(n), "batch": str(batch) if batch else f"1:1:{max_batch}"}
        version = tmp / SAMPLER / "1"
        version.mkdir(parents=True)
        shutil.copyfile(TEMPLATES / "sampler_model.py", version / "model.py")
        package = Path(__file__).resolve().parents[1]
        for name in RUNTIME_PACKAGES:
            shutil.copytree(
                package / name, version / "medexport" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        for name in RUNTIME_MODULES:
            shutil.copyfile(package / name, version / "medexport" / name)
        write_json(
            version / "sampler.json",
            {
                "models": models,
                "config": cfg.to_dict(),
                "backend": backend,
                "sampling": bundle.sampling.to_dict(),
                "data": bundle.data,
            },
        )
        write_text(tmp / SAMPLER / "config.pbtxt", sampler_config(shape, sampler_instances))
        write_text(tmp / "README.md", _readme(bundle_path, variant, bundle.counts, shape))
        write_json(
            tmp / MARKER,
            {
                "kind": "medexport-triton",
                "bundle": str(Path(bundle_path).resolve()),
                "variant": variant,
                "models": [model_name(n) for n in bundle.counts] + [SAMPLER],
            },
        )
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def variant_names() -> list[str]:
    return sorted(variants())


def _variant(name: str) -> tuple:
    known = variants()
    if name not in known:
        raise TritonExportError(f"unknown variant {name!r}: choose one of {', '.join(sorted(known))}")
    return known[name]


def _check_output(out: Path, force: bool) -> None:
    check_output_folder(
        out, marker=MARKER, force=force, kind="a medexport Triton repository", error=TritonExportError, written=_written
    )


def _written(out: Path) -> set[str]:
    """What an earlier export wrote into ``out``: its models (the marker names them) and its README."""
    try:
        return {*json.loads((out / MARKER).read_text()).get("models", []), "README.md"}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def _readme(bundle, variant: str, counts: list[int], shape: tuple[int, int, int]) -> str:
    models = ", ".join(model_name(n) for n in counts)
    return f"""# Triton model repository for {Path(bundle).name}

Generated by `medexport export-triton` (variant `{variant}`). Models: {models} (one per mediator count,
dynamic batching) and `{SAMPLER}` (python backend: the sampling loop, calling the per-count models each step).

Start it (Triton's container, or any tritonserver with the python backend; the python models need numpy and
onnxruntime in the backend's Python):

    tritonserver --model-repository <this folder>

Call it (tritonclient):

    import numpy as np, tritonclient.http as http
    client = http.InferenceServerClient("127.0.0.1:8000")
    labels = http.InferInput("labels", [3], "INT64"); labels.set_data_from_numpy(np.array([0, 1, 2]))
    seed = http.InferInput("seed", [1], "INT64"); seed.set_data_from_numpy(np.array([0]))
    samples = client.infer("{SAMPLER}", [labels, seed]).as_numpy("samples")   # (3, {shape[0]}, {shape[1]}, {shape[2]})

Optional inputs: `seed` or `image_seeds` (INT64, one per label), `steps` (INT32), `cfg_scale` (FP32),
`schedule`, `sampler`, `method`, `cfg_channels` (BYTES, e.g. "16:0.3,32:0.7,64"), `noise` (FP32, the initial
state). Left out, the bundle's recommended settings apply. The same request gives the same images as
`medexport sample` and `medexport.Pipeline` (one sampling core).
"""
