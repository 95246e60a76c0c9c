#!/usr/bin/env python
"""Train the demo model: a class-conditional mediator SiT on Fashion-MNIST, in pixel space.

One model per mediator count, trained separately as the paper does (the position biases' shapes depend on the
count). The recipe is the reference trainer's (SiT's ``train.py`` with the Linear path and velocity
prediction): t ~ U(0, 1), x_t = t * x_data + (1 - t) * noise, loss = mean((v(x_t, t, y) - (x_data - noise))^2),
AdamW without weight decay, an EMA of the weights, and 10% of the labels replaced by the null class so the
model learns the unconditional velocity that guidance needs. Changes for a small model trained briefly on a
CPU are options with their defaults stated below (learning rate, EMA decay, batch).

Checkpoints use the reference trainer's format (``model``, ``ema``, ``opt``, ``train_steps``, ``args``) in
``RUN/checkpoints/NNNNNNN.pt`` plus ``RUN/checkpoints/last.pt``; ``medexport build --checkpoint`` reads them
like any user's. A run resumes from ``last.pt`` and refuses to go on with other settings. The batch of step i
is drawn from a generator seeded with (seed, i), so a resumed run sees the same data as an unbroken one.

    python tools/train_demo.py --mediators 16 --steps 6000 --run runs/fashion/m16
    python tools/train_demo.py --mediators 48 --patch-size 2 --autocast bf16 --steps 6000 --run runs/fashion-p2/m48
    python tools/train_demo.py --ship runs/fashion/m4 runs/fashion/m8 runs/fashion/m16   # into the package
    python tools/train_demo.py --ship runs/fashion-p2/m4 runs/fashion-p2/m16 runs/fashion-p2/m48 --demo fashion-mnist-p2 --ship-dtype fp16
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medexport.data import load_fashion_mnist  # noqa: E402
from medexport.errors import MedexportError  # noqa: E402
from medexport.model import MediatorDiT, ModelConfig  # noqa: E402
from medexport.runtime.images import from_uint8  # noqa: E402

log = logging.getLogger("train_demo")

# Settings that define the model and the training run: a resumed run must match them.
FIXED = (
    "mediators",
    "depth",
    "hidden_size",
    "num_heads",
    "patch_size",
    "image_size",
    "lr",
    "batch_size",
    "ema_decay",
    "label_dropout",
    "seed",
    "weight_decay",
    "autocast",
)
# What a checkpoint written before a setting existed was trained with.
FIXED_DEFAULTS = {"autocast": "fp32"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", type=Path, help="run folder (checkpoints go to RUN/checkpoints); resumed if it exists")
    p.add_argument("--mediators", type=int, default=16, help="mediator count of this model (default 16)")
    p.add_argument("--steps", type=int, default=6000, help="train until this many steps in total (default 6000)")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=4, help="28x28 images, patch 4: a 7x7 grid of 49 tokens")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (reference: 1e-4 at batch 256)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument(
        "--ema-decay",
        type=float,
        default=0.999,
        help="EMA decay (reference: 0.9999 over 400k steps; 0.999 suits a few thousand steps)",
    )
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument(
        "--autocast",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: the forward and backward under torch.autocast (weights, optimiser and EMA stay "
        "float32); 1.6x the images/s on a CPU with AVX-512 bf16 (default fp32)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core CPU, 1 thread ran 3-10x faster than 2)",
    )
    p.add_argument("--data", type=Path, default=None, help="folder with the four Fashion-MNIST idx files")
    p.add_argument("--limit", type=int, default=None, help="train on the first LIMIT images only (tests)")
    p.add_argument(
        "--ship",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="instead of training: write the EMA weights of these runs into the package",
    )
    p.add_argument(
        "--recommend",
        default=None,
        metavar="JSON",
        help='with --ship: recommended sampling settings, e.g. \'{"sampler": "ode", "method": "euler", '
        '"steps": 20, "cfg_scale": 2.0, "cfg_channels": "all", "schedule": "4:0.3,8:0.6,16"}\'',
    )
    p.add_argument(
        "--demo",
        default="fashion-mnist",
        help="with --ship: which demo the weights are (medexport.demo.DEMOS): its folder in the package "
        "and its bundle name, <demo>-demo (default fashion-mnist)",
    )
    p.add_argument(
        "--ship-dtype",
        choices=("fp32", "fp16"),
        default="fp32",
        help="with --ship: store the weights in float16 (half the package; they load as float32)",
    )
    p.add_argument("--ship-to", type=Path, default=None, help="with --ship: another folder than the demo's own")
    args = p.parse_args(argv)
    if args.ship is None and args.run is None:
        p.error("--run is required for training")
    args.image_size = 28
    return args


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        depth=args.depth,
        hidden_size=args.hidden_size,
        num_heads=args.num_heads,
        patch_size=args.patch_size,
        input_size=args.image_size,
        mediators=args.mediators,
        in_channels=1,
        num_classes=10,
        learn_sigma=False,
    )


def trainer_args(args: argparse.Namespace) -> argparse.Namespace:
    """The ``args`` stored in checkpoints: the reference's fields plus this recipe's, plain values only."""
    fields = {k: getattr(args, k) for k in FIXED}
    fields.update(
        model=f"SiT-demo/{args.patch_size}",
        num_classes=10,
        path_type="Linear",
        prediction="velocity",
        vae=None,
        data="fashion-mnist",
        global_batch_size=args.batch_size,
    )
    return argparse.Namespace(**fields)


def latest_checkpoint(run: Path) -> Path | None:
    last = run / "checkpoints" / "last.pt"
    return last if last.is_file() else None


def save(run: Path, step: int, model, ema, opt, args) -> Path:
    folder = run / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "opt": opt.state_dict(),
        "train_steps": step,
        "args": trainer_args(args),
    }
    path = folder / f"{step:07d}.pt"
    for target in (path, folder / "last.pt"):
        tmp = target.with_name(target.name + ".partial")
        torch.save(state, tmp)
        os.replace(tmp, target)
    return path


def resume(run: Path, args, model, ema, opt) -> int:
    path = latest_checkpoint(run)
    if path is None:
        return 0
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    saved = vars(ckpt["args"])
    saved = {k: saved.get(k, FIXED_DEFAULTS.get(k)) for k in FIXED}
    diff = {k: (saved[k], getattr(args, k)) for k in FIXED if saved[k] != getattr(args, k)}
    if diff:
        raise MedexportError(
            f"{path} was trained with other settings: "
            + ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            + ". Resume with the same settings or start a new --run folder."
        )
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["opt"])
    log.info("resumed %s at step %d", path, ckpt["train_steps"])
    return int(ckpt["train_steps"])


@torch.no_grad()
def update_ema(ema, model, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)


def training_batch(data: torch.Tensor, labels: torch.Tensor, step: int, args) -> tuple[torch.Tensor, ...]:
    """(x_t, t, y, target) of step ``step``: the reference's Linear path with velocity target."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    idx = torch.randint(len(data), (args.batch_size,), generator=g)
    x1 = data[idx]  # (B, 1, 28, 28) in [-1, 1]
    y = labels[idx].clone()
    y[torch.rand(args.batch_size, generator=g) < args.label_dropout] = 10  # null class: guidance needs it
    x0 = torch.randn(x1.shape, generator=g)
    t = torch.rand(args.batch_size, generator=g)
    tb = t.view(-1, 1, 1, 1)
    return tb * x1 + (1 - tb) * x0, t, y, x1 - x0


