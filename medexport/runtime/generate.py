"""``medexport generate``: many images from a bundle, in one process or sharded across torchrun ranks.

Image ``i`` of a run takes its label and all of its noise (initial and SDE) from ``(seed, i)`` alone, and images
are sampled in fixed blocks of ``batch`` consecutive indices; rank ``r`` of ``W`` takes blocks ``r, r + W, ...``.
So the result is the same, bit for bit, whatever the number of ranks, and a block's images do not depend on
which rank ran it. Each finished block is written atomically as a shard (``shards/block-000123.npz``); a re-run
with the same settings skips finished blocks, so a killed rank costs only its unfinished ones. The run's record
(``generate.json``) vouches for each finished shard by its sha256: a re-run samples again any shard that does not
match (edited, or copied in from another run), and the gather merges vouched shards only. Rank 0 holds an
exclusive lock on the run folder (``generate.lock``) for the whole run, so a second run into the same folder is
refused while the first one is writing; a rank waits a bounded time for the record's lock (``shards/record.lock``),
and a lock that another process holds is refused with that process named, never waited for without end. When every block is there, rank 0 gathers them into the file the ADM
FID evaluator reads (``samples_NxHxWxC.npz``, uint8 NHWC ``arr_0``; the labels as ``labels``) and writes
``report.json``. A latent model without ``--vae`` gets its latents instead (float32 NCHW ``arr_0``), which need
decoding before any FID.

Under torchrun (``WORLD_SIZE`` > 1) the ranks join a process group (gloo on CPU, nccl on CUDA), check that they
were all given the same settings, and meet at a barrier before the gather.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.files import bytes_sha256, file_sha256, release_lock, replacing, take_lock, write_json
from ..core.request import SampleRequest, image_seed
from ..errors import MedexportError, SamplingError

log = logging.getLogger(__name__)

RUN = "generate.json"
SHARDS = "shards"
LOCK = "generate.lock"  # held by rank 0 for the whole run: one run per folder at a time
RECORD_LOCK = "record.lock"  # in shards/: held by a rank while it adds a finished shard to the record
#: Seconds a rank waits for the record's lock before it says who holds it. The ranks of one run hold it for one
#: small JSON write each; a claim, made before any rank writes, waits only for an earlier run's last write.
RECORD_LOCK_WAIT = 60.0
CLAIM_RECORD_LOCK_WAIT = 3.0
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
    blocks_replaced: int = 0  # shards there that the record did not vouch for (edited, another run's): redone
    images: int = 0
    seconds: float = 0.0  # sampling, without the warm-up
    warmup_seconds: float = 0.0  # opening and first-running every engine, before the first block

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
    return file_sha256(Path(bundle) / "manifest.json")


def _busy_record(path: Path, waited: float) -> Callable[[str], str]:
    return lambda holder: (
        f"{path} has been held for {waited:g} s by {holder}, and this run cannot add its shards "
        f"to the record while it is: if that is a stuck rank of an earlier run, end it, then run "
        f"this command again (the finished shards are kept)"
    )


def _read_record(out: Path) -> dict | None:
    """The run's record in ``out`` (None where there is none); GenerateError for a file that is not one."""
    run_file = out / RUN
    if not run_file.is_file():
        return None
    try:
        record = json.loads(run_file.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        record = e
    if (
        not isinstance(record, dict)
        or record.get("kind") != "medexport-generate"
        or not isinstance(record.get("key"), str)
        or not isinstance(record.get("spec", {}), dict)
        or not isinstance(record.get("shards", {}), dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in record.get("shards", {}).items())
    ):
        what = f"cannot be read ({record})" if isinstance(record, Exception) else "is not a `medexport generate` record"
        raise GenerateError(
            f"{run_file} {what}: it was edited or is not medexport's. Choose another --output, or, "
            f"if {out} is a run of yours to start over, remove the folder (nothing was written)"
        )
    return record


def _open_run(out: Path, spec: GenerateSpec, key: str, dist: Dist) -> int | None:
    """Claim ``out`` for this run, or resume it; GenerateError for another run's folder or a user's folder, or
    while another run holds the folder. Rank 0 returns the descriptor of the run's lock (held until closed).

    Rank 0 decides and every rank learns its verdict, so that no rank waits for one that has given up."""
    lock, error = None, None
    if dist.rank == 0:
        try:
            lock = _claim(out, spec, key)
        except GenerateError as e:
            error = str(e)
    verdict = dist.gather(error)[0]
    if verdict is not None:
        release_lock(lock)
        raise GenerateError(verdict)
    return lock


def _claim(out: Path, spec: GenerateSpec, key: str) -> int:
    """Rank 0's part of :func:`_open_run`: the run's lock once ``out`` is ours (and now marked); GenerateError
    saying why not otherwise."""
    if out.exists() and not out.is_dir():
        raise GenerateError(f"{out} is a file, not a folder: choose another --output")
    if not (out / RUN).is_file() and out.is_dir() and any(p.name not in (SHARDS, LOCK) for p in out.iterdir()):
        raise GenerateError(
            f"{out} exists and is not a `medexport generate` folder: choose an empty or new --output "
            f"(nothing was written)"
        )
    out.mkdir(parents=True, exist_ok=True)
    lock = take_lock(
        out / LOCK,
        error=GenerateError,
        busy=lambda holder: (
            f"another `medexport generate` run is writing into {out} ({holder} holds {out / LOCK}): wait for it to "
            f"finish (then run this command again to check and resume it), or choose another --output"
        ),
    )
    try:
        record_lock = out / SHARDS / RECORD_LOCK
        if (out / SHARDS).is_dir() and (record_lock.exists() or record_lock.is_symlink()):
            # a rank of an earlier run that outlived its rank 0 may still hold it: found now, before any sampling,
            # not after the first shard (its lock is free for the run's own ranks: they start after the claim)
            release_lock(
                take_lock(
                    record_lock,
                    error=GenerateError,
                    wait=CLAIM_RECORD_LOCK_WAIT,
                    busy=_busy_record(record_lock, CLAIM_RECORD_LOCK_WAIT),
                )
            )
        old = _read_record(out)  # read under the lock: no other run changes it now
        if old is not None and old.get("key") != key:
            spec_old = old.get("spec", {})
            diff = sorted(k for k in set(spec_old) | set(asdict(spec)) if spec_old.get(k) != asdict(spec).get(k))
            raise GenerateError(
                f"{out} holds the shards of another run (settings differ: "
                f"{', '.join(diff) or 'the bundle changed'}): resume it with its settings, or choose "
                f"another --output"
            )
        (out / SHARDS).mkdir(parents=True, exist_ok=True)
        if old is None:
            write_json(
                out / RUN, {"kind": "medexport-generate", "key": key, "spec": asdict(spec), "shards": {}}, durable=True
            )
    except BaseException:
        release_lock(lock)
        raise
    return lock


def _vouch(out: Path, key: str, name: str, sha: str) -> None:
    """Add a finished shard's sha256 to the run's record (ranks take turns through the record's lock)."""
    path = out / SHARDS / RECORD_LOCK
    lock = take_lock(path, error=GenerateError, wait=RECORD_LOCK_WAIT, busy=_busy_record(path, RECORD_LOCK_WAIT))
    try:
        record = _read_record(out)
        if record is None or record.get("key") != key:
            raise GenerateError(
                f"{out / RUN} changed while this run was writing (removed, or another run's): choose another --output"
            )
        record.setdefault("shards", {})[name] = sha
        write_json(out / RUN, record)
    finally:
        release_lock(lock)


def _shard(out: Path, block: int) -> Path:
    return out / SHARDS / f"block-{block:06d}.npz"


def _vouched(path: Path, sha: str | None) -> bool:
    """Whether ``path`` is the shard the run's record vouches for (``sha``: its recorded sha256)."""
    return sha is not None and path.is_file() and not path.is_symlink() and file_sha256(path) == sha


def _load_vouched(path: Path, sha: str | None, indices: range) -> dict[str, np.ndarray]:
    """A shard's arrays, read once and checked against its recorded sha256 and its block's indices (a shard
    changed after the check would otherwise slip into the gather); SamplingError when it does not match."""
    data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    if data is None or sha is None or bytes_sha256(data) != sha:
        raise SamplingError(
            f"{path} changed while the run was gathered (it no longer matches the run's record): "
            f"run the same command again to sample it anew"
        )
    with np.load(io.BytesIO(data)) as z:
        arrays = {k: z[k] for k in ("samples", "labels", "index")}
    if list(arrays["index"]) != list(indices) or len(arrays["labels"]) != len(indices):
        raise SamplingError(f"{path} does not hold the images of its block: run the same command again")
    return arrays


def generate(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    spec: GenerateSpec,
    *,
    device: str | None = None,
    threads: int | None = None,
    png: bool = False,
    vae: str | None = None,
    progress=None,
) -> dict | None:
    """Run this process's share of ``spec`` into ``out``; rank 0 returns the report (others None)."""
    from .images import save_images, to_uint8
    from .pipeline import Pipeline

    out = Path(out)
    dist = Dist(device)
    lock = None
    try:
        key = spec.key(_manifest_sha(bundle))
        keys = dist.gather(key)
        if len(set(keys)) > 1:
            raise GenerateError(
                f"the {dist.world} ranks were given different settings or bundles (ranks "
                f"{[i for i, k in enumerate(keys) if k != keys[0]]} differ from rank 0): start "
                f"every rank with the same arguments"
            )
        pipe = Pipeline.from_bundle(bundle, backend=spec.backend, device=dist.device, threads=threads)
        if pipe.data is None and vae is None:
            log.info("a latent model without --vae: the shards and the .npz hold latents, not images")
        lock = _open_run(out, spec, key, dist)
        shards = (_read_record(out) or {}).get("shards", {})
        vae_model = None
        if vae is not None:
            from .vae import load_vae

            vae_model = load_vae(vae)
        classes = pipe.config.num_classes
        sampling = {k: v for k, v in spec.sampling.items() if k != "schedule"}
        report = RankReport(dist.rank)
        mine = range(dist.rank, spec.blocks, dist.world)
        todo = [b for b in mine if not _vouched(_shard(out, b), shards.get(_shard(out, b).name))]
        report.blocks_skipped = len(mine) - len(todo)
        if todo:  # every engine opened at the block size before the first block: no switch pays for a session
            first = spec.indices(todo[0])
            warm = pipe.warmup(SampleRequest([0] * len(first), **sampling))
            report.warmup_seconds = round(sum(warm.values()), 3)
        t0 = time.perf_counter()
        for block in todo:
            idx = spec.indices(block)
            path = _shard(out, block)
            if path.exists() or path.is_symlink():
                log.warning("%s does not match the run's record (edited, or another run's): sampling it again", path)
                report.blocks_replaced += 1
            labels = [label_for(spec.seed, i, classes, spec.labels) for i in idx]
            request = SampleRequest(
                labels,
                image_seeds=[image_seed(spec.seed, i) for i in idx],
                schedule=spec.sampling.get("schedule"),
                **sampling,
            )
            x = pipe.run(request).latents
            if vae_model is not None:
                from .vae import decode

                x = decode(vae_model, x)
            data = to_uint8(x) if (pipe.data is not None or vae_model is not None) else x.numpy()
            if data.ndim == 3:  # grey (B, H, W) -> NHWC with one channel
                data = data[..., None]
            buffer = io.BytesIO()
            np.savez(buffer, samples=data, labels=np.asarray(labels, np.int64), index=np.asarray(list(idx)))
            with replacing(path) as tmp, open(tmp, "wb") as f:
                f.write(buffer.getvalue())
            _vouch(out, key, path.name, bytes_sha256(buffer.getvalue()))
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
        release_lock(lock)
        dist.close()


def _gather(out: Path, spec: GenerateSpec, reports: list[dict], pipe, world: int) -> dict:
    """Rank 0: every shard that the run's record vouches for into one ADM-style .npz (when all are there) and the
    report."""
    shards = (_read_record(out) or {}).get("shards", {})
    missing = [b for b in range(spec.blocks) if not _vouched(_shard(out, b), shards.get(_shard(out, b).name))]
    if missing:
        raise SamplingError(
            f"{len(missing)} blocks are missing or do not match the run's record "
            f"({', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''}): run the same "
            f"command again to finish them"
        )
    first = _load_vouched(_shard(out, 0), shards.get(_shard(out, 0).name), spec.indices(0))
    item_shape, dtype = first["samples"].shape[1:], first["samples"].dtype  # every block has the first one's
    shape = (spec.num, *item_shape)
    name = f"samples_{'x'.join(map(str, shape))}.npz"
    with replacing(out / name) as tmp:
        _write_npz(tmp, spec, out, shape, dtype, shards)
    total = sum(r["seconds"] for r in reports)
    report = {
        "kind": "medexport-generate",
        "spec": asdict(spec),
        "world_size": world,
        "npz": name,
        "images": spec.num,
        "dtype": str(dtype),
        "shape": list(shape),
        "backend": pipe.backend,
        "ranks": reports,
        "images_per_second": round(sum(r["images"] for r in reports) / max(r["seconds"] for r in reports), 3)
        if total
        else None,
    }
    write_json(out / "report.json", report)
    return report


def _write_npz(path: Path, spec: GenerateSpec, out: Path, shape: tuple, dtype, shards: dict[str, str]) -> None:
    """The .npz (``arr_0``: every block's samples in order; ``labels``), streamed block by block into the zip, so
    a 50,000-image set never has to fit in memory twice (or at all)."""
    import zipfile

    labels = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
            )
            for b in range(spec.blocks):
                path = _shard(out, b)
                z = _load_vouched(path, shards.get(path.name), spec.indices(b))
                if z["samples"].shape[1:] != shape[1:]:
                    raise SamplingError(
                        f"{path} holds images of shape {z['samples'].shape[1:]}, the first block "
                        f"{shape[1:]}: run the same command again"
                    )
                f.write(np.ascontiguousarray(z["samples"], dtype=dtype).tobytes())
                labels.append(z["labels"])
        with zf.open("labels.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.concatenate(labels), allow_pickle=False)
