"""``medexport build``: export each mediator count to ONNX, compile engines, record it all in the manifest.

Every artifact is keyed by what it was made from (checkpoint hash or random-model recipe, precision, opset,
tool versions, hardware, batch range): a rebuild redoes exactly what changed, never trusting a file because
its name exists; ``force`` redoes everything.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch  # first: a missing build extra is reported by its main package

# isort: split
import onnx

from ..backend import registry
from ..backend.registry import BuildInputs
from ..core.artifact import Artifact
from ..core.config import FULL, count_stem
from ..core.files import file_sha256
from ..core.manifest import CountEntry, Manifest
from ..errors import BundleError, CheckpointError, ConfigError
from ..export import ExportSpec, export_onnx
from ..model import (
    CheckpointInfo,
    MediatorDiT,
    ModelConfig,
    config_from_name,
    create_model,
    load_checkpoint,
    read_checkpoint,
)
from ..model.checkpoint import check_attention
from ..quant import SOURCE_PRECISION, quantization
from ..version import __version__
from .manifest import FORMAT, MANIFEST, now, write_json_atomic
from .settings import BuildSettings, ModelSource, content_key, source_key

log = logging.getLogger(__name__)

#: Bump when the export code changes what it writes, so old ONNX files are re-exported.
EXPORT_REVISION = 2


def resolve_backend(requested: str, precision: str | None = None) -> tuple[str, str]:
    """(backend name, why) for a build's --backend ("auto" or a name); BackendUnavailableError when it cannot
    build here (``precision`` included)."""
    backend, why = registry.resolve(requested, precision)
    return backend.name, why


@dataclass
class CountReport:
    mediators: int
    exported: bool = False
    engines_built: list[str] = field(default_factory=list)
    engines_kept: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class BuildReport:
    path: Path
    backend: str
    backend_reason: str
    counts: list[CountReport]
    random_weights: bool


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------
def _source_config(src: ModelSource) -> tuple[ModelConfig, str, CheckpointInfo | None]:
    """(config, source hash, checkpoint info or None for random weights) without building a model."""
    if src.is_random:
        cfg = config_from_name(src.model_name, mediators=src.mediators, image_size=src.image_size)
        return cfg, source_key(src.record()), None
    _, info = read_checkpoint(src.checkpoint, weights=src.weights)
    check_attention(info, "full" if src.mediators == FULL else "mediator", src.mediators)
    if src.expect_image_size is not None:
        _check_resolution(info, src.expect_image_size)
    return info.config, file_sha256(src.checkpoint), info


def _check_resolution(info: CheckpointInfo, image_size: int) -> None:
    """Refuse an image size the checkpoint was not trained for: its position embedding fixes the token grid."""
    cfg = info.config
    trained = cfg.input_size if info.data else cfg.image_size  # pixel-space demo models have no VAE
    if trained != image_size:
        grid = f"{cfg.grid_size}x{cfg.grid_size} tokens" + (
            "" if info.data else f", {cfg.input_size}x{cfg.input_size} latents"
        )
        raise ConfigError(
            f"{info.path} was trained at {trained}x{trained} ({grid}), not {image_size}x{image_size}: "
            f"its position embedding fixes the resolution. Drop --image-size, or give a checkpoint "
            f"fine-tuned to {image_size} (the reference fine-tunes with train_256to512.py and "
            f"train_512to1024.py)"
        )


def source_records(configs: dict[int, tuple]) -> tuple[dict | None, dict | None]:
    """(data, sampling) that the sources' files record; the counts must agree on what they generate."""
    infos = {n: c[2] for n, c in configs.items()}
    datas = {n: (i.data if i else None) for n, i in infos.items()}
    first_n = min(datas)
    for n, d in datas.items():
        if d != datas[first_n]:
            raise ConfigError(
                f"the models for {first_n} and {n} mediators generate different things "
                f"({datas[first_n] and datas[first_n].get('dataset') or 'latents'} vs "
                f"{d and d.get('dataset') or 'latents'}): they do not belong in one bundle"
            )
    sampling = next((i.sampling for n, i in sorted(infos.items(), reverse=True) if i and i.sampling), None)
    return datas[first_n], sampling


