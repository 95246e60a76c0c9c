"""``medexport generate``: many images from a bundle, in one process or sharded across torchrun ranks.

Image ``i`` of a run takes its label and all of its noise (initial and SDE) from ``(seed, i)`` alone, and images
are sampled in fixed blocks of ``batch`` consecutive indices; rank ``r`` of ``W`` takes blocks ``r, r + W, ...``.
So the result is the same, bit for bit, whatever the number of ranks, and a block's images do not depend on
which rank ran it. Each finished block is written atomically as a shard (``shards/block-000123.npz``); a re-run
with the same settings skips finished blocks, so a killed rank costs only its unfinished ones. When every block
is there, rank 0 gathers them into the file the ADM FID evaluator reads (``samples_NxHxWxC.npz``, uint8 NHWC
``arr_0``; the labels as ``labels``) and writes ``report.json``. A latent model without ``--vae`` gets its
latents instead (float32 NCHW ``arr_0``), which need decoding before any FID.

Under torchrun (``WORLD_SIZE`` > 1) the ranks join a process group (gloo on CPU, nccl on CUDA), check that they
were all given the same settings, and meet at a barrier before the gather.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.files import replacing, write_json
from ..errors import MedexportError, SamplingError
from ..core.request import SampleRequest, image_seed

log = logging.getLogger(__name__)

RUN = "generate.json"
SHARDS = "shards"
LABEL_STREAM = 3  # image_seed stream of the labels (0-2: the image's noise)


class GenerateError(MedexportError):
    """A generation run that cannot go on as asked (another run's folder, ranks that disagree)."""


@dataclass(frozen=True)
class GenerateSpec:
    """What a run produces: everything that decides its images. Two runs with equal specs write equal files."""

    bundle: str  # the bundle's manifest hash stands for its engines (see key())
    num: int
    seed: int = 0
    batch: int = 32
    labels: str = "random"  # "random" (uniform, as DiT's sample_ddp) or "per-class" (index mod classes)
    sampling: dict = field(default_factory=dict)  # SamplingSettings.to_dict() of the chosen settings
    backend: str = "auto"
    precision: str = ""

    def __post_init__(self) -> None:
        if self.num < 1 or self.batch < 1:
            raise GenerateError("--num and --batch must be at least 1")
        if self.labels not in ("random", "per-class"):
            raise GenerateError(f"--labels must be random or per-class, got {self.labels!r}")

    def key(self, manifest_sha: str) -> str:
        from ..bundle.settings import content_key

        return content_key(asdict(self) | {"bundle": None}, manifest_sha)

    @property
    def blocks(self) -> int:
        return -(-self.num // self.batch)

    def indices(self, block: int) -> range:
        return range(block * self.batch, min(self.num, (block + 1) * self.batch))


@dataclass
class RankReport:
    rank: int
    blocks_done: int = 0
    blocks_skipped: int = 0
    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def label_for(seed: int, index: int, classes: int, mode: str) -> int:
    if mode == "per-class":
        return index % classes
    return image_seed(seed, index, LABEL_STREAM) % classes


class Dist:
    """This process's place in a torchrun job (a single process when WORLD_SIZE is unset or 1)."""

    def __init__(self, device: str | None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        self.device = device or ("cuda" if cuda else "cpu")
        if cuda and self.world > 1 and self.device == "cuda":
            self.device = f"cuda:{self.local_rank}"
        self.group = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if cuda else "gloo")
            self.group = True

    def gather(self, obj) -> list:
        if not self.group:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.group:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _manifest_sha(bundle: Path) -> str:
    from ..core.files import file_sha256

    return file_sha256(Path(bundle) / "manifest.json")


def _open_run(out: Path, spec: GenerateSpec, key: str, dist: Dist) -> None:
    """Claim ``out`` for this run, or resume it; GenerateError for another run's folder or a user's folder.

    Rank 0 decides and every rank learns its verdict, so that no rank waits for one that has given up."""
    error = _claim(out, spec, key) if dist.rank == 0 else None
    verdict = dist.gather(error)[0]
    if verdict is not None:
        raise GenerateError(verdict)


def _claim(out: Path, spec: GenerateSpec, key: str) -> str | None:
    """Rank 0's part of :func:`_open_run`: None when ``out`` is ours (and now marked), else why not."""
    run_file = out / RUN
    if out.exists() and not out.is_dir():
        return f"{out} is a file, not a folder: choose another --output"
    if run_file.is_file():
        try:
            old = json.loads(run_file.read_text())
        except ValueError:
            old = {}
        if old.get("key") != key:
            diff = sorted(k for k in set(old.get("spec", {})) | set(asdict(spec))
                          if old.get("spec", {}).get(k) != asdict(spec).get(k))
            return (f"{out} holds the shards of another run (settings differ: {', '.join(diff) or 'the bundle changed'}"
                    f"): resume it with its settings, or choose another --output")
    elif out.is_dir() and any(p.name != SHARDS for p in out.iterdir()):
        return (f"{out} exists and is not a `medexport generate` folder: choose an empty or new --output "
                f"(nothing was written)")
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"kind": "medexport-generate", "key": key, "spec": asdict(spec)}, durable=True)
    return None


