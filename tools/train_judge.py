#!/usr/bin/env python
"""Train the offline judge: a small CNN classifier on the Fashion-MNIST training set.

Writes ``medexport/judge/weights/fashion_judge.safetensors`` (weights, plus the mean and covariance of the
judge's features over the 10,000 test images, for the Frechet distance) and records its sha256 next to it.

    python tools/train_judge.py --epochs 4
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medexport.data import load_fashion_mnist  # noqa: E402
from medexport.judge import write_judge  # noqa: E402
from medexport.judge.classifier import FashionJudge  # noqa: E402
from medexport.runtime.images import from_uint8  # noqa: E402

log = logging.getLogger("train_judge")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="default: the package's judge weights")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_train, y_train = load_fashion_mnist("train", args.data)
    x_test, y_test = load_fashion_mnist("test", args.data)
    x_train, x_test = from_uint8(x_train), from_uint8(x_test)  # (N, 1, 28, 28) in [-1, 1]
    y_train, y_test = torch.from_numpy(y_train), torch.from_numpy(y_test)

    model = FashionJudge()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(x_train) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    g = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for i in range(len(x_train) // args.batch_size):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x = x_train[idx]
            # light augmentation: shifts of up to 2 pixels, so generated images slightly off-centre still score
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        model.eval()
        _, probs = model.embed(x_test)
        acc = (probs.argmax(1) == y_test).float().mean().item()
        log.info(
            "epoch %d: loss %.4f, test accuracy %.4f (%.0f s)",
            epoch + 1,
            total / (len(x_train) // args.batch_size),
            acc,
            time.perf_counter() - start,
        )
    path = write_judge(
        model,
        x_test,
        args.out,
        meta={
            "epochs": args.epochs,
            "test_accuracy": round(acc, 4),
            "seed": args.seed,
            "train_seconds": round(time.perf_counter() - start),
        },
    )
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
