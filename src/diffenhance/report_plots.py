"""The report's figures, drawn with matplotlib's object API (Figure + Agg canvas).

No pyplot: figures are plain `matplotlib.figure.Figure` objects saved straight to PNG, so
nothing depends on a display or on global pyplot state, and the functions are thread-safe.
Every function writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from diffenhance.io import atomic_path

DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return path


def plot_training(
    log: pd.DataFrame,
    path: Path,
    *,
    val_label: str = "validation",
    reference: tuple[int, float, str] | None = None,
    steps_before: int = 0,
) -> Path:
    """Training loss (and lr) and validation PSNR/SSIM against the step, from train_log.csv.

    val_label: the validation line's legend (what `train.validate` measures: images, steps);
    reference: (step, PSNR, label) drawn as a star beside it: the same weights scored on the
    evaluation's images, so the two numbers can be read side by side; steps_before: training
    steps of the weights this run started from (fine-tuning; 0: from scratch), stated on the
    x axis because the log counts this run's steps only."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    xlabel = "step of this run" + (
        f" (started from weights trained {steps_before} steps)" if steps_before else ""
    )
    ax1.plot(log["step"], log["loss"], color="tab:blue", label="loss")
    ax1.set(xlabel=xlabel, ylabel="training loss", title="Training loss")
    ax1.grid(alpha=0.3)
    if "lr" in log:
        lr = ax1.twinx()
        lr.plot(log["step"], log["lr"], color="tab:gray", lw=1, ls=":", label="lr")
        lr.set_ylabel("learning rate", color="tab:gray")
    val = log.dropna(subset=["val_psnr"]) if "val_psnr" in log else log.iloc[:0]
    if len(val):
        ax2.plot(val["step"], val["val_psnr"], "o-", color="tab:green", label=val_label)
        if reference is not None:
            step, value, label = reference
            ax2.plot([step], [value], "*", ms=14, color="tab:red", label=label)
            last = float(val["val_psnr"].iloc[-1])
            for y, other, color in ((last, value, "tab:green"), (value, last, "tab:red")):
                up = y <= other  # each label on the side of the other point: inside the axes
                ax2.annotate(f"{y:.2f}", (step, y), textcoords="offset points",
                             xytext=(-8, 5 if up else -5), ha="right",
                             va="bottom" if up else "top", color=color)  # fmt: skip
        ax2.set(xlabel=xlabel, ylabel="PSNR RGB (dB)", title="Validation during training")
        if "val_ssim" in val:
            s = ax2.twinx()
            s.plot(val["step"], val["val_ssim"], "s--", color="tab:orange")
            s.set_ylabel("SSIM RGB", color="tab:orange")
        # below the panel: inside, it hides the star or the SSIM line
        ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
        ax2.grid(alpha=0.3)
    else:
        ax2.text(0.5, 0.5, "no validation rows in train_log.csv", ha="center", va="center")
        ax2.set_axis_off()
    return _save(fig, path)


def _steps_axis(ax, steps: Sequence[int]) -> None:
    """x axis of sampler steps: log scale over a wide range, a labelled tick at each count."""
    ax.set_xlabel("sampler steps")
    if len(steps) > 1 and max(steps) / max(1, min(steps)) >= 8:
        ax.set_xscale("log")
    ax.set_xticks(list(steps), [str(s) for s in steps])
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_psnr_vs_steps(
    curve: pd.DataFrame, baselines: dict[str, dict[str, float]], path: Path
) -> Path:
    """Mean PSNR-Y, SSIM-Y and (when present) sharpness of the model against sampler steps;
    baselines as dashed lines. `baselines` = {column: {baseline: value}}."""
    names = list(dict.fromkeys(b for values in baselines.values() for b in values))
    flat = pd.DataFrame(
        [{"formulation": b, "steps": 1, "samples": 1,
          **{col: values.get(b, np.nan) for col, values in baselines.items()}} for b in names]
    )  # fmt: skip
    model = curve.assign(formulation="model", samples=1)
    return plot_formulation_curves(pd.concat([model, flat], ignore_index=True), names, path)


def plot_scatter(gain: pd.DataFrame, baseline: str, model: str, path: Path) -> Path:
    """Per-image PSNR-Y of the model (y) against the baseline (x), with the diagonal."""
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    x, y = gain["baseline"].to_numpy(), gain["model"].to_numpy()
    ax.scatter(x, y, s=28, color="tab:blue", edgecolor="white", zorder=3)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = max(0.5, 0.05 * (hi - lo))
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="tab:gray", lw=1)
    ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad), aspect="equal")
    ax.set(xlabel=f"{baseline} PSNR Y (dB)", ylabel=f"{model} PSNR Y (dB)",
           title=f"{len(gain)} images: {int((gain['gain'] > 0).sum())} above the diagonal")  # fmt: skip
    ax.grid(alpha=0.3)
    return _save(fig, path)


