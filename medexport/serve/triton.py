"""``medexport export-triton``: a Triton Inference Server model repository generated from a bundle's manifest.

    REPO/
      README.md                       how to start it and call it
      medexport-triton.json           what was exported (bundle, variant, models): marks the folder as ours
      medexport_m16/config.pbtxt      one model per mediator count, dynamic batching, instance groups
      medexport_m16/1/model.onnx      variant onnx (platform onnxruntime_onnx) or python (+ model.py: ONNX
                                      Runtime inside Triton's python backend); variant tensorrt: model.plan
      medexport_sampler/config.pbtxt  the sampler (python backend, BLS): medexport's sampling loop, calling the
      medexport_sampler/1/model.py    per-count models step by step; schedule, labels, seed, steps, guidance
      medexport_sampler/1/medexport/  are request inputs; medexport's torch-free runtime is copied beside it

Triton's dynamic batcher merges the step calls of concurrent sampler requests into one batch per count. The
repository is written under a temporary name and renamed when complete; a folder that is not an earlier export
is never written into, and an earlier export is replaced only with ``force``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..core.files import replace_folder, write_json, write_text
from ..errors import BackendUnavailableError, MedexportError

MARKER = "medexport-triton.json"
VARIANTS = ("python", "onnx", "tensorrt")
SAMPLER = "medexport_sampler"
#: The torch-free modules the sampler model needs (medexport.lite and what it imports), copied into the repo.
LITE_FILES = ("__init__.py", "version.py", "errors.py", "backend/__init__.py", "backend/batch.py",
              "runtime/__init__.py", "runtime/settings.py", "runtime/schedule.py", "lite/__init__.py")
TEMPLATES = Path(__file__).parent / "triton_models"


class TritonExportError(MedexportError):
    """A model repository that cannot be written as asked."""


def model_name(n: int) -> str:
    return f"medexport_m{n}"


def count_config(n: int, variant: str, shape: tuple[int, int, int], max_batch: int, instances: int,
                 queue_delay_us: int, threads: int) -> str:
    """config.pbtxt of one mediator count's model."""
    C, S, _ = shape
    head = {"python": 'backend: "python"', "onnx": 'platform: "onnxruntime_onnx"',
            "tensorrt": 'platform: "tensorrt_plan"'}[variant]
    kind = "KIND_GPU" if variant == "tensorrt" else "KIND_CPU"
    params = (f'\nparameters: {{ key: "threads" value: {{ string_value: "{threads}" }} }}' if variant == "python"
              else "")
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


def export_triton(bundle_path: str | os.PathLike, out: str | os.PathLike, *, variant: str = "python",
                  force: bool = False, instances: int = 1, sampler_instances: int = 4, queue_delay_us: int = 500,
                  threads: int = 1) -> Path:
    """Write the model repository for ``bundle_path`` into ``out``; returns ``out``."""
    from ..bundle import open_bundle

    if variant not in VARIANTS:
        raise TritonExportError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    out = Path(out)
    _check_output(out, force)
    bundle = open_bundle(bundle_path)
    backend = "tensorrt" if variant == "tensorrt" else "onnxruntime"
    for n in bundle.counts:
        if backend not in bundle.backends(n):
            raise BackendUnavailableError(f"variant {variant} needs {backend} engines; bundle {bundle_path} has "
                                          f"{', '.join(bundle.backends(n))} for {n} mediators: rebuild it with "
                                          f"--backend {backend}, or choose another --variant")
    cfg = bundle.config(bundle.counts[0])
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    tmp = Path(str(out) + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        models = {}
        for n in bundle.counts:
            engine = bundle.engine(n, backend)
            engine.check(bundle.path)
            version = tmp / model_name(n) / "1"
            version.mkdir(parents=True)
            name = "model.plan" if variant == "tensorrt" else "model.onnx"
            for i, f in enumerate(engine.files):  # the graph, then its external data under its own name
                shutil.copyfile(bundle.path / f, version / (name if i == 0 else f))
            if variant == "python":
                shutil.copyfile(TEMPLATES / "count_model.py", version / "model.py")
            batch = engine.batch
            max_batch = batch.max if batch else 64
            write_text(tmp / model_name(n) / "config.pbtxt",
                       count_config(n, variant, shape, max_batch, instances, queue_delay_us, threads))
            models[str(n)] = {"model": model_name(n), "batch": str(batch) if batch else f"1:1:{max_batch}"}
        version = tmp / SAMPLER / "1"
        version.mkdir(parents=True)
        shutil.copyfile(TEMPLATES / "sampler_model.py", version / "model.py")
        package = Path(__file__).resolve().parents[1]
        for rel in LITE_FILES:
            dst = version / "medexport" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(package / rel, dst)
        write_json(version / "sampler.json", {"models": models, "config": cfg.to_dict(),
                                              "sampling": bundle.manifest.get("sampling"), "data": bundle.data})
        write_text(tmp / SAMPLER / "config.pbtxt", sampler_config(shape, sampler_instances))
        write_text(tmp / "README.md", _readme(bundle_path, variant, bundle.counts, shape))
        write_json(tmp / MARKER, {"kind": "medexport-triton", "bundle": str(Path(bundle_path).resolve()),
                                  "variant": variant, "models": [model_name(n) for n in bundle.counts] + [SAMPLER]})
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TritonExportError(f"{out} is a file, not a folder: choose another --output")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise TritonExportError(f"{out} is not empty and not a medexport Triton repository: choose an empty or "
                                    f"new --output (nothing was written or deleted)")
        if not force:
            raise TritonExportError(f"{out} holds an earlier export: add --force to replace it")


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

Optional inputs: `steps` (INT32), `cfg_scale` (FP32), `schedule`, `sampler`, `method` (BYTES, e.g.
"16:0.3,32:0.7,64"), `noise` (FP32, the initial state). Left out, the bundle's recommended settings apply.
"""
