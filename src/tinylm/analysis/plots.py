"""The analysis figures (report curves, sweep bars, IsoFLOP curves). Each function returns False and draws
nothing without matplotlib (the `plot` extra), so every caller still writes its text."""
from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..plotting import pyplot, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .report import Run
    from .scaling import LawFit
    from .sweep import Sweep


def _save(plt: ModuleType, fig: Figure, path: Path) -> bool:
    return save_figure(plt, fig, path, dpi=110)


def _xy(points: list[tuple[int, float]]) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def _by_tokens(run: Run, key: str) -> list[tuple[float, float]]:
    """``key`` against tokens seen (the records that carry both)."""
    by_step = dict(run.series("tokens_seen"))
    return [(by_step[s], v) for s, v in run.series(key) if s in by_step]


def _lr_styles(run: Run) -> list[tuple[str, str, dict]]:
    """(key, legend label, line style) of each LR group: a group whose LR equals an earlier one's all along
    (AdamW gives every group the same) is drawn dashed over it, with markers, and says so."""
    groups = sorted({k for r in run.records for k in r if k.startswith("lr_")}) or ["lr"]
    series = {key: run.series(key) for key in groups}
    styles = []
    for j, key in enumerate(groups):
        name = key.removeprefix("lr_")
        same = next((g.removeprefix("lr_") for g in groups[:j] if series[g] == series[key]), None)
        styles.append((key, f"{name} (= {same})" if same else name,
                       {"ls": ["-", "--", ":", "-."][j % 4], "lw": 2.5 - 0.6 * (j % 4), "marker": "os^v"[j % 4],
                        "markevery": (j / 4, 0.25), "ms": 4}))
    return styles


def plot_runs(runs: list, path: Path, log_axes: bool = False) -> bool:
    """One figure of a run's (or overlaid runs') curves: loss against steps and tokens, LR per parameter
    group, gradient norm with the clip, tokens/s, MFU, and the share of a step spent on data. Runs whose
    tokenizers differ lead with val bits per byte (their losses per token do not compare)."""
    from .report import tokenizers_differ
    plt = pyplot()
    if plt is None:
        return False
    bpb_first = tokenizers_differ(runs)
    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    ax = dict(zip(("step", "tokens", "lr", "grad", "speed", "mfu", "data", "gap"), axes.flat, strict=True))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        label = run.name if len(runs) > 1 else ""
        for key, style in (("loss", "-"), ("val_loss", "o--")):
            what = "train" if key == "loss" else "val"
            if not bpb_first:
                ax["step"].plot(*_xy(run.series(key)), style, color=color, ms=3, label=f"{label} {what}".strip())
            ax["tokens"].plot(*_xy(_by_tokens(run, key)), style, color=color, ms=3,
                              label=f"{label} {what}".strip() if bpb_first else None)
        if bpb_first:
            ax["step"].plot(*_xy(run.series("val_bpb")), "o--", color=color, ms=3, label=f"{label} val".strip())
        for key, name, style in _lr_styles(run):
            ax["lr"].plot(*_xy(run.series(key)), color=color, label=f"{label} {name}".strip(), **style)
        ax["grad"].plot(*_xy(run.series("grad_norm")), color=color, lw=0.8, label=label or None)
        if run.cfg.optim.grad_clip:
            ax["grad"].axhline(run.cfg.optim.grad_clip, color=color, ls=":", lw=1)
        ax["speed"].plot(*_xy(run.series("tokens_per_s")), color=color)
        mfu = [(s, 100 * v) for s, v in run.series("mfu") if v is not None]
        ax["mfu"].plot(*_xy(mfu), color=color)
        share = [(r["step"], 100 * r["data_ms"] / (r["data_ms"] + r["compute_ms"])) for r in run.records
                 if r.get("data_ms") is not None and r.get("compute_ms")]
        ax["data"].plot(*_xy(share), color=color)
        train = dict(run.series("loss"))
        gap = [(s, v - train[s]) for s, v in run.series("val_loss") if s in train and v is not None
               and train[s] is not None]
        ax["gap"].plot(*_xy(gap), "o-", color=color, ms=3)
    loss = "loss (nats/token)"
    # panel: (title, x label, y label with its unit)
    titles = {"step": ("val bits per byte: compares across tokenizers", "step", "bits/byte") if bpb_first else
              ("train (-) and val (o--) loss by step", "step", loss),
              "tokens": ("loss per token by tokens seen: not comparable across tokenizers" if bpb_first else
                         "train (-) and val (o--) loss by tokens seen", "tokens seen", loss),
              "lr": ("learning rate per parameter group", "step", "learning rate"),
              "grad": ("gradient norm (dotted: the clip)", "step", "gradient L2 norm"),
              "speed": ("throughput", "step", "tokens/s"), "mfu": ("model FLOPs utilization", "step", "MFU (%)"),
              "data": ("data loading", "step", "% of the step"),
              "gap": ("generalization gap: val - train loss", "step", "nats/token")}
    for key, (title, xlabel, ylabel) in titles.items():
        ax[key].set_title(title, fontsize=10)
        ax[key].set_xlabel(xlabel)
        ax[key].set_ylabel(ylabel)
        ax[key].grid(alpha=0.3)
    if log_axes:
        for key in ("step", "tokens"):
            ax[key].set_xscale("log")
            ax[key].set_yscale("log")
    for key in ("step", "tokens", "lr"):
        if ax[key].get_legend_handles_labels()[0]:
            ax[key].legend(fontsize=7)
    return _save(plt, fig, path)


