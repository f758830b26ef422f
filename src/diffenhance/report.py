"""The `report` stage: one self-contained HTML page per evaluation, with tables and plots.

`build_report(eval_dir, out_dir, cfg)` reads what `evaluate` wrote (metrics.json, timing.json,
protocol.json, per_image.csv, psnr_vs_steps.csv, images/) and writes:

  report.html  summary (protocol, sampler, steps, seeds), PSNR/SSIM of every method, the
               headline model against every baseline with deltas, plots and side-by-side crops;
               every image is embedded as a base64 PNG data URI and there is no external URL,
               so the file opens the same from disk, S3 or an e-mail attachment.
  plots/       the same figures as PNG files: training.png (from the train_log.csv, when
               given), psnr_vs_steps.png, scatter.png, crop_best_*.png, crop_worst_*.png.

Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure`, Agg canvas): no
pyplot state, no display needed. `summary_markdown` and `method_table` give the text and rows
that the flow publishes as Prefect artifacts.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from diffenhance.config import ReportConfig
from diffenhance.evaluate import Evaluation, load_evaluation
from diffenhance.io import atomic_path
from diffenhance.markdown import markdown_table
from diffenhance.metrics import MAX_GRAIN_SCORE, MIN_EDGE_COHERENCE, PSNR_CAP_DB
from diffenhance.report_plots import (
    crop_figure,
    plot_psnr_vs_steps,
    plot_scatter,
    plot_training,
)

METRIC_LABELS = {"psnr_rgb": "PSNR RGB (dB)", "ssim_rgb": "SSIM RGB",
                 "psnr_y": "PSNR Y (dB)", "ssim_y": "SSIM Y",
                 "psnr_mask": "PSNR in the hole (dB)", "ssim_mask": "SSIM in the hole"}  # fmt: skip


def scored(ev: Evaluation) -> list[str]:
    """The METRIC_LABELS keys this evaluation has (the hole's only for inpainting)."""
    return [k for k in METRIC_LABELS if f"model_{k}" in ev.metrics]


HF_LABEL = "sharpness (HF ratio, 1 = truth)"


@dataclass(frozen=True)
class Report:
    html: Path
    plots: list[Path]
    markdown: str
    table: list[dict[str, Any]]


# ----------------------------------------------------------------------------- tables


def method_table(ev: Evaluation) -> list[dict[str, Any]]:
    """One row per method (model step counts, then baselines): mean metrics and seconds/image."""
    rows = []
    methods = [m for m in ev.per_image["method"].unique() if m.startswith("model_")]
    for m in methods + ev.baselines:
        row: dict[str, Any] = {"method": m + (" (headline)" if m == ev.headline else "")}
        row |= {k: ev.metrics[f"{m}_{k}"] for k in scored(ev)}
        row["hf_ratio"] = ev.metrics.get(f"{m}_hf_ratio")  # sharpness; absent: undefined
        row["seconds_per_image"] = ev.timing.get(f"{m}_seconds_per_image")
        rows.append(row)
    return rows


def delta_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """Headline model vs each baseline: (baseline, metric, baseline value, model value, delta)."""
    return [
        {"baseline": b, "metric": k, "baseline_value": ev.metrics[f"{b}_{k}"],
         "model_value": ev.metrics[f"model_{k}"], "delta": ev.metrics[f"delta_{k}_vs_{b}"]}
        for b in ev.baselines for k in scored(ev)
    ]  # fmt: skip


def per_image_gain(ev: Evaluation, baseline: str | None = None) -> pd.DataFrame:
    """Per image: headline model PSNR-Y (mean over seeds), baseline PSNR-Y and the gain, sorted
    best first (PSNR capped at 100 dB so identical images stay finite)."""
    b = baseline or ev.protocol["reference_baseline"]
    df = ev.per_image
    model = df[df["method"] == ev.headline].groupby("image")["psnr_y"].mean()
    base = df[df["method"] == b].set_index("image")["psnr_y"]
    out = pd.DataFrame({"model": model, "baseline": base.reindex(model.index)}).clip(
        upper=PSNR_CAP_DB
    )
    out["gain"] = out["model"] - out["baseline"]
    return out.sort_values(["gain", "model"], ascending=False, kind="stable")


def pick_crops(gain: pd.DataFrame, n: int) -> list[tuple[str, str]]:
    """[('best', name), ..., ('worst', name), ...]: the n highest and n lowest gains, no image
    twice (with fewer than 2n images, the upper half is best and the lower half worst). The
    halves name the files (crop_best_*, crop_worst_*); captions say `crop_label`."""
    names = list(gain.index)
    best = names[: min(n, (len(names) + 1) // 2)]
    worst = [x for x in reversed(names) if x not in best][:n]
    return [("best", x) for x in best] + [("worst", x) for x in worst]


def crop_label(which: str, gain: float) -> str:
    """What a crop of `pick_crops`' half `which` is called: 'worst' only for a loss (gain < 0).
    With few images the lower half holds images the model still improves: their caption says
    'lowest gain', not 'worst' beside a positive number."""
    return "lowest gain" if which == "worst" and gain >= 0 else which


def fmt_metric(metric: str, v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    spec = ".2f" if metric.startswith("psnr") else ".4f"
    return format(v, ("+" if signed else "") + spec)


def _spec_text(spec: dict[str, Any] | None) -> str:
    """The headline's SamplingSpec as one line (older protocol.json files have none)."""
    if not spec:
        return "- (evaluated before the one restore path)"
    return ", ".join(f"{k} {v}" for k, v in spec.items()) + " (diffenhance enhance's restore path)"


def _sampler_text(p: dict[str, Any]) -> str:
    """The sampler the model's formulation ran, and the configured one (evaluate.sampler, else
    infer.sampler) when that is another (a flow's Euler steps, InDI's iteration: ddim/ddpm do
    not apply to them)."""
    given = (p.get("sampling") or {}).get("sampler", p["sampler"])
    unused = "" if given == p["sampler"] else f"; the configured sampler {given} does not apply"
    return f"{p['sampler']} (eta {p['eta']}){unused}"


def _runs(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The training runs behind the evaluated weights before their own (protocol.json's
    model.init_from chain, newest first); [] for a model trained from scratch."""
    runs, rec = [], model.get("init_from")
    while isinstance(rec, dict):
        runs.append(rec)
        rec = rec.get("init_from")
    return runs


def steps_before(model: dict[str, Any]) -> int:
    """Training steps of the weights the evaluated model was fine-tuned from (0: from
    scratch, or an evaluation that predates model.init_from)."""
    return sum(int(r.get("step") or 0) for r in _runs(model))


def provenance(model: dict[str, Any]) -> str:
    """How the evaluated weights were trained, in words: 'training step 300' from scratch;
    a fine-tuned model names every run it descends from, and their steps in all."""
    step, runs = model.get("step", "?"), _runs(model)
    if not runs:
        return f"training step {step}"
    chain = ", itself from ".join(
        f"{r.get('path') or '?'} ({r.get('formulation') or '?'}, {r.get('step', '?')} steps)"
        for r in runs
    )
    steps = [str(r.get("step", "?")) for r in reversed(runs)] + [str(step)]
    total = f" = {steps_before(model) + int(step)}" if str(step).isdigit() else ""
    return f"fine-tuned {step} steps from {chain}: {' + '.join(steps)}{total} steps in all"


def summary_items(ev: Evaluation) -> list[tuple[str, str]]:
    """(label, value) rows of the summary table: what was measured, and how."""
    p = ev.protocol
    model = p.get("model") or {}
    src = p.get("source") or {}
    items = [
        ("task", f"{p['task']} (scale x{p['scale']})"),
        ("images", f"{p['n_images']} from {src.get('kind', '?')} {src.get('path', '')}"),
    ]
    items += [(f"protocol {q['name']}", q["description"]) for q in p["protocols"]]
    items += [
        ("sampler", _sampler_text(p)),
        ("steps", f"{p['headline_steps']} (headline); evaluated: {', '.join(map(str, p['steps']))}"),
        ("seeds", ", ".join(map(str, p["seeds"]))),
        ("samples averaged", str(p["average_samples"])),
        ("restore (SamplingSpec)", _spec_text(p.get("sampling"))),
        ("noise seeding", p["noise_seeding"]),
        ("model", f"{model.get('path', '?')} ({provenance(model)})"),
        ("formulation", model.get("formulation", "sr3 (checkpoint predates formulations)")),
        ("device", f"{p['device']}, {p['autocast']}"
                   + (f", {p['threads']} CPU threads" if "threads" in p else "")),
        ("baselines", ", ".join(p["baselines"])),
        ("seconds per image", f"{ev.timing.get('seconds_per_image', float('nan')):.3f} (headline model)"),
    ]  # fmt: skip
    items += _uncertainty_items(p.get("uncertainty"))
    items += [("note", n) for n in p.get("notes", [])]
    return items


def _uncertainty_items(unc: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The summary row of the uncertainty evaluation (none for evaluations that predate it)."""
    if not unc:
        return []
    if "mean" not in unc:
        return [("uncertainty", f"not measured: {unc.get('skipped')}")]
    m, (lo, hi) = unc["mean"], unc["std_range"]
    corr = ", ".join(
        f"{k.capitalize()} {'-' if m[k] is None else format(m[k], '.3f')}"
        for k in ("pearson", "spearman")
    )
    return [(
        f"uncertainty (std of {unc['samples']} samples vs |error|)",
        f"{corr} (mean over images); mean std {fmt_metric('std', m['std_mean'])}; maps: "
        f"{unc['colormap']}, std {lo:g} black to {hi:g} yellow (saturated above)",
    )]  # fmt: skip


def summary_markdown(ev: Evaluation, report_path: str | Path | None = None) -> str:
    """Markdown summary (for a Prefect artifact): protocol, headline metrics, deltas."""
    lines = [f"# Evaluation of `{ev.protocol['task']}`", ""]
    lines += markdown_table(["", ""], summary_items(ev))
    rows = []
    for r in method_table(ev):
        vals = [fmt_metric(k, r[k]) for k in (*scored(ev), "hf_ratio")]
        rows.append([r["method"], *vals, fmt_metric("seconds", r["seconds_per_image"])])
    header = ["method", *(METRIC_LABELS[k] for k in scored(ev)), HF_LABEL, "s/image"]
    lines += ["", *markdown_table(header, rows)]
    lines += ["", "Headline model minus baseline:", ""]
    for b in ev.baselines:
        d = ", ".join(
            f"{METRIC_LABELS[k]} {fmt_metric(k, ev.metrics[f'delta_{k}_vs_{b}'], True)}"
            for k in scored(ev)
        )
        lines.append(f"- vs **{b}**: {d}")
    if report_path:
        lines += ["", f"Report: `{report_path}`"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:24px;
color:#1b1b1b;background:#fff;max-width:1200px}
h1{font-size:1.6em;margin:0 0 .3em}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}.pos{color:#0a7a2f}.neg{color:#b3261e}
.head{font-weight:600;background:#fffbe6}img{max-width:100%;height:auto;display:block;margin:.5em 0}
.note{color:#555;font-size:.9em}figure{margin:0 0 1.2em}figcaption{color:#555;font-size:.9em}
"""

# Marks every <img> with data-decoded="1|0" once the page has loaded, and logs failures to the
# console, so a headless browser (tests/test_report.py) can check that every image decoded.
_SCRIPT = """
window.addEventListener('load', function () {
  var bad = 0;
  document.querySelectorAll('img').forEach(function (im) {
    var ok = im.complete && im.naturalWidth > 0;
    im.setAttribute('data-decoded', ok ? '1' : '0');
    if (!ok) { bad++; console.error('report: image failed to decode: ' + im.alt); }
  });
  document.body.setAttribute('data-images-ok', bad === 0 ? '1' : '0');
});
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_figure(path: Path, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img src="{data_uri(path.read_bytes())}" alt="{html.escape(alt)}">{cap}</figure>'
    )


def html_table(
    header: list[str], rows: list[list[str]], left: int = 1, cls: list[str] | None = None
) -> str:
    th = "".join(
        f'<th class="l">{html.escape(h)}</th>' if i < left else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(header)
    )
    body = []
    for j, r in enumerate(rows):
        tds = "".join(
            f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        attr = f' class="{cls[j]}"' if cls and cls[j] else ""
        body.append(f"<tr{attr}>{tds}</tr>")
    head = f"<tr>{th}</tr>" if any(header) else ""
    return f"<table>{head}{''.join(body)}</table>"


def signed_metric(metric: str, v: float) -> str:
    cls = "pos" if v > 0 else "neg" if v < 0 else ""
    return f'<span class="{cls}">{fmt_metric(metric, v, True)}</span>'


def render_html(ev: Evaluation, figures: dict[str, list[tuple[Path, str]]], title: str) -> str:
    """The report page; `figures` maps a section title to (png, caption) pairs to embed."""
    esc = html.escape
    parts = [f"<h1>{esc(title)}</h1>", "<h2>Summary</h2>"]
    parts.append(html_table(["", ""], [[esc(k), esc(v)] for k, v in summary_items(ev)], left=2))
    mt = method_table(ev)
    parts.append("<h2>All methods (mean over images)</h2>")
    parts.append(html_table(
        ["method", *(METRIC_LABELS[k] for k in scored(ev)), HF_LABEL, "s / image"],
        [[esc(r["method"]), *(fmt_metric(k, r[k]) for k in (*scored(ev), "hf_ratio")),
          fmt_metric("seconds", r["seconds_per_image"])] for r in mt],
        cls=["head" if "(headline)" in r["method"] else "" for r in mt],
    ))  # fmt: skip
    parts.append(f"<h2>Headline model ({esc(ev.headline)}) against every baseline</h2>")
    parts.append(html_table(
        ["baseline", "metric", "baseline", "model", "delta (model - baseline)"],
        [[esc(d["baseline"]), esc(METRIC_LABELS[d["metric"]]), fmt_metric(d["metric"], d["baseline_value"]),
          fmt_metric(d["metric"], d["model_value"]), signed_metric(d["metric"], d["delta"])]
         for d in delta_rows(ev)],
        left=2,
    ))  # fmt: skip
    parts.append(
        '<p class="note">PSNR is averaged in dB with each image capped at 100 dB. Sharpness is the '
        "high-frequency energy of the Y channel relative to the ground truth (above a quarter of "
        "Nyquist; metrics.hf_energy_ratio): below 1 blurrier than the truth, above 1 more fine "
        "detail or noise than the truth; it measures the amount of detail, not its correctness. "
        "Scores are computed on the float outputs; the crops below are 8-bit PNGs. Timings vary "
        "between runs and live in timing.json, outside the reproducible metrics.json.</p>"
    )
    return html_page(title, parts, figures)


def knob_bars_note(metrics: dict[str, float]) -> str:
    """Each preset's grain score and edge coherence (beside fidelity) against issue 21's bars,
    saying whether each is met, e.g. 'balanced: grain score 1.11 (bar <= 1.1: missed; ...)'."""
    out = []
    for key, grain in metrics.items():
        if not (key.startswith("preset_") and key.endswith("_grain_score")):
            continue
        name = key[len("preset_") : -len("_grain_score")]
        part = (f"{name}: grain score {grain:.2f} (bar <= {MAX_GRAIN_SCORE}: "
                f"{'met' if grain <= MAX_GRAIN_SCORE else 'missed'}; above it the extra error "
                "sits in flat areas as grain)")  # fmt: skip
        coh = metrics.get(f"preset_{name}_edge_coherence")
        if coh is not None:
            part += (f", edge coherence {coh:.2f} (bar >= {MIN_EDGE_COHERENCE}: "
                     f"{'met' if coh >= MIN_EDGE_COHERENCE else 'missed'}; below it speckle "
                     "or jaggies along edges)")  # fmt: skip
        out.append(part)
    return "; ".join(out)


def html_page(title: str, parts: list[str], figures: dict[str, list[tuple[Path, str]]]) -> str:
    """A self-contained page: `parts` (HTML after the title), then each figure section with its
    PNGs embedded as data URIs; the script marks whether every image decoded."""
    esc = html.escape
    parts = [*parts]
    for section, figs in figures.items():
        parts.append(f"<h2>{esc(section)}</h2>")
        parts += [html_figure(p, alt=p.stem, caption=c) for p, c in figs]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def border_crop(ev: Evaluation) -> int:
    """The metrics' border crop (output px): the zoom region stays inside what is scored."""
    return max((int(q.get("crop", 0)) for q in ev.protocol.get("protocols", [])), default=0)


def _crops(
    ev: Evaluation, gain: pd.DataFrame, ref: str, cfg: ReportConfig, plots: Path
) -> list[tuple[Path, str]]:
    """The best and worst images: LQ (inpainting: the masked input) | baseline | model
    [| uncertainty map] | ground truth."""
    unc = ev.protocol.get("uncertainty") or {}
    per_image = unc.get("per_image", {})
    crops = []
    for rank, (which, name) in enumerate(pick_crops(gain, cfg.crops)):
        g = gain.loc[name]
        kinds = ["lq", ref, "model", "hr"]
        lq_label = "masked input" if "psnr_mask" in ev.per_image else "LQ input"
        labels = [lq_label, ref, ev.headline, "ground truth"]
        extra = ""
        if name in per_image:  # the std map beside the model's output
            kinds.insert(3, "uncertainty")
            labels.insert(3, f"uncertainty: std of {unc['samples']} samples\n"
                             f"black 0 .. yellow {unc['std_range'][1]:g}")  # fmt: skip
            r = per_image[name]["pearson"]
            extra = f"; std vs |error| Pearson {'-' if r is None else format(r, '.2f')}"
        p = crop_figure(
            images=[ev.image(k, name) for k in kinds], labels=labels,
            scores=[g["baseline"] if k == ref else g["model"] if k == "model" else None
                    for k in kinds],
            zoom_size=cfg.zoom_size, path=plots / f"crop_{which}_{rank}.png",
            margin=border_crop(ev),
        )  # fmt: skip
        note = f" (even the best image is below {ref})" if which == "best" and g["gain"] < 0 else ""
        label = crop_label(which, g["gain"])
        crops.append(
            (p, f"{label}: {name}, PSNR-Y gain over {ref} {g['gain']:+.2f} dB{note}{extra}")
        )
    return crops


def _knob_strips(
    ev: Evaluation, gain: pd.DataFrame, cfg: ReportConfig, plots: Path
) -> list[tuple[Path, str]]:
    """The fidelity/detail knob on the best and worst images: input | each preset (fidelity ..
    detail) | ground truth, each with its PSNR-Y and HF ratio; none when the model has no
    measured presets (evaluate wrote no images/preset_*)."""
    names = [
        n for n in ev.protocol.get("presets", {}) if (ev.dir / "images" / f"preset_{n}").is_dir()
    ]
    if len(names) < 2:
        return []
    df = ev.per_image.set_index(["image", "method"])
    strips = []
    for rank, (which, name) in enumerate(pick_crops(gain, cfg.crops)):
        rows = [df.loc[(name, f"preset_{n}")] for n in names]
        p = crop_figure(
            images=[ev.image("lq", name), *(ev.image(f"preset_{n}", name) for n in names),
                    ev.image("hr", name)],
            labels=["LQ input", *(f"{n}\nHF {r['hf_ratio']:.2f}" for n, r in zip(names, rows,
                    strict=True)), "ground truth"],
            scores=[None, *(float(r["psnr_y"]) for r in rows), None],
            zoom_size=cfg.zoom_size, path=plots / f"knob_{which}_{rank}.png",
            margin=border_crop(ev),
        )  # fmt: skip
        spec = "; ".join(
            f"{n}: steps {ev.protocol['presets'][n]['steps']}, detail "
            f"{ev.protocol['presets'][n]['detail']:g}"
            for n in names
        )
        strips.append((p, f"{crop_label(which, gain.loc[name, 'gain'])}: {name} ({spec})"))
    return strips


def _validation_run(train_log: Path, ev: Evaluation) -> dict[str, Any]:
    """What `train.validate` measured in the run that wrote `train_log`, from the
    params.resolved.yaml beside it: {images, steps, seed, names} (empty when it is missing)."""
    params = train_log.parent / "params.resolved.yaml"
    if not params.is_file():
        return {}
    d = yaml.safe_load(params.read_text(encoding="utf-8")) or {}
    t = d.get("train") or {}
    run = {"images": t.get("val_images"), "steps": t.get("val_steps"), "seed": t.get("seed")}
    pairs = Path((d.get("degrade") or {}).get("out_dir", "")) / ev.protocol["task"] / "pairs.csv"
    if run["images"] and pairs.is_file():  # `load_pairs(limit=val_images)`: the first rows
        run["names"] = list(pd.read_csv(pairs)["name"].head(int(run["images"])))
    return run


def _training(ev: Evaluation, train_log: Path, plots: Path) -> tuple[Path, str]:
    """The training curves, and a caption that says what their validation PSNR measures next
    to the tables' protocol (other images: other numbers) and where the run started from."""
    try:
        log = pd.read_csv(train_log)
    except (ValueError, UnicodeDecodeError) as e:  # pandas' parser and empty-file errors
        raise ValueError(f"{train_log}: not a readable train_log.csv ({e})") from None
    if missing := {"step", "loss"} - set(log.columns):
        raise ValueError(
            f"{train_log}: not a train_log.csv (no {', '.join(sorted(missing))} column; "
            "`train` writes one beside each model)"
        )
    model = ev.protocol.get("model") or {}
    run = _validation_run(train_log, ev)
    proto = ev.protocol["protocols"][0]  # train.validate scores the task's first protocol
    n = run.get("images")
    names = run.get("names") or []
    val_label = f"validation: first {n or '?'} pairs, {run.get('steps', '?')} step(s)"
    # the evaluated weights are the last validated ones: the tables' number beside the curve
    key = f"{ev.headline}_psnr_{proto['name']}"
    last = log.dropna(subset=["val_psnr"])["step"].max() if "val_psnr" in log else None
    reference = None
    if key in ev.metrics and str(model.get("step")) == str(last):
        reference = (int(last), float(ev.metrics[key]),
                     f"tables: {ev.protocol['n_images']} pairs, {ev.headline}")  # fmt: skip
    p = plot_training(
        log, plots / "training.png", val_label=val_label, reference=reference,
        steps_before=steps_before(model),
    )  # fmt: skip
    start = "" if not _runs(model) else f" This run {provenance(model)}."
    caption = (
        f"Loss and validation during training ({train_log}).{start} Validation "
        f"(train.validate, EMA weights): {proto['description']}, mean over the first "
        f"{n or '?'} validation pairs{' (' + ', '.join(names) + ')' if names else ''} at "
        f"{run.get('steps', '?')} sampler step(s), 1 sample, seed {run.get('seed', '?')}. The "
        f"tables score {ev.protocol['n_images']} pairs spread over the set "
        f"({', '.join(ev.protocol['images'])}) under both protocols"
        + (": the same images." if set(names) == set(ev.protocol["images"]) else
           ": other images than the curve's, so other numbers.")
    )  # fmt: skip
    if reference is not None:
        final = float(log.dropna(subset=["val_psnr"])["val_psnr"].iloc[-1])
        caption += (
            f" At step {reference[0]} the curve reads {final:.2f} dB; the star is the same "
            f"weights on the tables' images ({ev.headline}, "
            f"{METRIC_LABELS['psnr_' + proto['name']]}): {reference[1]:.2f}."
        )
    return p, caption


def build_report(
    eval_dir: str | Path,
    out_dir: str | Path,
    cfg: ReportConfig,
    *,
    train_log: str | Path | None = None,
) -> Report:
    """Write report.html and plots/*.png for the evaluation in `eval_dir` into `out_dir`.

    train_log: the model's train_log.csv (training curves); skipped with a note when missing.
    """
    ev = load_evaluation(eval_dir)
    out = Path(out_dir)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.png"):  # crops of a previous run may name other images
        old.unlink()
    task, ref = ev.protocol["task"], ev.protocol["reference_baseline"]
    figures: dict[str, list[tuple[Path, str]]] = {}

    training: list[tuple[Path, str]] = []
    if train_log is not None and Path(train_log).is_file():
        training.append(_training(ev, Path(train_log), plots))
    figures["Training"] = training

    base = {
        k: {b: ev.metrics[f"{b}_{k}"] for b in ev.baselines if f"{b}_{k}" in ev.metrics}
        for k in ("psnr_y", "ssim_y", "hf_ratio")
    }
    p = plot_psnr_vs_steps(ev.curve, base, plots / "psnr_vs_steps.png")
    figures["Quality vs sampler steps"] = [
        (p, f"{ev.protocol['sampler']} sampler, mean over images and seeds; dashed: baselines")
    ]
    gain = per_image_gain(ev, ref)
    p = plot_scatter(gain, ref, ev.headline, plots / "scatter.png")
    figures["Per image"] = [(p, f"PSNR-Y per image: above the diagonal the model beats {ref}")]

    figures[f"Side by side: highest and lowest PSNR-Y gain over {ref} (zoomed region outlined)"] = (
        _crops(ev, gain, ref, cfg, plots)
    )
    knob = _knob_strips(ev, gain, cfg, plots)
    if knob:
        note = knob_bars_note(ev.metrics)
        knob[0] = (knob[0][0], knob[0][1] + (f". {note}" if note else ""))
        figures["The fidelity/detail knob: presets side by side"] = knob
    if not training:
        figures.pop("Training")

    report_html = out / "report.html"
    title = f"diffenhance report: {task}"
    with atomic_path(report_html) as tmp:
        tmp.write_text(render_html(ev, figures, title), encoding="utf-8")
    pngs = [p for figs in figures.values() for p, _ in figs]
    return Report(report_html, pngs, summary_markdown(ev, report_html), method_table(ev))


__all__ = [
    "Report",
    "build_report",
    "data_uri",
    "fmt_metric",
    "html_figure",
    "html_page",
    "html_table",
    "knob_bars_note",
    "delta_rows",
    "method_table",
    "per_image_gain",
    "pick_crops",
    "provenance",
    "steps_before",
    "crop_label",
    "border_crop",
    "render_html",
    "signed_metric",
    "summary_items",
    "summary_markdown",
]
