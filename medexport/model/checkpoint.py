"""Reading and writing mediator DiT/SiT checkpoints in every form the reference code and its users produce.

Forms: the reference trainer's dict ``{"model", "ema", "opt", "train_steps", "args"}`` (torch.save), a bare
state dict (torch.save, keys possibly prefixed ``module.`` / ``_orig_mod.``), and a safetensors file. The
architecture is read off the state dict; pickles are loaded with ``weights_only=True`` and only
``argparse.Namespace`` allowed beyond tensors and containers, so a file carrying code is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..core.config import FULL, SIZES, ModelConfig
from ..core.files import file_key as _file_key  # noqa: F401  (file_sha256: re-exported)
from ..core.files import file_sha256
from ..errors import CheckpointError, ConfigError, NotAMediatorModelError
from .mediator_dit import MediatorDiT, pooling_matrix

log = logging.getLogger(__name__)

PREFIXES = ("module.", "_orig_mod.")
MEDIATOR_KEYS = ("dwc.weight", "dwc.bias", "an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias")
FORMATS = ("trainer", "state_dict", "safetensors")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file holds, as ``medexport info`` reports it."""

    path: str
    format: str  # "trainer" | "state_dict" | "safetensors"
    weights: str  # "ema" | "model" | "state_dict"
    config: ModelConfig
    num_parameters: int
    train_steps: int | None = None
    data: dict | None = None  # what the model generates, when the file says (pixel space, data set); else latents
    sampling: dict | None = None  # recommended sampling settings, when the file records them


_ZIPS_CHECKED: set[tuple] = set()


# ---------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------
def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len <= path.stat().st_size - 8


def _read_raw(path: Path) -> tuple[object, str]:
    """The object stored in ``path`` and "safetensors" or "torch"; CheckpointError for anything unreadable."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist: check the path")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty")
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _SafetensorsState(load_file(str(path), device="cpu"), _safetensors_metadata(path)), "safetensors"
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{str(path)!r} looks like safetensors but cannot be read ({e}): "
                f"the file may be truncated; re-download or re-save it"
            ) from None
    is_zip = zipfile.is_zipfile(path)
    if not is_zip:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic[:1] != b"\x80":
            raise CheckpointError(f"{str(path)!r} is neither a torch.save file nor a safetensors file")
    if is_zip:
        _check_zip(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            # mmap: reading a multi-GB checkpoint's config or hash does not load every tensor into memory
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip), "torch"
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {str(path)!r}: it holds objects other than tensors and plain containers, which "
            f"could run code when unpickled ({str(e).splitlines()[0]}). Re-save the state dict alone, e.g. with "
            f"torch.save(model.state_dict(), path) or as safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(
            f"cannot read {str(path)!r} as a checkpoint ({str(e).splitlines()[0]}): the file "
            f"may be truncated or not a checkpoint"
        ) from None


def _check_zip(path: Path, chunk: int = 1 << 24) -> None:
    """Refuse a torch.save zip whose records do not match their CRC-32: torch.load does not check them and would
    load damaged bytes as weights. Like ``ZipFile.testzip`` (it reads the whole file, once per version of it),
    but records saved without a checksum (``compute_crc32=False`` writes 0) are taken as they are."""
    key = _file_key(path)
    if key in _ZIPS_CHECKED:
        return
    record = None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.CRC == 0:
                    continue
                record = info.filename
                with zf.open(info) as f:
                    while f.read(chunk):
                        pass
    except (zipfile.BadZipFile, EOFError) as e:
        where = f"the record {record!r}" if record else "its zip directory"
        raise CheckpointError(
            f"{str(path)!r} is damaged: {where} fails its checksum test ({e}). Re-download or re-save the file"
        ) from None
    _ZIPS_CHECKED.add(key)


class _SafetensorsState(dict):
    """A safetensors state dict and the file's string metadata."""

    def __init__(self, tensors: dict, metadata: dict[str, str]):
        super().__init__(tensors)
        self.metadata = metadata


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _json_meta(metadata: dict[str, str], key: str, path: Path) -> dict | None:
    if key not in metadata:
        return None
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError:
        raise CheckpointError(f"{str(path)!r}: the metadata entry {key!r} is not valid JSON") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{str(path)!r}: the metadata entry {key!r} is not a JSON object")
    return value


