"""A bench report as tables of text, defined once: ``medexport bench`` prints them with rich, the GPU script
(``benchmarks/bench_gpu_pipeline.py``) as Markdown, so both say the same thing in the same words."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextTable:
    """A titled table of strings (the first column left-aligned, the others right-aligned) and the lines that
    follow it."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()

    def markdown(self) -> str:
        lines = [f"**{self.title}**", ""]
        if self.columns:
            lines.append("| " + " | ".join(self.columns) + " |")
            lines.append("|" + "|".join(["---"] + ["---:"] * (len(self.columns) - 1)) + "|")
            lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + list(self.notes)
        return "\n".join(lines) + "\n"


def _num(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _pct(fraction) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def ceilings_table(report: dict) -> TextTable | None:
    c = report.get("ceilings")
    if not c:
        return None
    return TextTable(
        f"ceilings measured in this run on {c['device']}",
        ("measure", "size", "rate"),
        (
            (f"matmul {c['matmul_dtype']}", f"{c['matmul_side']}^3", f"{c['matmul_tflops']:.4g} TFLOP/s"),
            (
                "device-to-device copy (read + written)",
                f"{c['copy_bytes'] / 2**20:.0f} MiB",
                f"{c['copy_gbps']:.0f} GB/s",
            ),
        ),
    )


def forward_table(report: dict) -> TextTable:
    title = (
        f"per forward: {report['backend']} {report['precision']} on {report['device']}, {report['tokens']} "
        f"tokens, forward batch {report['forward_batch']} (median of {report['rounds']} rounds)"
    )
    rows = []
    for r in report["forward"]:
        vanilla = r["mediators"] == "full"
        rows.append(
            (
                r["mediators"] + (" (vanilla)" if vanilla else ""),
                f"{r['gflops']:.3f}",
                f"{r['ms']:.2f}",
                _num(r.get("tflops"), ".3g"),
                _pct(r.get("mfu")),
                "-" if vanilla else f"{r['predicted_ratio']:.2f}x",
                "-" if vanilla else f"{r['measured_ratio']:.2f}x",
            )
        )
    return TextTable(
        title,
        ("mediators", "GFLOPs", "ms", "TFLOP/s", "MFU", "FLOPs predict", "measured"),
        tuple(rows),
        ("MFU: model FLOP/s over the measured matmul rate; GFLOPs: multiply-adds per image",),
    )


def attention_table(report: dict) -> TextTable | None:
    rows = report.get("attention")
    if not rows:
        return None
    full = next((r for r in rows if r["mediators"] == "full"), None)
    out = []
    for r in rows:
        vs = (
            f"{r['between_ms'] / full['between_ms']:.2f}x"
            if full is not None and full["between_ms"] > 0 and r is not full
            else "-"
        )
        out.append(
            (
                r["mediators"] + (" (vanilla)" if r is full else ""),
                f"{r['module_ms']:.3f}",
                f"{r['linears_ms']:.3f}",
                f"{r['between_ms']:.3f}",
                f"{r['bytes'] / 1e6:.1f}",
                _num(r["gbps"], ".0f"),
                _pct(r["copy_fraction"]),
                vs,
            )
        )
    return TextTable(
        f"attention part of one block (block 0's attn module, batch {rows[0]['batch']}, {rows[0]['tokens']} tokens)",
        ("mediators", "module ms", "qkv + proj ms", "between ms", "MB moved", "GB/s", "of copy", "vs vanilla"),
        tuple(out),
        (
            "module: the attention module's forward, both projections included; between = module - "
            "(qkv + proj), each timed alone (an estimate from two timings); MB moved: q, k, v read and "
            "the output written once, plus biases, pooling and conv weights",
        ),
    )


def end_to_end_table(report: dict) -> TextTable:
    e, s = report["end_to_end"], report["settings"]
    title = (
        f"end to end: {e['images']} images, {s['sampler']} {s['method']} {s['steps']} steps, cfg "
        f"{s['cfg_scale']:g}, schedule {e['schedule'] or 'largest count'} (median of {report['runs']} runs)"
    )
    start = report.get("startup") or {}
    rows = [
        ("images / s", lambda r, _: f"{r['images_per_second']:.3f}"),
        ("seconds per run", lambda r, _: f"{r['batch_seconds']:.3f}"),
        ("GFLOPs / image", lambda r, _: f"{r['gflops_per_image']:.4g}"),
        ("TFLOP/s (MFU)", lambda r, _: f"{_num(r.get('tflops'), '.3g')} ({_pct(r.get('mfu'))})"),
        ("peak memory, all engines resident (MiB)", lambda r, _: f"{(r['peak_memory_bytes'] or 0) / 2**20:.0f}"),
        ("engines opened (s)", lambda _, u: _num(u.get("open_seconds"), ".2f")),
        (
            "engines warmed: first calls, graphs captured or compiled (s)",
            lambda _, u: _num(u.get("warm_seconds"), ".2f"),
        ),
    ]
    table_rows = tuple(
        (label, fmt(e["medexport"], start.get("medexport", {})), fmt(e["vanilla"], start.get("vanilla", {})))
        for label, fmt in rows
    )
    notes = [
        f"speed-up over the vanilla engine: measured {e['measured_ratio']:.2f}x, FLOPs predict "
        f"{e['predicted_ratio']:.2f}x ({100 * e['measured_ratio'] / e['predicted_ratio']:.0f}% of it)"
    ]
    cache = start.get("compile_cache")
    if cache:
        start_kind = "cold" if not cache["hits"] else "warm" if not cache["misses"] else "partly warm"
        notes.append(
            f"inductor cache {cache['dir']}: {cache['hits']} compiled graphs loaded, {cache['misses']} "
            f"compiled and saved ({start_kind} start)"
        )
    return TextTable(title, ("", "medexport", "vanilla"), table_rows, tuple(notes))


def profile_table(report: dict) -> TextTable | None:
    p = report.get("profile")
    if not p:
        return None

    def cell(side: dict) -> str:
        return "-" if side["ms"] is None else f"{side['ms']:.3f} ({side['calls']})"

    rows = tuple(
        (r["name"] if len(r["name"]) <= 70 else r["name"][:67] + "...", cell(r["medexport"]), cell(r["vanilla"]))
        for r in p["rows"]
    )
    rows += (
        (
            "all, [distinct names]",
            f"{p['total_ms']['medexport']:.3f} [{p['entries']['medexport']}]",
            f"{p['total_ms']['vanilla']:.3f} [{p['entries']['vanilla']}]",
        ),
    )
    return TextTable(
        f"profile of one forward, batch {p['batch']}: {p['mediators']} mediators against the vanilla "
        f"model ({p['unit']}, top {len(p['rows'])})",
        ("op", "medexport ms (calls)", "vanilla ms (calls)"),
        rows,
    )


def bench_tables(report: dict) -> list[TextTable]:
    """Every table of a bench report, in the order they print."""
    tables = [
        ceilings_table(report),
        forward_table(report),
        attention_table(report),
        end_to_end_table(report),
        profile_table(report),
    ]
    return [t for t in tables if t is not None]


__all__ = [
    "TextTable",
    "attention_table",
    "bench_tables",
    "ceilings_table",
    "end_to_end_table",
    "forward_table",
    "profile_table",
]
