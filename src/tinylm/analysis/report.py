"""`tinylm report`: a run's (or several runs') report.md and report.png, from the run folder alone.

A run folder holds what a report needs: config.toml (the settings, hence parameters and FLOPs per
token), metrics.jsonl (every logged step and evaluation), the last checkpoint's meta.json (device,
precision) and samples.md. The report is a summary table, the curves (matplotlib, the `plot` extra;
without it the text report is still written), the curve-health verdict of :mod:`.health` and the last
sample. Several runs: one row each in a comparison table and overlaid curves. `tinylm train` writes
the report of every run it finishes (:func:`write_after_training`).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, load_toml
from ..errors import TinyLMError
from ..fileio import Outputs, write_failure, write_text_atomic
from ..plotting import pyplot, save_figure
from ..training.tracking import METRICS_FILE, read_metrics_counted
from . import health

REPORT = "report.md"
FIGURE = "report.png"


@dataclass
class Run:
    """What a report reads from one run folder."""
    path: Path
    cfg: Config
    records: list[dict]
    meta: dict  # the last checkpoint's meta.json ({} before the first checkpoint)
    skipped: int = 0  # lines of metrics.jsonl that are not records (cut short by a crash, or damaged)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def tokenizer(self) -> str:
        """The run's tokenizer and vocabulary, e.g. "char (65 ids)": runs that differ in it mean other tokens."""
        return f"{self.cfg.data.tokenizer} ({self.cfg.model.vocab_size} ids)"

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every record with ``key``; a step re-done after a resume keeps its later value."""
        return health._series(self.records, key)

    def last(self, key: str) -> float | None:
        values = [v for _, v in self.series(key) if v is not None]
        return values[-1] if values else None


def tokenizers_differ(runs: list[Run]) -> bool:
    """True when a loss per token means different things across ``runs`` (a char token is one character, a BPE
    token several): then bits per byte, which does not depend on the vocabulary, leads the comparison."""
    return len({r.tokenizer for r in runs}) > 1


def load_run(path: str | Path) -> Run:
    """A run folder's config, metrics and last checkpoint meta; refuses a folder that is not a run."""
    from ..training.checkpoint import find_checkpoint, read_meta
    p = Path(path)
    if not (p / "config.toml").is_file() or not (p / METRICS_FILE).is_file():
        raise TinyLMError(f"{p} is not a tinylm run folder (no config.toml and metrics.jsonl); "
                          f"give the folder `tinylm train` wrote, e.g. runs/<name>")
    ckpt = find_checkpoint(p, "last")
    records, skipped = read_metrics_counted(p)
    return Run(p, load_toml(p / "config.toml"), records, read_meta(ckpt) if ckpt else {}, skipped)


def model_counts(cfg: Config) -> tuple[int, int, int]:
    """(parameters, non-embedding parameters, training FLOPs per token) of the run's model, built on the
    meta device: no memory, whatever its size."""
    import torch

    from ..model.gpt import GPT
    with torch.device("meta"):
        model = GPT(cfg.model)
    return model.num_params(), model.num_params(non_embedding=True), model.flops_per_token()


def _median(run: Run, key: str) -> float | None:
    values = [v for _, v in run.series(key) if v is not None]
    return statistics.median(values) if values else None


def summarize(run: Run) -> dict:
    """The summary table's figures (None where the run did not log them)."""
    total, non_emb, fpt = model_counts(run.cfg)
    vals = [v for _, v in run.series("val_loss") if v is not None]
    best = min(vals) if vals else None
    tokens = run.last("tokens_seen") or 0
    bpbs = [v for _, v in run.series("val_bpb") if v is not None]
    return {
        "parameters": total, "non_embedding_parameters": non_emb, "flops_per_token": fpt,
        "tokens_seen": tokens, "tokens_per_parameter": tokens / non_emb if non_emb else None,
        "train_seconds": run.last("elapsed_s"), "device": run.meta.get("device", f"{run.cfg.train.device} "
                                                                                 f"(as configured)"),
        "precision": run.meta.get("precision", f"{run.cfg.train.precision} (as configured)"),
        "steps": max((r["step"] for r in run.records), default=0),
        "final_train_loss": run.last("loss"), "final_val_loss": vals[-1] if vals else None,
        "best_val_loss": best, "perplexity": math.exp(best) if best is not None else None,
        "val_bpb": min(bpbs) if bpbs else None, "final_val_bpb": bpbs[-1] if bpbs else None,
        "artifact": _artifact(run),
        "tokens_per_s": _median(run, "tokens_per_s"), "mfu": _median(run, "mfu"),
        "data_share": _data_share(run), "skipped_lines": run.skipped,
        "verdict": health.verdict(run.records, run.cfg.optim.grad_clip),
    }