def _data_from_args(args: object) -> dict | None:
    """Pixel-space models of medexport's demo trainer say so in their ``args`` (``vae`` None, ``data``)."""
    if isinstance(args, argparse.Namespace) and getattr(args, "vae", "") is None:
        if getattr(args, "data", None) == "fashion-mnist":
            from ..data import DATA_RECORD

            return dict(DATA_RECORD)
    return None


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _pick_state_dict(raw: object, kind: str, weights: str, path: Path) -> tuple[dict[str, Tensor], str, str, dict]:
    """(state dict, format, weights taken, trainer extras) from what the file held."""
    if weights not in ("ema", "model"):
        raise CheckpointError(f"weights must be 'ema' or 'model', got {weights!r}")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(raw).__name__}, not a state dict or trainer checkpoint")
    if kind == "safetensors":
        meta = raw.metadata
        train = _json_meta(meta, "medexport_train", path) or {}
        config = _json_meta(meta, "medexport_config", path) or {}
        return (
            dict(raw),
            "safetensors",
            "state_dict",
            {
                "data": _json_meta(meta, "medexport_data", path),
                "sampling": _json_meta(meta, "medexport_sampling", path),
                "train_steps": train.get("train_steps"),
                "num_heads": config.get("num_heads"),
            },
        )
    if "model" in raw or "ema" in raw:
        if weights not in raw:
            other = "model" if weights == "ema" else "ema"
            raise CheckpointError(
                f"{str(path)!r} is a trainer checkpoint without {weights!r} weights: use weights={other!r}"
            )
        state = raw[weights]
        if not isinstance(state, dict):
            raise CheckpointError(f"{str(path)!r}: the {weights!r} entry is not a state dict")
        args = raw.get("args")
        extras = {
            "train_steps": raw.get("train_steps"),
            "data": _data_from_args(args),
            "model_name": getattr(args, "model", None) if isinstance(args, argparse.Namespace) else None,
        }
        return state, "trainer", weights, extras
    return raw, "state_dict", "state_dict", {}


# ---------------------------------------------------------------------------------------------------------
# The architecture, read off a state dict
# ---------------------------------------------------------------------------------------------------------
def _shape(state: dict[str, Tensor], key: str) -> tuple[int, ...]:
    value = state.get(key)
    if not isinstance(value, Tensor):
        raise CheckpointError(f"the state dict has no tensor {key!r}: it is not a DiT/SiT checkpoint")
    return tuple(value.shape)


def _full_attention_heads(depth: int, width: int, model_name: str | None, num_heads: object = None) -> int:
    """The heads of a vanilla DiT/SiT, which its state dict does not show: from the file's own record (medexport's
    safetensors), the trainer's ``args.model`` ("SiT-XL/2"), else the named size with this depth and width."""
    if isinstance(num_heads, int) and not isinstance(num_heads, bool) and num_heads > 0:
        return num_heads
    if model_name:
        size = re.fullmatch(r"(?:DiT|SiT)-(\w+)/\d+", model_name)
        if size and size.group(1) in SIZES:
            d, w, heads = SIZES[size.group(1)]
            if (d, w) != (depth, width):
                raise CheckpointError(
                    f"the file says it holds {model_name} ({d} blocks of width {w}), but its weights "
                    f"are {depth} blocks of width {width}: the checkpoint is damaged or mislabelled"
                )
            return heads
    for d, w, heads in SIZES.values():
        if (d, w) == (depth, width):
            return heads
    names = ", ".join(f"{k} ({d} blocks, width {w})" for k, (d, w, _) in SIZES.items())
    raise CheckpointError(
        f"this is a plain (full-attention) DiT/SiT, without mediator attention, of {depth} blocks "
        f"of width {width}, which is none of the "
        f"named sizes ({names}), and its file does not name its model: its number of heads "
        f"cannot be read off the weights"
    )