def check_sources(sources: list[ModelSource]) -> dict[int, tuple[ModelConfig, str, CheckpointInfo | None]]:
    """Configs, hashes and checkpoint infos per count; refuses duplicate counts, mismatched counts and
    disagreeing models."""
    if not sources:
        raise ConfigError("nothing to build: give --checkpoint N=PATH or --mediators with --model")
    seen = [s.mediators for s in sources]
    if FULL in seen and len(seen) > 1:
        raise ConfigError(
            f"a full-attention (vanilla) model and mediator counts "
            f"({', '.join(str(n) for n in seen if n != FULL)}) cannot share a bundle: a schedule "
            f"switches between mediator counts of one model. Build the vanilla twin into a bundle of "
            f"its own (--attention full, without --mediators) and compare them with "
            f"`medexport bench BUNDLE --against VANILLA_BUNDLE`"
        )
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise ConfigError(f"mediator count {', '.join(map(str, dup))} given more than once: one checkpoint per count")
    out = {}
    for src in sources:
        cfg, key, info = _source_config(src)
        if cfg.mediators != src.mediators:
            raise CheckpointError(
                f"{src.checkpoint} holds a {cfg.mediators}-mediator model, not {src.mediators}: "
                f"write --checkpoint {cfg.mediators}={src.checkpoint}"
            )
        out[src.mediators] = (cfg, key, info)
    first_n, (first, _, _) = next(iter(out.items()))
    shared = shared_model_dict(first)
    for n, (cfg, _, _) in out.items():
        diff = [f"{f} {v} vs {w}" for (f, v), w in zip(shared.items(), shared_model_dict(cfg).values()) if v != w]
        if diff:
            raise ConfigError(
                f"the models for {first_n} and {n} mediators do not belong in one bundle: "
                f"{'; '.join(diff)}. A bundle holds one architecture at one latent size."
            )
    return out


def _load_model(src: ModelSource) -> MediatorDiT:
    if src.is_random:
        return create_model(
            src.model_name, mediators=src.mediators, image_size=src.image_size, seed=src.seed, init="random"
        )
    return load_checkpoint(src.checkpoint, weights=src.weights)


def shared_model_dict(cfg: ModelConfig) -> dict:
    """What every count of one bundle shares: the config without the mediator count and grid."""
    d = cfg.to_dict()
    for k in ("mediators", "mediator_grid"):
        d.pop(k)
    return d


# ---------------------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------------------
LOCK = ".build.lock"


@contextmanager
def _exclusive(out: Path):
    """Hold the bundle's build lock: two builds writing one bundle would interleave their manifests."""
    from ..core.files import locked_folder

    with locked_folder(  # refused before anything was written: no empty bundle folder is left behind
        out,
        LOCK,
        error=BundleError,
        busy=lambda holder: (
            f"another medexport build is writing {out} ({holder} holds {out / LOCK}): wait for it to finish"
        ),
        fix="remove it, then run the command again",
    ):
        yield