def train(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    images, labels = load_fashion_mnist("train", args.data)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    data = from_uint8(images)  # (N, 1, 28, 28) in [-1, 1]
    labels = torch.from_numpy(labels)

    torch.manual_seed(args.seed)
    model = MediatorDiT(model_config(args))  # the reference's zero-initialised adaLN and output layers
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    step = resume(args.run, args, model, ema, opt)
    model.train()
    ema.eval()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "model %s, %d trainable parameters, %d images, training steps %d -> %d",
        model.config,
        n_params,
        len(data),
        step,
        args.steps,
    )

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    interactive = sys.stderr.isatty()
    window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
    path = None
    with Progress(
        TextColumn(f"m={args.mediators}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[ips]:.0f} img/s"),
        TimeRemainingColumn(),
        disable=not interactive,
    ) as progress:
        task = progress.add_task("train", total=args.steps, completed=step, loss=math.nan, ips=0.0)
        while step < args.steps:
            xt, t, y, target = training_batch(data, labels, step, args)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
                out = model(xt, t, y)
            loss = F.mse_loss(out.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            update_ema(ema, model, args.ema_decay)
            step += 1
            window_loss += loss.item()
            window_n += 1
            if step % args.log_every == 0 or step == args.steps:
                elapsed = time.perf_counter() - window_t
                ips = window_n * args.batch_size / elapsed
                progress.update(task, completed=step, loss=window_loss / window_n, ips=ips)
                if not interactive:
                    log.info("step %d/%d loss %.4f %.0f img/s", step, args.steps, window_loss / window_n, ips)
                window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
            if step % args.ckpt_every == 0 or step == args.steps:
                path = save(args.run, step, model, ema, opt, args)
    if path is None:  # nothing to do: already trained this far
        path = latest_checkpoint(args.run)
    log.info("done: %s", path)
    return path


def ship(
    runs: list[Path], dest: Path | None, recommend: str | None, demo: str = "fashion-mnist", dtype: str = "fp32"
) -> None:
    """Write each run's EMA weights as safetensors into the package and record their sha256."""
    from medexport.demo import DEMOS, write_weights

    if demo not in DEMOS:
        raise MedexportError(f"--demo {demo!r} is not one of {', '.join(DEMOS)}")
    dest = dest or Path(__file__).resolve().parents[1] / "medexport" / "demo" / DEMOS[demo]

    try:
        sampling = json.loads(recommend) if recommend else None
    except json.JSONDecodeError as e:
        raise MedexportError(f"--recommend is not valid JSON ({e})") from None
    for path in write_weights(
        [latest_checkpoint(r) or r for r in runs], dest, sampling=sampling, name=f"{demo}-demo", dtype=dtype
    ):
        log.info("wrote %s", path)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        if args.ship:
            ship(args.ship, args.ship_to, args.recommend, args.demo, args.ship_dtype)
        else:
            train(args)
    except MedexportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