def infer_config(state: dict[str, Tensor], model_name: str | None = None, num_heads: int | None = None) -> ModelConfig:
    """The :class:`ModelConfig` a (prefix-free) state dict describes: a mediator model, or a vanilla
    (full-attention) DiT/SiT when the blocks have no mediator parameters. ``model_name``: the trainer's
    ``args.model``, and ``num_heads``, a file's record of them: what tells a vanilla model's heads."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks:
        raise CheckpointError("the state dict has no 'blocks.N.' keys: it is not a DiT/SiT checkpoint")
    depth = max(blocks) + 1
    present = [k for k in MEDIATOR_KEYS if f"blocks.0.attn.{k}" in state]
    if present and len(present) < len(MEDIATOR_KEYS):
        missing = [f"blocks.0.attn.{k}" for k in MEDIATOR_KEYS if k not in present]
        raise CheckpointError(
            "the blocks hold some of the mediator-attention parameters but not "
            + ", ".join(missing)
            + ": the file is neither a mediator model nor a vanilla DiT/SiT"
        )
    full = not present
    D, c_in, p, p2 = _shape(state, "x_embedder.proj.weight")
    if p != p2:
        raise CheckpointError(f"x_embedder.proj.weight has a non-square patch {p}x{p2}")
    _, N, D_pos = _shape(state, "pos_embed")
    G = math.isqrt(N)
    if G * G != N or D_pos != D:
        raise CheckpointError(f"pos_embed {(1, N, D_pos)} does not fit a square token grid of width {D}")
    H, n, *_ = (
        (_full_attention_heads(depth, D, model_name, num_heads), FULL)
        if full
        else _shape(state, "blocks.0.attn.an_bias")
    )
    out_features, _ = _shape(state, "final_layer.linear.weight")
    c_out, rem = divmod(out_features, p * p)
    if rem or c_out not in (c_in, 2 * c_in):
        raise CheckpointError(
            f"final_layer.linear has {out_features} outputs, which is neither "
            f"{p * p * c_in} nor {2 * p * p * c_in} for patch {p} and {c_in} channels"
        )
    rows, _ = _shape(state, "y_embedder.embedding_table.weight")
    hidden_mlp, _ = _shape(state, "blocks.0.mlp.fc1.weight")
    try:
        return ModelConfig(
            depth=depth,
            hidden_size=D,
            num_heads=H,
            patch_size=p,
            input_size=G * p,
            mediators=n,
            in_channels=c_in,
            num_classes=rows - 1,
            learn_sigma=c_out == 2 * c_in,
            mlp_ratio=hidden_mlp / D,
            attention="full" if full else "mediator",
        )
    except ConfigError as e:
        raise CheckpointError(f"the checkpoint's shapes do not fit together: {e}") from None


def _check_values(model: MediatorDiT, state: dict[str, Tensor], path) -> None:
    """Refuse values that would load silently wrong: non-tensors, integer or bool values where the model has
    floating-point weights (load_state_dict would cast them), NaN or inf."""
    expected = model.state_dict()
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{str(path)!r}: {key!r} holds a {type(value).__name__}, not a tensor")
        if expected[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(
                f"{str(path)!r}: {key!r} holds {value.dtype} values where the model has "
                f"{expected[key].dtype} weights: the file was not saved from a trained model"
            )
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{str(path)!r}: {key!r} holds {bad} NaN/inf value(s): the training diverged or "
                f"the file is damaged; use an earlier checkpoint"
            )


def _check_keys(model: MediatorDiT, state: dict[str, Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and isinstance(state[k], Tensor) and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append(f"shapes that do not fit: {'; '.join(wrong[:8])}")
    if problems:
        raise CheckpointError(
            f"the state dict does not match the architecture it describes ({model.config.depth} blocks, "
            f"width {model.config.hidden_size}, {model.config.mediators} mediators) — "
            + " | ".join(problems)
            + ". Is the file from a mediator DiT/SiT trained with the reference code?"
        )


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike, *, weights: str = "ema") -> tuple[dict[str, Tensor], CheckpointInfo]:
    """The prefix-free state dict in ``path`` and what the file is, without building a model."""
    path = Path(path)
    raw, kind = _read_raw(path)
    state, fmt, taken, extras = _pick_state_dict(raw, kind, weights, path)
    state = _strip_prefixes(state)
    name = extras.get("model_name")
    config = infer_config(state, name if isinstance(name, str) else None, extras.get("num_heads"))
    n_params = sum(v.numel() for k, v in state.items() if isinstance(v, Tensor) and k != "pos_embed")
    steps = extras.get("train_steps")
    return state, CheckpointInfo(
        str(path),
        fmt,
        taken,
        config,
        n_params,
        steps if isinstance(steps, int) else None,
        extras.get("data"),
        extras.get("sampling"),
    )


def check_attention(info: CheckpointInfo, attention: str | None, mediators: int | None = None) -> None:
    """Refuse a vanilla checkpoint where a mediator model is wanted (NotAMediatorModelError) and the reverse,
    saying how to build each. ``attention`` None takes whatever the file holds."""
    cfg = info.config
    if attention == "mediator" and cfg.is_full:
        want = f"a {mediators}-mediator model" if mediators else "a mediator model"
        raise NotAMediatorModelError(
            f"{info.path} is a plain (full-attention) DiT/SiT checkpoint, not {want}: its blocks have no "
            f"mediator-attention parameters ({', '.join(MEDIATOR_KEYS[:3])}, ...). Build it as the vanilla baseline "
            f"with `medexport build --attention full --checkpoint {info.path}`; mediator counts need models trained "
            f"with attention mediators (one checkpoint per count)"
        )
    if attention == "full" and not cfg.is_full:
        raise CheckpointError(
            f"{info.path} holds a {cfg.mediators}-mediator model, not a full-attention DiT/SiT: "
            f"drop --attention full and give it as --checkpoint {cfg.mediators}={info.path}"
        )


def load_checkpoint(
    path: str | os.PathLike, *, weights: str = "ema", device: str | torch.device = "cpu", attention: str | None = None
) -> MediatorDiT:
    """A mediator DiT/SiT (or a vanilla one) in eval mode with the weights of ``path``; the architecture is read
    off the file.

    Args:
        path: a trainer checkpoint, a bare state dict (torch.save) or a safetensors file.
        weights: "ema" (what the reference samples with) or "model", for trainer checkpoints.
        device: where to put the model.
        attention: "mediator" or "full" to refuse a file of the other kind; None (default) loads either.
    """
    state, info = read_checkpoint(path, weights=weights)
    check_attention(info, attention)
    with torch.device("meta"):
        model = MediatorDiT(info.config)
    _check_keys(model, state)
    _check_values(model, state, path)
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    # Non-persistent buffers are not in the state dict: rebuild them for the real model.
    for block in model.blocks if not info.config.is_full else ():
        block.attn.pool = pooling_matrix(info.config.grid_size, *info.config.mediator_grid)
        block.attn._bias_key = None
    model = model.to(device).eval()
    model.refresh_constants()
    model.checkpoint_info = info
    log.info("loaded %s (%s, %s weights)", path, info.format, info.weights)
    log.debug("%s: %s", path, info.config)  # the whole config: -vv
    return model


def save_checkpoint(
    model: MediatorDiT,
    path: str | os.PathLike,
    *,
    form: str = "state_dict",
    ema: MediatorDiT | None = None,
    args: argparse.Namespace | None = None,
) -> Path:
    """Write ``model`` as a "trainer" dict (with ``ema``, default: the same weights), a bare "state_dict", or
    "safetensors". Writes to a temporary name, then renames."""
    if form not in FORMATS:
        raise CheckpointError(f"unknown checkpoint form {form!r}: choose one of {', '.join(FORMATS)}")
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={"medexport_config": json.dumps(model.config.to_dict())})
    elif form == "trainer":
        ema_state = {k: v.detach().cpu() for k, v in (ema or model).state_dict().items()}
        torch.save({"model": state, "ema": ema_state, "opt": {}, "train_steps": 0, "args": args}, tmp)
    else:
        torch.save(state, tmp)
    os.replace(tmp, path)
    return path