def _check_output(out: Path) -> None:
    """Refuse an output that is a file or a folder of something else, before writing anything into it."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} is a file, not a bundle folder: choose another --output")
    if out.is_dir():
        links = sorted(p.name for p in out.iterdir() if p.is_symlink())
        if links:  # a write through one would land outside the bundle
            raise BundleError(
                f"{out} holds symbolic links ({', '.join(links[:5])}): a bundle holds only its own "
                f"files. Remove the links or choose another --output (nothing was written)"
            )
    if out.is_dir() and not (out / MANIFEST).exists():
        # Without a manifest, only an empty folder or one an earlier build of ours started (its lock file is the
        # first thing a build writes) is ours to write into.
        contents = [p.name for p in out.iterdir()]
        if contents and (
            LOCK not in contents
            or any(
                n != LOCK and not n.endswith(".partial") and not n.startswith(("mediators-", "full-attention"))
                for n in contents
            )
        ):
            raise BundleError(
                f"{out} exists and is not an engine bundle: choose another --output (nothing was written)"
            )
    elif out.is_dir():
        try:
            data = json.loads((out / MANIFEST).read_text())
            ours = isinstance(data, dict) and data.get("format") == FORMAT
        except (OSError, ValueError):
            ours = (out / LOCK).exists()  # unreadable: ours only if a build of ours has worked here (then damaged)
        if not ours:  # someone else's manifest.json: --force must not take their folder for a bundle
            raise BundleError(
                f"{out} holds a {MANIFEST} that medexport did not write: choose another --output (nothing was written)"
            )


def _open_manifest(
    out: Path,
    model: dict,
    settings: BuildSettings,
    requested: list[int],
    force: bool,
    data: dict | None,
    sampling: dict | None,
) -> Manifest:
    """The manifest this build starts from: the bundle's, with this build's settings and counts added (what it
    keeps checked against what the build is of), or a new one."""
    fresh = Manifest.new(model, settings.to_dict(), requested, data, sampling)
    if not (out / MANIFEST).exists():
        return fresh
    try:
        old = Manifest.read(out)
    except BundleError:
        if not force:
            raise
        log.warning("replacing the unreadable manifest of %s (--force)", out)
        return fresh
    if force:
        if old.model == model and old.data == data:
            # until each count is redone, its intact engines stay in the bundle (an interrupted --force loses none)
            return replace(fresh, counts={n: e for n, e in old.counts.items() if n in requested})
        return fresh
    if old.model != model and old.model.get("attention") != model.get("attention"):
        kinds = {"full": "a vanilla (full-attention) bundle", None: "a mediator bundle"}
        raise BundleError(
            f"{out} holds {kinds.get(old.model.get('attention'))}, and this build is of "
            f"{kinds.get(model.get('attention'))}: a mediator bundle and its vanilla twin are two "
            f"bundles. Choose another --output (or --force to replace it)"
        )
    if old.model != model:
        raise BundleError(
            f"{out} holds a bundle of another model ({old.model.get('depth')} blocks, width "
            f"{old.model.get('hidden_size')}, latent {old.model.get('input_size')}): choose "
            f"another --output, or --force to replace it"
        )
    if old.data != data:
        raise BundleError(
            f"{out} holds a bundle of a model that generates other things: choose another --output, "
            f"or --force to replace it"
        )
    kept = sorted(set(old.counts) - set(requested))
    if old.build.get("precision") != settings.precision and kept:
        raise BundleError(
            f"{out} holds {old.build.get('precision')} engines; rebuilding only "
            f"{', '.join(map(str, requested))} mediators in {settings.precision} would leave "
            f"{', '.join(map(str, kept))} in the old precision. Rebuild every count "
            f"(--mediators {','.join(map(str, sorted(set(requested) | set(kept))))}), use --force, or "
            f"choose another --output"
        )
    recorded = sampling is not None or not old.raw.get("sampling")
    return replace(
        old,
        build=settings.to_dict(),
        requested=tuple(sorted(set(old.requested) | set(requested))),
        sampling=fresh.sampling if recorded else old.sampling,
    )


def _fit_sampling(manifest: Manifest) -> Manifest:
    """Drop a recorded default schedule that names counts the bundle is not built for (``--mediators 16`` of
    a three-count model)."""
    from ..core.schedule_text import parse_schedule

    text = manifest.sampling.schedule
    if not text:
        return manifest
    needed = set(parse_schedule(text).counts)
    have = set(manifest.requested)
    if needed <= have:
        return manifest
    log.info(
        "the recommended schedule %s needs %s mediators, which this bundle lacks: recording none (the "
        "largest count alone)",
        text,
        sorted(needed - have),
    )
    return replace(manifest, sampling=replace(manifest.sampling, schedule=None))


def _entry_files(entry: CountEntry) -> set[str]:
    """Every file a count's manifest entry names (the ONNX graph, its external data, the engines)."""
    return {f for a in [entry.onnx, *entry.engines.values()] for f in a.files}


def _live_files(out: Path) -> dict[int, set[str]]:
    """{count: files} that the bundle's current manifest vouches for (empty for a new or unreadable one)."""
    try:
        manifest = Manifest.read(out)
    except BundleError:
        return {}
    return {n: _entry_files(e) for n, e in manifest.counts.items()}


