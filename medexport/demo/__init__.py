"""The demo model that ships with medexport: a class-conditional mediator SiT trained on Fashion-MNIST.

Three separately trained models (one per mediator count, as the paper trains them) in pixel space: 1 x 28 x 28
images, patch 4, a 7 x 7 token grid. Their EMA weights ship as safetensors in ``weights/``, each checked
against ``weights/SHA256SUMS`` when used; ``weights/demo.json`` names the files and the recommended sampling
settings. ``medexport build`` with no model arguments builds them into ``engines/fashion-mnist-demo``. The
model card is ``models/fashion-mnist-demo.md``; ``tools/train_demo.py`` trains and ships them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.assets import AssetError, record_sums, verified_file
from ..core.files import replacing, write_json

NAME = "fashion-mnist-demo"
WEIGHTS_DIR = Path(__file__).parent / "weights"
CARD_FILE = "demo.json"


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
        raise AssetError(f"the demo model has no {', '.join(map(str, missing))}-mediator weights: it ships "
                         f"{', '.join(map(str, sorted(files)))} mediators")
    return {n: verified_file(folder, files[n], f"demo weights ({n} mediators)") for n in wanted}


def write_weights(checkpoints: list[str | os.PathLike], dest: str | os.PathLike | None = None, *,
                  sampling: dict | None = None, train: dict | None = None) -> list[Path]:
    """Ship trainer checkpoints: their EMA weights as safetensors in ``dest`` (default: the package), with the
    data record, the recommended ``sampling`` settings and the training record as metadata, plus ``demo.json``
    and the sha256 of every file."""
    from safetensors.torch import save_file

    from ..model import read_checkpoint
    from ..core.settings import SamplingSettings

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
        name = f"fashion-sit-m{n}.safetensors"
        meta = {"medexport_data": json.dumps(info.data), "medexport_config": json.dumps(info.config.to_dict()),
                "medexport_train": json.dumps({"train_steps": info.train_steps, **(train or {})})}
        if sampling is not None:
            meta["medexport_sampling"] = json.dumps(sampling)
        with replacing(dest / name, mode=0o644) as tmp:  # package data: readable by every user
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
        files[str(n)] = name
        record[str(n)] = info.train_steps
        written.append(dest / name)
    card = {"name": NAME, "files": dict(sorted(files.items(), key=lambda kv: int(kv[0]))), "sampling": sampling,
            "train_steps": record, **({"train": train} if train else {}),
            "card": "models/fashion-mnist-demo.md"}
    write_json(dest / CARD_FILE, card)
    record_sums(dest, [*files.values(), CARD_FILE])
    return written


__all__ = ["NAME", "WEIGHTS_DIR", "demo_card", "demo_checkpoints", "demo_counts", "write_weights"]