def _artifact(run: Run) -> str | None:
    """With a byte budget (``train.artifact_bytes``): the size of the last checkpoint's quantized artifact, measured
    (quantized and compressed in memory, as `tinylm export --quantize` would write it)."""
    from ..config_check import parse_bytes
    from ..interop import artifact
    from ..interop.quantize import default_group
    from ..training.checkpoint import checkpoint_tokenizer, find_checkpoint, load_part
    t = run.cfg.train
    budget = parse_bytes(t.artifact_bytes, "--train.artifact_bytes")
    step_dir = find_checkpoint(run.path, "last")
    if budget is None or step_dir is None:
        return None
    size = artifact.encode(run.cfg, load_part(step_dir, "model"), checkpoint_tokenizer(step_dir), t.artifact_bits,
                           default_group(t.artifact_bits)).sizes.total
    return f"{size:,} bytes at int{t.artifact_bits} ({size / budget:.1%} of the {budget:,}-byte budget)"


def _data_share(run: Run) -> float | None:
    """Median share of a step spent waiting for data: data_ms / (data_ms + compute_ms)."""
    shares = [r["data_ms"] / (r["data_ms"] + r["compute_ms"]) for r in run.records
              if r.get("data_ms") is not None and r.get("compute_ms") and r["data_ms"] + r["compute_ms"] > 0]
    return statistics.median(shares) if shares else None


def fmt(x: object, digits: int = 4) -> str:
    """A table cell: ``None -> "n/a"``, large counts with a unit (``12_345_678 -> "12.3M"``)."""
    if x is None:
        return "n/a"
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) >= 10_000:
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(x) >= scale:
                return f"{x / scale:.3g}{unit}"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.3g}"
    return str(x)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def summary_lines(s: dict) -> list[str]:
    """One run's summary as a two-column markdown table."""
    rows = [("parameters (total / non-embedding)", f"{fmt(s['parameters'])} / {fmt(s['non_embedding_parameters'])}"),
            ("training FLOPs per token", fmt(s["flops_per_token"])),
            ("steps / tokens seen", f"{s['steps']} / {fmt(s['tokens_seen'])}"),
            ("tokens per parameter (non-embedding)", fmt(s["tokens_per_parameter"], 1)),
            ("training time", _duration(s["train_seconds"])),
            ("device / precision", f"{s['device']} / {s['precision']}"),
            ("final train loss / final val loss", f"{fmt(s['final_train_loss'])} / {fmt(s['final_val_loss'])}"),
            ("best val loss (perplexity)", f"{fmt(s['best_val_loss'])} ({fmt(s['perplexity'], 2)})"),
            ("bits per byte (val)", fmt(s["val_bpb"])),
            ("quantized artifact (train.artifact_bytes)", fmt(s["artifact"])),
            ("tokens/s (median)", fmt(s["tokens_per_s"], 0)),
            ("MFU (median)", "n/a" if s["mfu"] is None else f"{s['mfu']:.1%}"),
            *([(f"{METRICS_FILE} lines skipped (not records: cut short by a crash, or damaged)",
                str(s["skipped_lines"]))] if s.get("skipped_lines") else []),
            ("time waiting for data (median share of a step)", "n/a" if s["data_share"] is None
             else f"{s['data_share']:.1%}")]
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def verdict_lines(findings: list[health.Finding]) -> list[str]:
    lines = [f"**Verdict: {health.summary(findings)}.**", "", "| rule | fired | what was seen | the rule |",
             "|---|---|---|---|"]
    lines += [f"| {f.rule} | {'**yes**' if f.fired else 'no'} | {f.detail} | {health.RULES[f.rule]} |"
              for f in findings]
    return lines


def last_sample(run: Run) -> str | None:
    """The newest entry of samples.md (its '## step ...' heading and text), or None."""
    path = run.path / "samples.md"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    start = text.rfind("## step")
    return text[start:].strip() if start >= 0 else None