def _free_name(stem: str, suffix: str, live: set[str]) -> str:
    """``stem + suffix``, or an alternate name while the manifest still vouches for that one: a rebuild writes
    beside the good file and the manifest switches to the new one atomically, so a killed rebuild loses nothing."""
    for name in (stem + suffix, f"{stem}.next{suffix}"):
        if not {name, name + ".data"} & live:
            return name
    return stem + suffix  # both vouched for: only a hand-edited manifest does that


def build_bundle(
    sources: list[ModelSource],
    out: str | Path,
    settings: BuildSettings = BuildSettings(),
    *,
    force: bool = False,
    show_progress: bool = True,
) -> BuildReport:
    """Build (or bring up to date) the bundle in ``out`` for ``sources``, one per mediator count."""
    out = Path(out)
    if settings.onnx_only:
        backend, why = None, "--onnx-only: graphs only, no engines"
    else:
        backend, why = resolve_backend(settings.backend, settings.precision)
    log.info("backend: %s (%s)", backend, why)
    configs = check_sources(sources)
    calibration = _calibration_data(settings, configs)  # checked before anything is written
    data, sampling = source_records(configs)
    random_weights = any(s.is_random for s in sources)
    if random_weights:
        log.warning(
            "RANDOM WEIGHTS: %s is built from randomly initialised models; its outputs are noise. Use "
            "--checkpoint N=PATH for trained models.",
            out,
        )
    first_cfg = next(iter(configs.values()))[0]
    _check_output(out)
    spec = ExportSpec(opset=settings.opset)
    if not force:
        kept = _already_built(out, sources, configs, settings, spec, backend, data, sampling, calibration)
        if kept is not None:
            log.info("%s is up to date: nothing to build", out)
            return BuildReport(out, backend, why, kept, random_weights)
    with _exclusive(out):
        live = _live_files(out)  # what the manifest on disk vouches for: never overwritten in place
        manifest = _fit_sampling(
            _open_manifest(
                out, shared_model_dict(first_cfg), settings, [s.mediators for s in sources], force, data, sampling
            )
        )
        reports = []
        progress = _progress() if show_progress else None
        with progress or nullcontext():
            task = progress.add_task("building", total=len(sources)) if progress is not None else None
            for src in sorted(sources, key=lambda s: s.mediators):
                n = src.mediators
                if progress is not None:
                    progress.update(task, description=f"{n} mediators")
                cfg, source_hash, _ = configs[n]
                t0 = time.perf_counter()
                report = CountReport(n)
                old = None if force else manifest.counts.get(n)
                entry = _build_count(
                    out,
                    src,
                    cfg,
                    source_hash,
                    old,
                    settings,
                    spec,
                    backend,
                    force,
                    report,
                    live.get(n, set()),
                    calibration.get(n),
                )
                manifest = manifest.with_count(entry)
                write_json_atomic(out / MANIFEST, manifest.to_dict())  # this count is now complete
                for name in live.pop(n, set()) - _entry_files(entry):  # replaced files, no longer vouched for
                    (out / name).unlink(missing_ok=True)
                report.seconds = time.perf_counter() - t0
                reports.append(report)
                if progress is not None:
                    progress.advance(task)
    return BuildReport(out, backend, why, reports, random_weights)


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def _calibration_data(settings: BuildSettings, configs: dict) -> dict:
    """{count: CountData} for a calibrated precision: every count's data recorded from the very weights it
    quantises, files intact; CalibrationError naming the `calibrate` command that fixes it otherwise."""
    q = quantization(settings.precision)
    if q is None or not q.calibrated:
        return {}
    from ..quant.calibration import CalibrationSet

    calib = CalibrationSet(settings.calibration)
    return {
        n: calib.data_for(n, source_hash, (cfg.in_channels, cfg.input_size, cfg.input_size))
        for n, (cfg, source_hash, _) in configs.items()
    }


def _export_key(source_hash: str, precision: str, spec: ExportSpec, calibration) -> str:
    """What a count's ONNX graph is made from: its weights, precision, opset, exporter and calibration data."""
    q = quantization(precision)
    opset = spec.opset_for(SOURCE_PRECISION if q else precision)
    return content_key(
        "onnx",
        source_hash,
        precision,
        opset,
        EXPORT_REVISION,
        torch.__version__,
        onnx.__version__,
        *(_quant_key(calibration) if q else ()),
    )


