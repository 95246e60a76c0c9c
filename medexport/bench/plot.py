"""``bench.png``: the per-forward times and the measured against the predicted speed-ups of a bench report."""

from __future__ import annotations

from pathlib import Path

from ..core.files import replacing


def plot_bench(path: Path, report: dict) -> Path:
    """Two panels: ms per forward of each count beside the vanilla engine, and measured against predicted
    speed-ups (per forward and end to end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["forward"]
    labels = [r["mediators"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = ["tab:gray" if lab == "full" else "tab:blue" for lab in labels]
    ax1.bar(labels, [r["ms"] for r in rows], color=colours)
    ax1.set_xlabel("mediators (full: the vanilla engine)")
    ax1.set_ylabel(f"ms per forward (batch {report['forward_batch']})")
    ax1.grid(axis="y", alpha=0.3)
    names = [r["mediators"] for r in rows if r["mediators"] != "full"] + ["schedule"]
    e2e = report["end_to_end"]
    predicted = [r["predicted_ratio"] for r in rows if r["mediators"] != "full"] + [e2e["predicted_ratio"]]
    measured = [r["measured_ratio"] for r in rows if r["mediators"] != "full"] + [e2e["measured_ratio"]]
    xs = range(len(names))
    ax2.bar([x - 0.2 for x in xs], predicted, width=0.4, label="FLOPs predict", color="tab:orange")
    ax2.bar([x + 0.2 for x in xs], measured, width=0.4, label="measured", color="tab:blue")
    ax2.axhline(1.0, color="0.3", linewidth=0.8)
    ax2.set_xticks(list(xs), names)
    ax2.set_ylabel("speed-up over the vanilla engine")
    ax2.legend(frameon=False, fontsize=8)
    ax2.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{Path(report['bundle']).name} vs {Path(report['vanilla']).name}: {report['backend']} "
        f"{report['precision']} on {report['device']}, {report['tokens']} tokens, "
        f"{report.get('threads') or 'all'} threads",
        fontsize=10,
    )
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


__all__ = ["plot_bench"]
