"""The demo models that ship with medexport: class-conditional mediator SiTs trained on Fashion-MNIST.

Each demo is a family of separately trained models (one per mediator count, as the paper trains them) in pixel
space, 1 x 28 x 28 images, in a folder of this package (:data:`DEMOS`):

- ``fashion-mnist`` (the default, ``weights/``): patch 4, a 7 x 7 grid of 49 tokens, 4, 8 and 16 mediators;
  fast, but its counts cost within 3% of each other.
- ``fashion-mnist-p2`` (``fashion-mnist-p2/``): patch 2, a 14 x 14 grid of 196 tokens, 4, 16 and 48 (6 x 8)
  mediators, in float16; the mediators summarise four times as many tokens and the counts differ in cost.

Their EMA weights ship as safetensors, each checked against the folder's ``SHA256SUMS`` when used; its
``demo.json`` names the files, the bundle name and the recommended sampling settings. ``medexport build`` with
no model arguments builds the default into ``engines/fashion-mnist-demo``; ``--demo NAME`` picks another. The
model cards are ``models/<bundle name>.md``; ``tools/train_demo.py`` trains and ships them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.assets import AssetError, record_sums, verified_file
from ..core.files import replacing, write_json

NAME = "fashion-mnist-demo"  # the default demo's bundle name
WEIGHTS_DIR = Path(__file__).parent / "weights"
CARD_FILE = "demo.json"
#: Every demo: its name (``build --demo``) and its folder in this package.
DEMOS: dict[str, str] = {"fashion-mnist": "weights", "fashion-mnist-p2": "fashion-mnist-p2"}
DEFAULT_DEMO = "fashion-mnist"


def demo_names() -> list[str]:
    """The demos whose weights ship in this installation (the default first)."""
    here = Path(__file__).parent
    return [name for name, folder in DEMOS.items() if (here / folder / CARD_FILE).is_file()]


def demo_folder(name: str | None = None) -> Path:
    """The folder of the demo ``name`` (default: the default demo); AssetError naming the demos for another."""
    name = name or DEFAULT_DEMO
    if name not in demo_names():
        raise AssetError(f"there is no demo {name!r}: this medexport ships {', '.join(demo_names())}")
    return Path(__file__).parent / DEMOS[name]


def demo_bundle_name(name: str | None = None) -> str:
    """The bundle name a demo builds into (``engines/<it>``): its card's ``name``."""
    return demo_card(demo_folder(name)).get("name") or NAME


def demo_card(folder: str | os.PathLike | None = None) -> dict:
    """The shipped ``demo.json`` (files per count, recommended sampling, training record), hash-checked."""
    folder = Path(folder) if folder else WEIGHTS_DIR
    path = verified_file(folder, CARD_FILE, "demo model card")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AssetError(f"the shipped {path} is not valid JSON ({e}): reinstall medexport") from None
    if not isinstance(card, dict) or not isinstance(card.get("files"), dict):
        raise AssetError(f"the shipped {path} does not name the demo's weight files: reinstall medexport")
    return card


def demo_counts(folder: str | os.PathLike | None = None) -> list[int]:
    return sorted(int(n) for n in demo_card(folder)["files"])


def demo_checkpoints(counts: list[int] | None = None, folder: str | os.PathLike | None = None) -> dict[int, Path]:
    """{mediator count: safetensors path} of the shipped demo weights, each checked against its sha256."""
    folder = Path(folder) if folder else WEIGHTS_DIR
    files = {int(n): name for n, name in demo_card(folder)["files"].items()}
    wanted = sorted(files) if counts is None else list(counts)
    missing = [n for n in wanted if n not in files]
    if missing:
        raise AssetError(
            f"the demo model has no {', '.join(map(str, missing))}-mediator weights: it ships "
            f"{', '.join(map(str, sorted(files)))} mediators"
        )
    return {n: verified_file(folder, files[n], f"demo weights ({n} mediators)") for n in wanted}


def write_weights(
    checkpoints: list[str | os.PathLike],
    dest: str | os.PathLike | None = None,
    *,
    sampling: dict | None = None,
    train: dict | None = None,
    name: str = NAME,
    dtype: str = "fp32",
) -> list[Path]:
    """Ship trainer checkpoints: their EMA weights as safetensors in ``dest`` (default: the package), with the
    data record, the recommended ``sampling`` settings and the training record as metadata, plus ``demo.json``
    (``name``: the bundle name it builds into) and the sha256 of every file. ``dtype`` "fp16" stores the
    weights in half precision (half the package; they load as float32)."""
    from safetensors.torch import save_file

    from ..core.settings import SamplingSettings
    from ..model import read_checkpoint

    dest = Path(dest) if dest else WEIGHTS_DIR
    dest.mkdir(parents=True, exist_ok=True)
    if sampling is not None:
        sampling = SamplingSettings.from_dict(sampling).to_dict()  # validated
    files, written, record = {}, [], {}
    for ckpt in checkpoints:
        state, info = read_checkpoint(ckpt, weights="ema")
        if info.data is None:
            raise AssetError(f"{ckpt} is not a pixel-space demo checkpoint (its args do not name the data set)")
        n = info.config.mediators
        file = f"fashion-sit-m{n}.safetensors"
        meta = {
            "medexport_data": json.dumps(info.data),
            "medexport_config": json.dumps(info.config.to_dict()),
            "medexport_train": json.dumps({"train_steps": info.train_steps, **(train or {})}),
        }
        if sampling is not None:
            meta["medexport_sampling"] = json.dumps(sampling)
        cast = (lambda v: v.half() if v.is_floating_point() else v) if dtype == "fp16" else (lambda v: v)
        with replacing(dest / file, mode=0o644) as tmp:  # package data: readable by every user
            save_file({k: cast(v).contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
        files[str(n)] = file
        record[str(n)] = info.train_steps
        written.append(dest / file)
    card = {
        "name": name,
        "files": dict(sorted(files.items(), key=lambda kv: int(kv[0]))),
        "sampling": sampling,
        "train_steps": record,
        **({"train": train} if train else {}),
        "card": f"models/{name}.md",
        **({"dtype": dtype} if dtype != "fp32" else {}),
    }
    write_json(dest / CARD_FILE, card)
    record_sums(dest, [*files.values(), CARD_FILE])
    return written


__all__ = [
    "DEFAULT_DEMO",
    "DEMOS",
    "NAME",
    "WEIGHTS_DIR",
    "demo_bundle_name",
    "demo_card",
    "demo_checkpoints",
    "demo_counts",
    "demo_folder",
    "demo_names",
    "write_weights",
]