def _shard(out: Path, block: int) -> Path:
    return out / SHARDS / f"block-{block:06d}.npz"


def _shard_ok(path: Path, indices: range) -> bool:
    try:
        with np.load(path) as z:
            return list(z["index"]) == list(indices)
    except (OSError, ValueError, KeyError):
        return False


def generate(bundle: str | os.PathLike, out: str | os.PathLike, spec: GenerateSpec, *, device: str | None = None,
             threads: int | None = None, png: bool = False, vae: str | None = None, progress=None) -> dict | None:
    """Run this process's share of ``spec`` into ``out``; rank 0 returns the report (others None)."""
    from .images import save_images, to_uint8
    from .pipeline import Pipeline

    out = Path(out)
    dist = Dist(device)
    try:
        key = spec.key(_manifest_sha(bundle))
        keys = dist.gather(key)
        if len(set(keys)) > 1:
            raise GenerateError(f"the {dist.world} ranks were given different settings or bundles (ranks "
                                f"{[i for i, k in enumerate(keys) if k != keys[0]]} differ from rank 0): start "
                                f"every rank with the same arguments")
        pipe = Pipeline.from_bundle(bundle, backend=spec.backend, device=dist.device, threads=threads)
        if pipe.data is None and vae is None:
            log.info("a latent model without --vae: the shards and the .npz hold latents, not images")
        _open_run(out, spec, key, dist)
        vae_model = None
        if vae is not None:
            from .vae import load_vae

            vae_model = load_vae(vae)
        classes = pipe.config.num_classes
        sampling = {k: v for k, v in spec.sampling.items() if k != "schedule"}
        report = RankReport(dist.rank)
        t0 = time.perf_counter()
        for block in range(dist.rank, spec.blocks, dist.world):
            idx = spec.indices(block)
            path = _shard(out, block)
            if _shard_ok(path, idx):
                report.blocks_skipped += 1
                continue
            labels = [label_for(spec.seed, i, classes, spec.labels) for i in idx]
            request = SampleRequest(labels, image_seeds=[image_seed(spec.seed, i) for i in idx],
                                    schedule=spec.sampling.get("schedule"), **sampling)
            x = pipe.run(request).latents
            if vae_model is not None:
                from .vae import decode

                x = decode(vae_model, x)
            data = to_uint8(x) if (pipe.data is not None or vae_model is not None) else x.numpy()
            if data.ndim == 3:  # grey (B, H, W) -> NHWC with one channel
                data = data[..., None]
            with replacing(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, samples=data, labels=np.asarray(labels, np.int64), index=np.asarray(list(idx)))
            if png and data.dtype == np.uint8:
                save_images(x, out / "images" / f"block-{block:06d}")
            report.blocks_done += 1
            report.images += len(idx)
            if progress is not None:
                progress(len(idx))
        report.seconds = time.perf_counter() - t0
        reports = dist.gather(asdict(report) | {"images_per_second": report.images_per_second})
        dist.barrier()
        if dist.rank != 0:
            return None
        return _gather(out, spec, reports, pipe, dist.world)
    finally:
        dist.close()


def _gather(out: Path, spec: GenerateSpec, reports: list[dict], pipe, world: int) -> dict:
    """Rank 0: every shard into one ADM-style .npz (when all are there) and the report."""
    missing = [b for b in range(spec.blocks) if not _shard_ok(_shard(out, b), spec.indices(b))]
    if missing:
        raise SamplingError(f"{len(missing)} blocks are missing ({missing[:5]}...): run the same command again to "
                            f"finish them")
    with np.load(_shard(out, 0)) as z:  # every block has the first one's image shape and dtype
        item_shape, dtype = z["samples"].shape[1:], z["samples"].dtype
    shape = (spec.num, *item_shape)
    name = f"samples_{'x'.join(map(str, shape))}.npz"
    with replacing(out / name) as tmp:
        _write_npz(tmp, spec, out, shape, dtype)
    total = sum(r["seconds"] for r in reports)
    report = {"kind": "medexport-generate", "spec": asdict(spec), "world_size": world, "npz": name,
              "images": spec.num, "dtype": str(dtype), "shape": list(shape), "backend": pipe.backend,
              "ranks": reports,
              "images_per_second": round(sum(r["images"] for r in reports) / max(r["seconds"] for r in reports), 3)
              if total else None}
    write_json(out / "report.json", report)
    return report


def _write_npz(path: Path, spec: GenerateSpec, out: Path, shape: tuple, dtype) -> None:
    """The .npz (``arr_0``: every block's samples in order; ``labels``), streamed block by block into the zip, so
    a 50,000-image set never has to fit in memory twice (or at all)."""
    import zipfile

    labels = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                     "fortran_order": False, "shape": shape})
            for b in range(spec.blocks):
                with np.load(_shard(out, b)) as z:
                    f.write(np.ascontiguousarray(z["samples"], dtype=dtype).tobytes())
                    labels.append(z["labels"])
        with zf.open("labels.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.concatenate(labels), allow_pickle=False)
