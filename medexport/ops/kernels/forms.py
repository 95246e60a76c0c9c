"""Which form of mediator attention runs on CUDA for a shape: the fastest one measured, from a table.

The forms compute the same thing (the op's contract):

* ``triton``: the fused Triton kernel (one launch),
* ``split``: its split-N form (stage 1 over chunks of keys, a merge, stage 2 per query tile),
* ``sdpa``: two ``scaled_dot_product_attention`` calls with the position biases as float masks (cuDNN / flash
  kernels, which win at few tokens and small batches),
* ``reference``: plain matmul, softmax, matmul, twice.

``forms.json`` beside this file holds the milliseconds of each form per measured shape, written by
``benchmarks/bench_mediator_kernel.py --write-table`` on a GPU (its header says which GPU, dtype and versions).
:func:`choose` picks, for a shape, the fastest correct form of the measured shape nearest to it (token count,
mediator count, batch x heads, on a log scale); on a GPU other than the table's, or a dtype the table does not
hold, it keeps the fused kernel. Nothing here is guessed: a form is chosen only from a time measured for it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

FORMS = ("triton", "split", "sdpa", "reference")
TABLE_FILE = Path(__file__).with_name("forms.json")
DEFAULT_FORM = "triton"


def sdpa_mediator_attention(
    q: Tensor, k: Tensor, v: Tensor, m: Tensor, bias_mk: Tensor, bias_qm: Tensor, scale: float
) -> Tensor:
    """Mediator attention as two fused-attention calls; the biases ride along as additive float masks."""
    B = q.shape[0]
    v_m = F.scaled_dot_product_attention(m, k, v, attn_mask=bias_mk.to(q.dtype).expand(B, -1, -1, -1), scale=scale)
    o = F.scaled_dot_product_attention(q, m, v_m, attn_mask=bias_qm.to(q.dtype).expand(B, -1, -1, -1), scale=scale)
    return o.contiguous()


@dataclass(frozen=True)
class Row:
    tokens: int  # N
    mediators: int  # n
    batch_heads: int  # B * H
    head_dim: int
    ms: dict  # form -> milliseconds

    @property
    def fastest(self) -> str:
        return min(self.ms, key=self.ms.get)


@dataclass(frozen=True)
class FormTable:
    """Measured times per shape for one GPU and dtype (``forms.json``)."""

    gpu: str
    dtype: str
    rows: tuple[Row, ...]
    source: str = ""

    @classmethod
    def from_dict(cls, d: object) -> FormTable:
        if not isinstance(d, dict) or not isinstance(d.get("rows"), list):
            raise ValueError("a form table is an object with 'gpu', 'dtype' and 'rows'")
        rows = []
        for i, r in enumerate(d["rows"]):
            try:
                ms = {f: float(t) for f, t in r["ms"].items() if f in FORMS and t is not None}
                row = Row(int(r["tokens"]), int(r["mediators"]), int(r["batch_heads"]), int(r["head_dim"]), ms)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"row {i} of the form table is malformed ({e})") from None
            if not ms or any(not (t > 0 and math.isfinite(t)) for t in ms.values()):
                raise ValueError(f"row {i} of the form table has no positive time for any form")
            rows.append(row)
        return cls(str(d.get("gpu", "")), str(d.get("dtype", "")), tuple(rows), str(d.get("source", "")))

    def to_dict(self) -> dict:
        return {
            "gpu": self.gpu,
            "dtype": self.dtype,
            "source": self.source,
            "rows": [
                {
                    "tokens": r.tokens,
                    "mediators": r.mediators,
                    "batch_heads": r.batch_heads,
                    "head_dim": r.head_dim,
                    "ms": r.ms,
                }
                for r in self.rows
            ],
        }

    def nearest(self, tokens: int, mediators: int, batch_heads: int, head_dim: int) -> Row | None:
        def distance(r: Row) -> float:
            return sum(
                abs(math.log(max(1, a)) - math.log(max(1, b)))
                for a, b in (
                    (r.tokens, tokens),
                    (r.mediators, mediators),
                    (r.batch_heads, batch_heads),
                    (r.head_dim, head_dim),
                )
            )

        return min(self.rows, key=distance) if self.rows else None

    def choose(self, tokens: int, mediators: int, batch_heads: int, head_dim: int) -> str:
        row = self.nearest(tokens, mediators, batch_heads, head_dim)
        return row.fastest if row is not None else DEFAULT_FORM


@functools.cache
def shipped_table() -> FormTable | None:
    """The table that ships beside this file; None (the fused kernel everywhere) when absent or unreadable."""
    try:
        return FormTable.from_dict(json.loads(TABLE_FILE.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring %s (%s): mediator attention on CUDA uses the fused kernel for every shape", TABLE_FILE, e)
        return None


def choose(q: Tensor, m: Tensor, table: FormTable | None = None) -> str:
    """The form to run for these operands on their device: from ``table`` (default: the shipped one) when it
    was measured on this GPU model for this dtype, else the fused kernel."""
    table = table if table is not None else shipped_table()
    if table is None or str(q.dtype).removeprefix("torch.") != table.dtype:
        return DEFAULT_FORM
    if q.device.type == "cuda" and torch.cuda.get_device_name(q.device) != table.gpu:
        return DEFAULT_FORM
    B, H, N, d = q.shape
    return table.choose(N, m.shape[2], B * H, d)


__all__ = [
    "DEFAULT_FORM",
    "FORMS",
    "FormTable",
    "Row",
    "TABLE_FILE",
    "choose",
    "sdpa_mediator_attention",
    "shipped_table",
]