def zoom_box(hr: np.ndarray, size: int, margin: int = 0) -> tuple[int, int, int]:
    """(top, left, side) of the square with the most detail (gradient energy) in an HxWx3 image.

    side = min(size, H // 2, W // 2) (at least 4 px, at most the image). The square stays
    `margin` px inside the image where it has room (the metrics' border crop: a square flush
    with the corner shows pixels no score counts, and its outline vanishes into the panel's
    frame). Deterministic: on a grid of stride side // 4, of the squares with the most energy
    the one nearest the centre (a flat image: the centre, not the corner (0, 0))."""
    h, w = hr.shape[:2]
    side = max(4, min(size, h // 2, w // 2))
    side = min(side, h, w)
    m = max(0, min(margin, (h - side) // 2, (w - side) // 2))
    g = hr.mean(axis=2, dtype=np.float64)
    energy = np.zeros((h, w))
    energy[:, 1:] += np.abs(np.diff(g, axis=1))
    energy[1:, :] += np.abs(np.diff(g, axis=0))
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    stride = max(1, side // 4)
    tops = np.arange(m, h - side - m + 1, stride)
    lefts = np.arange(m, w - side - m + 1, stride)
    t, c = np.meshgrid(tops, lefts, indexing="ij")
    e = (
        integral[t + side, c + side]
        - integral[t, c + side]
        - integral[t + side, c]
        + integral[t, c]
    )
    # ties within rounding (cumulative sums differ in the last bits): nearest the centre wins
    best = e >= e.max() - 1e-9 * max(1.0, float(e.max()))
    dist = (t + side / 2 - h / 2) ** 2 + (c + side / 2 - w / 2) ** 2
    k = np.flatnonzero(best.ravel())[np.argmin(dist.ravel()[best.ravel()])]
    return int(t.ravel()[k]), int(c.ravel()[k]), side


def _nearest_up(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of HxWx3 to `shape` (shows LQ pixels as they are)."""
    h, w = img.shape[:2]
    rows = (np.arange(shape[0]) * h // shape[0]).clip(0, h - 1)
    cols = (np.arange(shape[1]) * w // shape[1]).clip(0, w - 1)
    return img[rows][:, cols]


def crop_figure(
    *,
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    scores: Sequence[float | None],
    zoom_size: int,
    path: Path,
    margin: int = 0,
) -> Path:
    """Panels side by side (e.g. LQ | baseline | model | ground truth), full view with the zoom
    region outlined above the zoom itself.

    Images float32 HxWx3 in [0, 1]; the LAST one is the ground truth: it sets the size and the
    zoom region (`zoom_box`, `margin` px inside the border), and any panel of another size (the
    LQ input) is shown nearest-upscaled to it. `scores` are PSNR-Y values printed under the
    labels (None: nothing)."""
    hr = images[-1]
    shape = hr.shape[:2]
    panels = [im if im.shape[:2] == shape else _nearest_up(im, shape) for im in images]
    top, left, side = zoom_box(hr, zoom_size, margin)
    n = len(panels)
    fig = Figure(figsize=(3 * n, 6.4), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for j, (img, label, s) in enumerate(zip(panels, labels, scores, strict=True)):
        img = np.clip(img, 0.0, 1.0)
        title = label if s is None else f"{label}\nPSNR-Y {s:.2f} dB"
        axes[0, j].imshow(img, interpolation="nearest")
        axes[0, j].add_patch(
            Rectangle((left - 0.5, top - 0.5), side, side, fill=False, ec="red", lw=1.5)
        )
        axes[0, j].set_title(title, fontsize=10)
        axes[1, j].imshow(img[top : top + side, left : left + side], interpolation="nearest")
        axes[1, j].set_title(f"zoom {side}x{side} px at ({left}, {top})", fontsize=8)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    return _save(fig, path)


def plot_formulation_curves(curves: pd.DataFrame, flat: Sequence[str], path: Path) -> Path:
    """PSNR-Y, SSIM-Y and (when present) sharpness against sampler steps, one line per
    formulation (single samples); the names in `flat` (baselines, regression: no steps) as
    dashed lines, and each formulation's fidelity end (averaged samples) as a hollow marker."""
    lines = curves[~curves["formulation"].isin(flat)]
    panels = [("psnr_y", "PSNR Y (dB)"), ("ssim_y", "SSIM Y")]
    if "hf_ratio" in curves and lines["hf_ratio"].notna().any():
        panels.append(("hf_ratio", "sharpness (HF ratio)"))
    fig = Figure(figsize=(4.6 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels))
    colors = dict(zip(curves["formulation"].unique(),
                      ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                       "tab:brown", "tab:gray"], strict=False))  # fmt: skip
    steps = sorted(lines["steps"].unique())
    for ax, (col, label) in zip(axes, panels, strict=True):
        for f, g in curves.groupby("formulation", sort=False):
            one = g[g["samples"] == 1].sort_values("steps")
            color = colors.get(f, "black")
            if f in flat:
                if np.isfinite(one[col].iloc[0]):
                    ax.axhline(one[col].iloc[0], ls="--", lw=1.2, color=color, label=f)
                continue
            ax.plot(one["steps"], one[col], "o-", color=color, label=f)
            avg = g[g["samples"] > 1]
            if len(avg):
                n = int(avg["samples"].iloc[0])
                ax.plot(avg["steps"], avg[col], "D", mfc="none", ms=9, color=color,
                        label=f"{f}, mean of {n}")  # fmt: skip
        ax.set(ylabel=label, title=f"{label} vs steps")
        _steps_axis(ax, steps)
        if col == "hf_ratio":
            ax.axhline(1.0, ls=":", lw=1.2, color="black", label="ground truth")
            hf = lines[col].dropna()
            if hf.min() > 0 and hf.max() / hf.min() > 50:
                ax.set_yscale("log")  # an untrained or diverged model's noise dwarfs the rest
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


__all__ = [
    "crop_figure",
    "plot_formulation_curves",
    "plot_psnr_vs_steps",
    "plot_scatter",
    "plot_training",
    "zoom_box",
]
