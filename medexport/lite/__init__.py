"""Sampling from an ONNX Runtime bundle with numpy and onnxruntime alone: no torch.

For applications and servers (a Triton python model, a small container) that embed the engines. It reads the
bundle's manifest, checks every engine file's sha256, and runs the fixed-step samplers (SDE Euler-Maruyama or
Heun with the reference's last step; ODE Euler or Heun), classifier-free guidance and fixed mediator schedules,
with the same formulas and float32 arithmetic as :class:`medexport.Pipeline` (same latents within 1e-5
relative from the same noise). Not here: dopri5 (needs torchdiffeq) and adaptive schedules (use the full
runtime). ``import medexport.lite`` loads numpy, onnxruntime and medexport's own torch-free modules only; a
torch-free install is ``pip install --no-deps medexport && pip install numpy onnxruntime`` (README: "Embedding
without torch").

    from medexport.lite import LitePipeline
    pipe = LitePipeline.from_bundle("engines/fashion-mnist-demo", threads=1)
    result = pipe.sample([0, 1, 2], seed=0)          # the bundle's recommended settings
    result.latents                                    # float32 (3, 1, 28, 28); images in [-1, 1] for the demo
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backend.batch import BatchRange, run_in_range
from ..errors import BundleError, SamplingError, ScheduleError
from ..runtime.schedule import FixedSchedule, parse_schedule
from ..runtime.settings import SamplerSettings, StepInfo

__all__ = ["LiteBundle", "LitePipeline", "LiteResult", "chunked"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class LiteBundle:
    """A bundle's manifest, read as the plain JSON it is (format in ``medexport/bundle/manifest.py``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.manifest = json.loads((self.path / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise BundleError(f"{self.path} is not a readable medexport bundle ({e}): build one with "
                              f"`medexport build`") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != "medexport-bundle":
            raise BundleError(f"{self.path}/manifest.json is not a medexport bundle manifest")
        self.counts = sorted(int(n) for n in self.manifest.get("counts", {}))
        if not self.counts:
            raise BundleError(f"bundle {self.path} holds no complete mediator count: finish it with `medexport build`")

    def config(self, n: int) -> dict:
        return self.manifest["counts"][str(n)]["config"]

    def engine_file(self, n: int) -> tuple[Path, bytes]:
        """The ONNX Runtime engine of ``n`` mediators, its bytes read once and checked against every hash."""
        eng = self.manifest["counts"][str(n)].get("engines", {}).get("onnxruntime")
        if not eng:
            raise BundleError(f"bundle {self.path} has no onnxruntime engine for {n} mediators: the torch-free runtime "
                              f"runs ONNX Runtime engines (build with --backend onnxruntime)")
        files, hashes = eng.get("files", [eng["file"]]), eng.get("hashes", [eng["sha256"]])
        main = None
        for name, sha in zip(files, hashes):
            if "/" in name or "\\" in name or name.startswith("."):
                raise BundleError(f"engine file {name!r} is not a plain file name inside the bundle")
            path = self.path / name
            if path.is_symlink() or not path.is_file():
                raise BundleError(f"bundle {self.path} lacks {name} (or it is a link): rebuild it")
            if name == eng["file"]:
                main = path.read_bytes()
                ok = hashlib.sha256(main).hexdigest() == sha
            else:
                ok = _sha256(path) == sha
            if not ok:
                raise BundleError(f"{path} does not match the hash in the manifest: rebuild it with "
                                  f"`medexport build ... --force`")
        return self.path / eng["file"], main

    def batch_range(self, n: int) -> BatchRange | None:
        b = self.manifest["counts"][str(n)]["engines"]["onnxruntime"].get("batch")
        return BatchRange.parse(b) if b else None


@dataclass
class LiteResult:
    latents: np.ndarray  # (B, C, S, S) float32: the conditional half
    trace: list[dict] = field(default_factory=list)  # per evaluation: step, t, mediators, ms, batch
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)