def plot_sweep(sweep: Sweep, path: Path) -> bool:
    """The sweep's metric (final val loss, or bits per byte) by point (each seed a dot, mean +- std a bar) and the
    mean val curve of each point."""
    from ..training.tracking import read_metrics
    from .stats import mean_std
    plt = pyplot()
    if plt is None:
        return False
    key, label = sweep.compared
    logged = sweep.metric  # metrics.jsonl's name: val_loss or val_bpb
    finals = sweep.by_point(key)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    for i, p in enumerate(sweep.points):
        xs = finals[p.name]
        if not xs:
            continue
        mean, std = mean_std(xs)
        left.errorbar([i], [mean], yerr=[0.0 if math.isnan(std) else std], fmt="s", color=f"C{i % 10}", capsize=4)
        left.plot([i] * len(xs), xs, ".", color="k", alpha=0.5)
        curves: dict[int, list[float]] = {}
        for r in sweep.results:
            if r.point == p.name and r.status == "ok":
                for rec in read_metrics(Path(r.run_dir)):
                    if rec.get(logged) is not None:
                        curves.setdefault(rec["step"], []).append(rec[logged])
        steps = sorted(curves)
        right.plot(steps, [sum(curves[s]) / len(curves[s]) for s in steps], "-", color=f"C{i % 10}", label=p.name)
    left.set_xticks(range(len(sweep.points)), [p.name for p in sweep.points], rotation=30, ha="right", fontsize=8)
    left.set_title(f"{label} by point (dots: seeds; bar: mean ± std)")
    right.set_title(f"{logged.replace('_', ' ')} (mean over seeds)")
    right.set_xlabel("step")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_scaling(result: dict, parabolas: list, law: LawFit | None, path: Path) -> bool:
    """IsoFLOP curves with their parabolas, the fitted frontier N*(C), and predicted vs measured loss."""
    import numpy as np
    plt = pyplot()
    if plt is None:
        return False
    fig, (iso, front, pvm) = plt.subplots(1, 3, figsize=(17, 5))
    runs = [r for r in result["runs"] if r["loss"] is not None]
    budgets = sorted({r["budget"] for r in runs})
    for i, c in enumerate(budgets):
        at = sorted((r["N"], r["loss"]) for r in runs if r["budget"] == c)
        iso.plot(*zip(*at, strict=True), "o", color=f"C{i}", label=f"C = {c:.2g}")
        fit = next((p for p in parabolas if p.budget == c), None)
        if fit:
            xs = np.linspace(np.log(at[0][0]), np.log(at[-1][0]), 50)
            iso.plot(np.exp(xs), np.polyval(fit.coeffs, xs), "-", color=f"C{i}", alpha=0.6)
            iso.plot([fit.n_opt], [fit.loss_opt], "*", color=f"C{i}", ms=12)
    iso.set(xscale="log", xlabel="non-embedding parameters N", ylabel="final val loss", title="IsoFLOP curves")
    # a study spans about a decade of sizes: label the sizes studied (e.g. 98k), not the log axis' minor ticks
    from matplotlib.ticker import EngFormatter, NullFormatter
    iso.set_xticks(sorted({r["N"] for r in runs}))
    iso.xaxis.set_major_formatter(EngFormatter(places=0, sep=""))
    iso.xaxis.set_minor_formatter(NullFormatter())
    iso.legend(fontsize=7)
    if result["frontier"]:
        cs = np.array([p.budget for p in parabolas])
        front.plot(cs, [p.n_opt for p in parabolas], "o", label="N* per budget (parabola vertex)")
        grid = np.geomspace(cs.min() / 2, cs.max() * 4, 50)
        f = result["frontier"]
        front.plot(grid, f["g"] * grid ** f["a"], "-", label=f"N* = {f['g']:.2g} C^{f['a']:.2f}")
        front.legend(fontsize=7)
        front.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOPs)", ylabel="N*", title="fitted frontier")
    else:  # empty log axes would show a meaningless 1-10 range
        front.set_axis_off()
        front.text(0.5, 0.5, "no frontier: fewer than 2 budgets have\na loss minimum near the sizes trained",
                   ha="center", va="center", transform=front.transAxes)
    fitted = [float(law.predict(r["N"], r["D"])[0]) for r in runs]
    pvm.plot([r["loss"] for r in runs], fitted, "o", label="study runs")
    pred = result.get("prediction")
    if pred and pred.get("measured") is not None:
        pvm.errorbar([pred["measured"]], [pred["loss"]], yerr=[[pred["loss"] - pred["low"]],
                                                               [pred["high"] - pred["loss"]]],
                     fmt="r*", ms=12, capsize=4, label="verification run")
    lims = [min(pvm.get_xlim()[0], pvm.get_ylim()[0]), max(pvm.get_xlim()[1], pvm.get_ylim()[1])]
    pvm.plot(lims, lims, "k:", lw=1)
    pvm.set(xlabel="measured val loss", ylabel="L(N, D) fit", title="predicted vs measured")
    pvm.legend(fontsize=7)
    for ax in (iso, front, pvm):
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)
