"""PNG plots of an evaluation report (matplotlib, optional: ``pip install clibd[plots]``).

* ``accuracy.png``: per query→key modality pair, micro top-1 accuracy at each rank for seen and
  unseen species and their harmonic mean — the paper's table as a picture;
* ``reliability.png``: per pair, the score of the call at each rank (binned) against how often that
  call is right, with the calibrated threshold marked: a well-behaved score rises with accuracy, and
  the threshold sits where accuracy reaches the target precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clibd_cli.errors import InputError
from clibd_cli.sequences import RANKS

GROUPS = (("seen", "#1f77b4"), ("unseen", "#ff7f0e"), ("harmonic", "#2ca02c"))
RANK_COLOURS = {"order": "#4c72b0", "family": "#55a868", "genus": "#c44e52", "species": "#8172b2"}


def require_matplotlib() -> None:
    """Fail with one line when matplotlib is missing (checked before an evaluation, not after it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("PNG plots need matplotlib: pip install 'clibd[plots]' (or leave out --plots).") from None


def _pyplot():
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: dict[str, Any], directory: Path) -> list[Path]:
    """Write the report's plots into ``directory``; returns the files written."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    return [_accuracy(plt, report, directory / "accuracy.png"),
            _reliability(plt, report, directory / "reliability.png")]


def _accuracy(plt, report: dict[str, Any], path: Path) -> Path:
    pairs = [p for p in report["pairs"] if report["closed_set"].get(p)]
    fig, axes = plt.subplots(1, max(1, len(pairs)), figsize=(4 * max(1, len(pairs)), 3.6), squeeze=False, sharey=True)
    width = 0.27
    for ax, pair in zip(axes[0], pairs, strict=False):
        entry = report["closed_set"][pair]
        for j, (group, colour) in enumerate(GROUPS):
            if group not in entry:
                continue
            values = [100 * entry[group][rank]["micro_top1"] for rank in RANKS]
            xs = [i + (j - 1) * width for i in range(len(RANKS))]
            ax.bar(xs, values, width, label=group, color=colour)
        ax.set_xticks(range(len(RANKS)), RANKS)
        ax.set_title(pair.replace("_to_", " → "))
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("micro top-1 accuracy (%)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper right", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{report.get('model', '')} — {report['split']} split, nearest keys", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _reliability(plt, report: dict[str, Any], path: Path) -> Path:
    pairs = [p for p in report["pairs"] if p in report["open_set"]]
    fig, axes = plt.subplots(1, max(1, len(pairs)), figsize=(4 * max(1, len(pairs)), 3.6), squeeze=False, sharey=True)
    for ax, pair in zip(axes[0], pairs, strict=False):
        entry = report["open_set"][pair]
        for rank in RANKS:
            points = entry["reliability"].get(rank, [])
            if not points:
                continue
            xs, ys = [p["score"] for p in points], [p["accuracy"] for p in points]
            sizes = [10 + 60 * p["n"] / max(q["n"] for q in points) for p in points]
            ax.plot(xs, ys, "-", color=RANK_COLOURS[rank], alpha=0.6)
            ax.scatter(xs, ys, s=sizes, color=RANK_COLOURS[rank], label=rank)
            threshold = entry["thresholds"].get(rank)
            if threshold is not None and threshold <= 1.0:
                ax.axvline(threshold, color=RANK_COLOURS[rank], linestyle=":", alpha=0.8)
        ax.set_title(f"{pair.replace('_to_', ' → ')} (AUROC absent {entry['auroc_species_absent']:.2f})", fontsize=9)
        ax.set_xlabel("score of the call (dotted: threshold)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy of the call")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper right", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"{report.get('model', '')} — reliability per rank ({report['split']}, seen keys only)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