def comparison_lines(runs: list[Run], summaries: list[dict]) -> list[str]:
    """The comparison table; led by bits per byte, with a line that says why, when the runs' tokenizers differ."""
    cells = [(r, s, [fmt(s["best_val_loss"]), fmt(s["final_val_loss"]), fmt(s["perplexity"], 2)])
             for r, s in zip(runs, summaries, strict=True)]
    head, align = "best val | final val | ppl", "---:|---:|---:"
    lines = []
    if tokenizers_differ(runs):
        lines = ["The runs' tokenizers differ (" + ", ".join(f"{r.name}: {r.tokenizer}" for r in runs) + "): a loss "
                 "per token is not comparable across them (a BPE token is several characters, a char token one), "
                 "bits per byte are, so they lead the table and the plot.", ""]
        head = "tokenizer | best val bits/byte | final val bits/byte | best val loss (nats/token) | ppl (per token)"
        align = "---|---:|---:|---:|---:"
        cells = [(r, s, [r.tokenizer, fmt(s["val_bpb"]), fmt(s["final_val_bpb"]), fmt(s["best_val_loss"]),
                         fmt(s["perplexity"], 2)]) for r, s, _ in cells]
    lines += [f"| run | params (non-emb) | tokens | {head} | tok/s | time | verdict |",
              f"|---|---:|---:|{align}|---:|---:|---|"]
    lines += [f"| {r.name} | {fmt(s['non_embedding_parameters'])} | {fmt(s['tokens_seen'])} | {' | '.join(c)} | "
              f"{fmt(s['tokens_per_s'], 0)} | {_duration(s['train_seconds'])} | {health.summary(s['verdict'])} |"
              for r, s, c in cells]
    return lines


def render(runs: list[Run], summaries: list[dict], figure: str | None) -> str:
    """report.md's text; ``figure``: the PNG's file name, or None without matplotlib."""
    title = runs[0].name if len(runs) == 1 else f"{len(runs)} runs: " + ", ".join(r.name for r in runs)
    lines = [f"# Report: {title}", ""]
    if len(runs) > 1:
        lines += ["## Comparison", "", *comparison_lines(runs, summaries), ""]
    lines += ["## Curves", "", f"![curves]({figure})" if figure else
              "(no plots: matplotlib is not installed; `pip install 'tinylm[plot]'` and run `tinylm report` again)",
              ""]
    for run, s in zip(runs, summaries, strict=True):
        head = "##" if len(runs) == 1 else f"## {run.name}:"
        lines += [f"{head} Summary", "", *summary_lines(s), "", f"{head} Curve health", "",
                  *verdict_lines(s["verdict"]), ""]
        sample = last_sample(run)
        if sample:
            lines += [f"{head} Last sample", "", sample.replace("## step", "From step", 1), ""]
    return "\n".join(lines)


def write_report(paths: list[str | Path], out: str | Path | None = None, log_axes: bool = False,
                 log: Callable[[str], None] = print) -> Path:
    """report.md (+ report.png with matplotlib) for one run (default: in its folder) or several (``out``
    required). Returns report.md's path. Lines of metrics.jsonl that are not records are skipped, counted in
    the log and the report."""
    runs = [load_run(p) for p in paths]
    if out is None and len(runs) > 1:
        raise TinyLMError("a report on several runs needs --out DIR (each run keeps its own report)")
    out_dir = Path(out) if out is not None else runs[0].path
    md = out_dir / REPORT
    files = Outputs([md, out_dir / FIGURE])  # a report.md or report.png of the user's is not replaced
    summaries = [summarize(r) for r in runs]
    for r in runs:
        if r.skipped:
            log(f"{r.path / METRICS_FILE}: skipped {r.skipped} line(s) that are not records (cut short by a crash, "
                f"or damaged)")
    try:
        with files:
            out_dir.mkdir(parents=True, exist_ok=True)
            plotted = plot_runs(runs, out_dir / FIGURE, log_axes=log_axes)
            write_text_atomic(md, render(runs, summaries, FIGURE if plotted else None))
    except OSError as e:
        raise write_failure(e, md) from None
    return md


def write_after_training(run_dir: Path, log: Callable[[str], None] = print) -> None:
    """The report of a run `tinylm train` just finished. Training is over and saved: a report that
    cannot be written is one line, not a failed run."""
    try:
        md = write_report([run_dir], log=log)
    except (TinyLMError, OSError, ValueError) as e:
        log(f"report not written: {e}; try `tinylm report {run_dir}`")
        return
    log(f"report: {md}")


# -- the figure (matplotlib, the `plot` extra: False and nothing drawn without it) -------------------------

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
    plt = pyplot()
    if plt is None:
        return False
    bpb_first = tokenizers_differ(runs)
    fig, axes = plt.subplots(2, 4, figsize=(18, 8), dpi=110)
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
    return save_figure(plt, fig, path)