def _engine_key(backend: str, onnx_art: Artifact, settings: BuildSettings) -> str:
    """What a count's engine is made from (its backend's :meth:`key_parts`: the graph's hash, settings, versions)."""
    engine_backend = registry.get(backend)
    return content_key(*engine_backend.key_parts(onnx_art.sha256, settings, settings.options_for(engine_backend)))


def _build_count(
    out: Path,
    src: ModelSource,
    cfg: ModelConfig,
    source_hash: str,
    old: CountEntry | None,
    settings: BuildSettings,
    spec: ExportSpec,
    backend: str | None,
    force: bool,
    report: CountReport,
    live: set[str],
    calibration=None,
) -> CountEntry:
    """The count's entry after bringing its graph and engine up to date (``old``: its entry so far, if any)."""
    n, precision = src.mediators, settings.precision
    q = quantization(precision)
    opset = spec.opset_for(SOURCE_PRECISION if q else precision)
    export_key = _export_key(source_hash, precision, spec, calibration)
    onnx_art = old.onnx if old is not None else None
    engines = dict(old.engines) if old is not None else {}
    if force or onnx_art is None or not onnx_art.up_to_date(out, export_key):
        model = _load_model(src)
        name = _free_name(f"{count_stem(n)}.{precision}", ".onnx", live)
        if q is None:
            result = export_onnx(model, out / name, precision=precision, spec=spec)
            files, record = result.files, {}
        else:
            result, files, record = _export_quantized(model, out, name, n, precision, spec, calibration)
        onnx_art = Artifact.from_files(
            files,
            precision,
            key=export_key,
            record={
                "opset": opset,
                "mediator_nodes": result.mediator_nodes,
                "export_seconds": round(result.seconds, 2),
                **record,
            },
        )
        onnx_art = replace(onnx_art, record={**onnx_art.record, "bytes": onnx_art.bytes(out)})
        report.exported = True
        engines = {}  # a new graph invalidates every engine built from the old one
    if backend is not None:
        engine_backend = registry.get(backend)
        engine_key = _engine_key(backend, onnx_art, settings)
        kept = engines.get(backend)
        if force or kept is None or not kept.up_to_date(out, engine_key):
            stem = f"{count_stem(n)}.{precision}"
            files, record = engine_backend.build(
                BuildInputs(
                    mediators=n,
                    onnx_files=[out / f for f in onnx_art.files],
                    model=functools.cache(lambda: _load_model(src)),
                    new_file=lambda suffix: out / _free_name(stem, suffix, live),
                    settings=settings,
                    options=settings.options_for(engine_backend),
                    latent_shape=(cfg.in_channels, cfg.input_size, cfg.input_size),
                    folder=out,
                )
            )
            engines[backend] = Artifact.from_files(
                files,
                precision,
                batch=settings.batch,
                key=engine_key,
                record={**record, "versions": _versions(), "built": now()},
            )
            report.engines_built.append(backend)
        else:
            report.engines_kept.append(backend)
    return CountEntry(n, cfg, src.record(None if src.is_random else source_hash), onnx_art, engines)