class LitePipeline:
    """The fixed-step samplers over one forward function per mediator count.

    ``forwards[n](x, t, y) -> v`` takes any batch (numpy float32 x (B, C, S, S), t (B,), int64 y (B,)).
    :meth:`from_bundle` makes them from ONNX Runtime sessions; a Triton sampler model makes them from calls to
    the per-count models (``medexport export-triton``).
    """

    def __init__(self, forwards: dict, config: dict, defaults: dict | None = None, data: dict | None = None):
        self.forwards = dict(sorted(forwards.items()))
        self.num_classes, self.channels, self.size = config["num_classes"], config["in_channels"], config["input_size"]
        self.defaults = dict(defaults or {})
        self.data = data

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, *, threads: int | None = None,
                    providers: list[str] | None = None) -> LitePipeline:
        import onnxruntime as ort

        bundle = LiteBundle(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        forwards = {}
        for n in bundle.counts:
            path_n, data = bundle.engine_file(n)
            single = len(bundle.manifest["counts"][str(n)]["engines"]["onnxruntime"].get("files", [1])) == 1
            sess = ort.InferenceSession(data if single else str(path_n), sess_options=opts,
                                        providers=providers or ["CPUExecutionProvider"])
            forwards[n] = chunked(lambda x, t, y, sess=sess: sess.run(None, {"x": x, "t": t, "y": y})[0],
                                  bundle.batch_range(n))
        return cls(forwards, bundle.config(bundle.counts[0]), bundle.manifest.get("sampling"),
                   bundle.manifest.get("data"))

    @property
    def counts(self) -> list[int]:
        return list(self.forwards)

    # -- sampling -----------------------------------------------------------------------------------------
    def sample(self, labels, *, seed: int | None = None, noise: np.ndarray | None = None, sampler: str | None = None,
               method: str | None = None, steps: int | None = None, cfg_scale: float | None = None,
               cfg_channels: int | str | None = None, schedule: str | None = None, last_step: str = "mean",
               last_step_size: float = 0.04,
               noise_fn: Callable[[tuple], np.ndarray] | None = None) -> LiteResult:
        """Settings left as None come from the bundle's recommended ones. ``noise_fn(shape)`` draws the SDE's
        noise (default: numpy's generator seeded with ``seed``)."""
        d = self.defaults
        if sampler is not None and sampler != d.get("sampler"):
            d = {k: v for k, v in d.items() if k not in ("method", "steps")}  # they belong to the other sampler
        sampler = sampler or d.get("sampler") or "sde"
        settings = SamplerSettings(sampler=sampler, method=method or d.get("method"), steps=steps or d.get("steps"),
                                   last_step=last_step, last_step_size=last_step_size)
        if settings.resolved_method == "dopri5":
            raise SamplingError("the torch-free runtime runs the fixed-step samplers: use --method euler or heun "
                                "(dopri5 needs torchdiffeq and the full runtime)")
        scale = float(cfg_scale if cfg_scale is not None else d.get("cfg_scale", 1.0))
        if scale < 1:
            raise SamplingError(f"cfg_scale must be >= 1, got {scale}")
        channels = cfg_channels if cfg_channels is not None else d.get("cfg_channels", "3")
        k = self.channels if str(channels) == "all" else min(int(channels), self.channels)
        text = schedule if schedule is not None else d.get("schedule") or str(max(self.counts))
        sched = parse_schedule(str(text))
        if not isinstance(sched, FixedSchedule):
            raise ScheduleError("the torch-free runtime runs fixed schedules; adaptive ones need the full runtime")
        sched.validate_against(self.counts)
        y = np.asarray(labels)
        if y.ndim != 1 or len(y) == 0 or y.dtype.kind not in "iu":
            raise SamplingError(f"labels must be a non-empty list of integer class labels, got {labels!r}")
        if ((y < 0) | (y >= self.num_classes)).any():
            raise SamplingError(f"labels must be in 0..{self.num_classes - 1}")
        y = y.astype(np.int64)
        B, shape = len(y), (self.channels, self.size, self.size)
        rng = np.random.default_rng(seed)
        x0 = noise if noise is not None else rng.standard_normal((B, *shape), dtype=np.float32)
        if x0.shape != (B, *shape):
            raise SamplingError(f"noise must be {(B, *shape)}, got {x0.shape}")
        x0 = x0.astype(np.float32)
        guided = scale > 1.0
        if guided:
            x0 = np.concatenate([x0, x0])
            y = np.concatenate([y, np.full_like(y, self.num_classes)])
        draw = noise_fn or (lambda s: rng.standard_normal(s, dtype=np.float32))
        trace: list[dict] = []

        def velocity(x: np.ndarray, t: np.ndarray, step: StepInfo) -> np.ndarray:
            n = sched.model_for(step)
            if guided:
                half = x[: len(x) // 2]
                x = np.concatenate([half, half])
            start = time.perf_counter()
            out = self.forwards[n](x, t, y)
            trace.append({"step": step.index, "t": step.t, "mediators": n, "ms": 1e3 * (time.perf_counter() - start),
                          "batch": len(x)})
            if not np.isfinite(out).all():
                raise SamplingError(f"the engine for {n} mediators produced NaN/inf at step {step.index}")
            if guided:
                cond, uncond = out[: len(out) // 2, :k], out[len(out) // 2:, :k]
                eps = uncond + np.float32(scale) * (cond - uncond)
                out = np.concatenate([np.concatenate([eps, eps]), out[:, k:]], axis=1)
            return out

        start = time.perf_counter()
        x = _integrate(velocity, x0, settings, draw)
        return LiteResult(x[:B].astype(np.float32), trace, time.perf_counter() - start,
                          {"sampler": settings.sampler, "method": settings.resolved_method,
                           "steps": settings.resolved_steps, "cfg_scale": scale, "cfg_channels": str(channels),
                           "schedule": str(sched), "seed": seed})


def chunked(run, batch: BatchRange | None):
    """``run(x, t, y)`` for any batch: split into sizes within ``batch``, padded up to its minimum."""
    return lambda x, t, y: run_in_range(run, batch, x, t, y, np.concatenate)


# -------------------------------------------------------------------------------------------------------------
# The fixed-step samplers in numpy, float32: the formulas of medexport.runtime.samplers (SiT's Linear path)
# -------------------------------------------------------------------------------------------------------------
def _grid(s: SamplerSettings) -> np.ndarray:
    """linspace(0, end, steps) in float32 as torch builds it: the first half from the start, the rest from the end."""
    n, end = s.resolved_steps, np.float32(s.grid_end)
    step = (end - np.float32(0)) / np.float32(n - 1)
    i = np.arange(n)
    half = n // 2
    return np.where(i < half, np.float32(0) + step * i.astype(np.float32),
                    end - step * (n - 1 - i).astype(np.float32)).astype(np.float32)


def _expand(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def _score(v: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = _expand(t, x)
    sigma = 1 - t
    return (t * v - x) / (sigma ** 2 + t * sigma)


def _diffusion(x: np.ndarray, t: np.ndarray, norm: float) -> np.ndarray:
    return np.float32(norm) * (1 - _expand(t, x))


def _integrate(velocity, x: np.ndarray, s: SamplerSettings, draw) -> np.ndarray:
    grid = _grid(s)
    num_steps = s.num_model_steps
    heun = s.resolved_method == "heun"

    def info(i, t):
        return StepInfo(index=i, num_steps=num_steps, t=float(t), progress=i / num_steps)

    def tfill(value, like):
        return np.full((like.shape[0],), value, dtype=np.float32)

    def drift(x, t, st):
        v = velocity(x, t, st)
        return v + _diffusion(x, t, s.diffusion_norm) * _score(v, x, t)

    if s.sampler == "ode":
        for i in range(len(grid) - 1):
            t0, dt = grid[i], grid[i + 1] - grid[i]
            st = info(i, t0)
            k1 = velocity(x, tfill(t0, x), st)
            if heun:
                k2 = velocity(x + dt * k1, tfill(np.float32(t0 + dt), x), st)
                x = x + dt * (k1 * np.float32(0.5) + k2 * np.float32(0.5))
            else:
                x = x + dt * k1
        return x
    dt = grid[1] - grid[0]
    for i, ti in enumerate(grid[:-1]):
        st = info(i, ti)
        t = tfill(ti, x)
        dw = draw(x.shape).astype(np.float32) * np.sqrt(dt)
        if heun:
            xhat = x + np.sqrt(2 * _diffusion(x, t, s.diffusion_norm)) * dw
            k1 = drift(xhat, t, st)
            xp = xhat + dt * k1
            k2 = drift(xp, t + dt, st)
            x = xhat + np.float32(0.5) * dt * (k1 + k2)
        else:
            mean_x = x + drift(x, t, st) * dt
            x = mean_x + np.sqrt(2 * _diffusion(x, t, s.diffusion_norm)) * dw
    if not s.has_last_step:
        return x
    t1 = np.float32(1 - s.last_step_size)
    st = info(s.resolved_steps - 1, t1)
    t = tfill(t1, x)
    size = np.float32(s.last_step_size)
    if s.last_step == "mean":
        return x + drift(x, t, st) * size
    if s.last_step == "euler":
        return x + velocity(x, t, st) * size
    alpha, sigma = t[0], 1 - t[0]  # tweedie
    return x / alpha + (sigma ** 2) / alpha * _score(velocity(x, t, st), x, t)