def _already_built(
    out: Path,
    sources: list[ModelSource],
    configs: dict,
    settings: BuildSettings,
    spec: ExportSpec,
    backend: str | None,
    data: dict | None,
    sampling: dict | None,
    calibration: dict,
) -> list[CountReport] | None:
    """The counts' reports when ``out`` already holds what this build would leave there (every graph and engine
    up to date, the manifest the same but for its time stamp); None when anything is to be done.

    Read-only and without the lock: a build with nothing to do writes nothing (not even its lock file), so it works
    on read-only storage and leaves every time stamp alone. Whatever this decides on was checked by hash, and the
    manifest is replaced atomically, so a build running meanwhile cannot show it a half-written bundle."""
    if not (out / MANIFEST).is_file():
        return None
    first_cfg = next(iter(configs.values()))[0]
    before = Manifest.read(out)  # a manifest that cannot be read: refused here as under the lock
    manifest = _fit_sampling(
        _open_manifest(
            out, shared_model_dict(first_cfg), settings, [s.mediators for s in sources], False, data, sampling
        )
    )
    reports = []
    for src in sorted(sources, key=lambda s: s.mediators):
        cfg, source_hash, _ = configs[src.mediators]
        old = manifest.counts.get(src.mediators)
        if old is None or not old.onnx.up_to_date(
            out, _export_key(source_hash, settings.precision, spec, calibration.get(src.mediators))
        ):
            return None
        if backend is not None and (
            backend not in old.engines
            or not old.engines[backend].up_to_date(out, _engine_key(backend, old.onnx, settings))
        ):
            return None
        manifest = manifest.with_count(
            CountEntry(src.mediators, cfg, src.record(None if src.is_random else source_hash), old.onnx, old.engines)
        )
        reports.append(CountReport(src.mediators, engines_kept=[backend] if backend is not None else []))
    return reports if manifest.same_content(before) else None


def _quant_key(calibration) -> tuple:
    """What a quantised graph depends on beyond the export: the quantiser's version and the calibration data."""
    import onnxruntime as ort

    return ("quant", ort.__version__, calibration.sha256 if calibration is not None else None)


def _export_quantized(
    model: MediatorDiT, out: Path, name: str, n: int, precision: str, spec: ExportSpec, calibration
) -> tuple:
    """Export the fp32 graph into a scratch folder of the bundle, quantise it into ``out / name``, drop the
    scratch (a ``*.partial`` name: an interrupted build leaves nothing that looks complete)."""
    import shutil
    import tempfile

    from ..quant.quantize import quantize_graph

    scratch = Path(tempfile.mkdtemp(prefix=f"{count_stem(n)}.", suffix=".partial", dir=out))
    try:
        result = export_onnx(
            model, scratch / f"{count_stem(n)}.{SOURCE_PRECISION}.onnx", precision=SOURCE_PRECISION, spec=spec
        )
        t0 = time.perf_counter()
        record = quantize_graph(result.files, out / name, precision, calibration)
        files = record.pop("files")
        record["quantization"]["seconds"] = round(time.perf_counter() - t0, 2)
        if calibration is not None:
            record["quantization"]["calibration"] = {
                **calibration.info,
                "file": calibration.path.name,
                "sha256": calibration.sha256,
                "rows": calibration.rows,
            }
        return result, files, record
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _versions() -> dict:
    import onnxruntime as ort

    return {
        "medexport": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }


def manifest_state(out: str | Path) -> str:
    """A hash of what the bundle's manifest says, but for the time of its last write: it changes when a rebuild
    switches any engine, or when the recorded settings change, not when a rebuild finds everything up to date."""
    manifest = Manifest.read(Path(out))
    return content_key({k: v for k, v in manifest.raw.items() if k != "updated"})


def record_sampling(out: str | Path, changes: dict, *, expect_state: str | None = None) -> dict:
    """Change the bundle's recorded sampling settings (``medexport tune --record``), under the build lock and
    with an atomic manifest write; the changed settings are validated against the bundle's counts first.

    ``expect_state``: the :func:`manifest_state` of the bundle that the changes were judged on; BundleError,
    and nothing recorded, when the bundle is no longer in that state (rebuilt, or its settings changed)."""
    from ..core.schedule_text import parse_schedule
    from ..core.settings import SamplingSettings

    out = Path(out)
    with _exclusive(out):
        if expect_state is not None and manifest_state(out) != expect_state:
            raise BundleError(
                f"{out} changed while it was being judged (rebuilt, or its recorded settings "
                f"changed): nothing was recorded, since the choice was made on engines or settings "
                f"that are no longer the bundle's. Run the command again on the bundle as it is now"
            )
        manifest = Manifest.read(out)
        sampling = SamplingSettings.from_dict({**(manifest.raw.get("sampling") or {}), **changes})
        if sampling.schedule:
            parse_schedule(sampling.schedule).validate_against(manifest.count_list)
        manifest = replace(manifest, sampling=sampling, updated=now())
        write_json_atomic(out / MANIFEST, manifest.to_dict())
    return manifest.to_dict()["sampling"]
