"""`tinylm scaling`: an IsoFLOP study, two scaling-law fits, a prediction and its verification.

For each compute budget C, models of several sizes (a depth, width 64 x depth, heads of 64: the shape
rule of :func:`tinylm.analysis.plan.shape_for`; or depth x width, e.g. 2x96, for the finer steps a small
study needs; a smaller head size keeps several heads in narrow models) are each trained on D = C / 6N
tokens, their LR schedule sized to D (max_steps = D / tokens per step), through the sweep runner. A
tokens-per-parameter window keeps each budget's sizes near its optimum, as Chinchilla's IsoFLOP curves
do: a model that sees a fraction of a token per parameter measures how fast it starts, not its size.
N is the **non-embedding** parameter count, as Kaplan et al. and Chinchilla's fits use; counting the
embeddings too moves the tokens-per-parameter figure, most for small models, whose embeddings are a large share.

Fits:

* approach 2 (Hoffmann et al. 2022): per budget, a parabola of the final val loss in log N; its vertex
  is N*(C), with D*(C) = C / 6N*; then a line through log N* against log C gives the frontier N* = g C^a;
* approach 3: L(N, D) = E + A / N^alpha + B / D^beta, fitted by minimizing the Huber loss (delta 1e-3)
  of log L, parametrized as log-sum-exp(a - alpha log N, b - beta log D, e), with L-BFGS from a grid of
  starting points (Hoffmann et al. 2022; Besiroglu et al. 2024), and bootstrap confidence intervals
  (runs resampled with replacement, scipy.stats.bootstrap).
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from ..errors import TinyLMError
from ..fileio import Outputs, write_text_atomic
from ..plotting import pyplot, save_figure
from .plan import HEAD_SIZE, shape_for
from .sweep import Point, run_points

if TYPE_CHECKING:
    from ..config import Config

CHINCHILLA = {"alpha": 0.34, "beta": 0.28, "E": 1.69, "A": 406.4, "B": 410.7}  # Hoffmann et al. 2022, approach 3
BESIROGLU = {"alpha": 0.3478, "beta": 0.3658, "E": 1.82, "A": 482.0, "B": 2085.4}  # Besiroglu et al. 2024 refit
HUBER_DELTA = 1e-3
PARAMS = ("E", "A", "B", "alpha", "beta")


# ----------------------------------------------------------------------------- approach 2: parabolas

@dataclass
class Parabola:
    budget: float
    coeffs: tuple[float, float, float]  # L = c0 (log N)^2 + c1 log N + c2
    n_opt: float  # N*(C), the vertex
    loss_opt: float
    bracketed: bool  # the vertex lies within the sizes trained (else it is an extrapolation)

    @property
    def d_opt(self) -> float:
        return self.budget / (6 * self.n_opt)


def fit_parabola(budget: float, n: list[float], loss: list[float]) -> Parabola | None:
    """The vertex of a least-squares parabola of loss in log N (numpy.polyfit) at one budget; None when the
    curve has no minimum near the sizes trained (it opens downward, or its vertex lies more than the sizes'
    span beyond them: the loss keeps falling or rising, the sizes miss the optimum)."""
    if len(n) < 3:
        raise TinyLMError(f"budget {budget:.3g}: a parabola needs >= 3 sizes, got {len(n)}; give more --sizes")
    x = np.log(np.asarray(n, dtype=float))
    c0, c1, c2 = np.polyfit(x, np.asarray(loss, dtype=float), 2)
    span = x.max() - x.min()
    x_opt = -c1 / (2 * c0) if c0 > 0 else math.inf
    if not x.min() - span <= x_opt <= x.max() + span:
        return None
    return Parabola(budget, (float(c0), float(c1), float(c2)), float(math.exp(x_opt)),
                    float(c0 * x_opt**2 + c1 * x_opt + c2), bool(x.min() <= x_opt <= x.max()))


def fit_frontier(parabolas: list[Parabola]) -> tuple[float, float]:
    """(g, a) of N* = g C^a through the parabolas' vertices (a line in log-log, numpy.polyfit)."""
    if len(parabolas) < 2:
        raise TinyLMError("the frontier needs >= 2 budgets; give more --budgets")
    a, log_g = np.polyfit(np.log([p.budget for p in parabolas]), np.log([p.n_opt for p in parabolas]), 1)
    return float(math.exp(log_g)), float(a)


# ----------------------------------------------------------------------------- approach 3: L(N, D)

def predict(params: dict[str, float], n: ArrayLike, d: ArrayLike) -> np.ndarray:
    """L(N, D) = E + A / N^alpha + B / D^beta, each term as exp(log A - alpha log N): a fit may give A ~ 1e170 with
    alpha ~ 30, where N^alpha overflows though the quotient is an ordinary number."""
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    return (params["E"] + np.exp(math.log(params["A"]) - params["alpha"] * np.log(n))
            + np.exp(math.log(params["B"]) - params["beta"] * np.log(d)))


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> tuple[float, np.ndarray]:
    """The Huber loss of log L over the runs, and its gradient in (a, b, e, alpha, beta) (L-BFGS needs it: with
    finite differences a fit from hundreds of starting points takes minutes)."""
    from scipy.special import huber, logsumexp, softmax
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, runs)
    r = logsumexp(terms, axis=0) - log_l
    dr = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # d huber / d r
    w = softmax(terms, axis=0) * dr  # d loss / d term, (3, runs)
    grad = np.array([w[0].sum(), w[1].sum(), w[2].sum(), -(w[0] * log_n).sum(), -(w[1] * log_d).sum()])
    return float(np.sum(huber(HUBER_DELTA, r))), grad


def _to_params(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = (float(t) for t in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


# starting points (a, b, e, alpha, beta): a coarser version of Hoffmann et al.'s grid, 3 x 3 x 2 x 2 x 2 = 72 starts
START_GRID = {"a": (0, 5, 10), "b": (0, 5, 10), "e": (-1, 1), "alpha": (0.2, 0.5), "beta": (0.2, 0.5)}
# the Huber loss of tiny residuals is tiny, and so is its gradient: scipy's default tolerances (gtol 1e-5) stop
# far from the minimum (measured on exact synthetic losses: alpha 0.288 instead of 0.340)
LBFGS_OPTIONS = {"gtol": 1e-12, "ftol": 1e-15, "maxiter": 2000}


def _minimize(starts: Sequence[Sequence[float]], log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    """The best L-BFGS result over ``starts`` (scipy.optimize.minimize, method L-BFGS-B)."""
    from scipy.optimize import minimize
    best = None
    for start in starts:
        r = minimize(_objective, np.asarray(start, dtype=float), args=(log_n, log_d, log_l), jac=True,
                     method="L-BFGS-B", options=LBFGS_OPTIONS)
        if best is None or r.fun < best.fun:
            best = r
    return best.x


def fit_law(n: ArrayLike, d: ArrayLike, loss: ArrayLike,
            starts: Sequence[Sequence[float]] | None = None) -> dict[str, float]:
    """(E, A, B, alpha, beta) of L(N, D) from runs' N, D and final losses."""
    if len(loss) < 5:
        raise TinyLMError(f"the L(N, D) fit has 5 parameters: it needs >= 5 runs, got {len(loss)}")
    log_n, log_d, log_l = (np.log(np.asarray(v, dtype=float)) for v in (n, d, loss))
    grid = starts if starts is not None else list(itertools.product(*START_GRID.values()))
    return _to_params(_minimize(grid, log_n, log_d, log_l))


@dataclass
class LawFit:
    params: dict[str, float]
    low: dict[str, float]  # the bootstrap's 95% interval per parameter
    high: dict[str, float]
    samples: list[dict[str, float]] = field(repr=False)  # the bootstrap fits (for prediction intervals)

    def predict(self, n: float, d: float) -> tuple[float, float, float]:
        """The loss at (N, D) and its bootstrap 95% interval."""
        values = np.array([predict(s, n, d) for s in self.samples])
        return float(predict(self.params, n, d)), float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def fit_law_with_ci(n: ArrayLike, d: ArrayLike, loss: ArrayLike, resamples: int = 200, seed: int = 0) -> LawFit:
    """:func:`fit_law`, then scipy.stats.bootstrap over the runs: each resample refits from the full fit."""
    from scipy import stats
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    best = fit_law(n, d, loss)
    start = [math.log(best["A"]), math.log(best["B"]), math.log(best["E"]), best["alpha"], best["beta"]]

    def refit(idx: np.ndarray) -> np.ndarray:  # theta, in log space: A = e^a of a fit that gives up on a floor
        return _minimize([start], np.log(n[idx]), np.log(d[idx]), np.log(loss[idx]))  # is ~1e170, its square inf

    # percentile intervals of log A, log B, log E are those of A, B, E (exp is monotonic)
    r = stats.bootstrap((np.arange(len(loss)),), refit, vectorized=False, n_resamples=resamples,
                        method="percentile", rng=np.random.default_rng(seed))
    samples = [_to_params(col) for col in r.bootstrap_distribution.T]
    return LawFit(best, _to_params(r.confidence_interval.low), _to_params(r.confidence_interval.high), samples)


# ----------------------------------------------------------------------------- the study

def tokens_per_step(cfg: Config) -> int:
    return cfg.train.batch_size * cfg.model.block_size


def parse_size(text: str, head_size: int = HEAD_SIZE) -> dict[str, int]:
    """``"3" -> shape_for(3)`` (width 192), ``"2x96" -> 2 layers of width 96, one head`` (three of 32 with
    ``head_size=32``)."""
    if head_size < 1:
        raise TinyLMError(f"--head-size {head_size}: give a positive head size, e.g. 32 or 64")
    depth, _, width = text.strip().lower().partition("x")
    try:
        shape = shape_for(int(depth), int(width) if width else None, head_size)
    except ValueError:
        raise TinyLMError(f"--sizes {text!r}: give depths (3) or depth x width (2x96), comma-separated") from None
    if shape["n_layer"] < 1 or shape["n_embd"] % shape["n_head"] or shape["n_embd"] < 2:
        raise TinyLMError(f"--sizes {text!r}: the width must be a positive multiple of 64 (or below 128)")
    return shape


def size_name(shape: dict[str, int]) -> str:
    return f"{shape['n_layer']}x{shape['n_embd']}"


def study_points(cfg: Config, budgets: list[float], sizes: list[dict], counts: Callable[[dict], int],
                 window: tuple[float, float] | None = None,
                 lr_width: int | None = None) -> tuple[list[tuple], list[tuple]]:
    """(Point, budget, N, D) for every budget x size whose D / N lies in ``window`` (all without one):
    D = C / 6N tokens, the schedule sized to D, the learning rate by :func:`_point`; and (budget, size name,
    D / N) of the pairs left out."""
    out, skipped = [], []
    for c, shape in itertools.product(budgets, sizes):
        n = counts(shape)
        steps = max(1, round(c / (6 * n) / tokens_per_step(cfg)))
        d = steps * tokens_per_step(cfg)
        if window and not window[0] <= d / n <= window[1]:
            skipped.append((c, size_name(shape), d / n))
            continue
        out.append((_point(f"C={c:.3g},size={size_name(shape)}", cfg, shape, steps, lr_width), c, n, d))
    return out, skipped


def _point(name: str, cfg: Config, shape: dict, steps: int, lr_width: int | None = None) -> Point:
    """One run of the study. With ``lr_width`` W, the config's learning rate is the one for width W and a model
    of width w trains at lr x W / w: muP's rule for Adam on hidden matrices (Yang et al. 2022), here on every
    group, since one rate for all widths over-drives the wide models."""
    warmup = min(cfg.optim.warmup_steps, steps // 10)  # warmup no longer than a tenth of the run
    settings = {"model.n_layer": shape["n_layer"], "model.n_embd": shape["n_embd"], "model.n_head": shape["n_head"],
                "train.max_steps": steps, "optim.warmup_steps": warmup, "train.eval_interval": 0,
                "train.time_budget": ""}
    if lr_width:
        settings["optim.lr"] = cfg.optim.lr * lr_width / shape["n_embd"]
    return Point(name, settings)


def non_embedding_counter(cfg: Config) -> Callable[[dict], int]:
    """Shape -> non-embedding parameters of that model on this config (built on the meta device)."""
    from copy import deepcopy

    from .report import model_counts

    def count(shape: dict) -> int:
        c = deepcopy(cfg)
        c.model.vocab_size = max(c.model.vocab_size, 2)  # the non-embedding count does not depend on it
        for k, v in shape.items():
            setattr(c.model, k, v)
        return model_counts(c)[1]
    return count


ABSURD_DAYS = 30  # a study that would take longer, even at the device's peak FLOP/s, is refused before it starts


def check_study_time(cfg: Config, runs: list[tuple[int, int]], seeds: int, log: Callable[[str], None]) -> None:
    """Say what the study's runs, (N, D) each, cost: 6ND FLOPs and a lower bound of the time at the peak FLOP/s of
    the config's device (real runs reach a fraction of it); refuse one over :data:`ABSURD_DAYS` (``--budgets
    1e40`` set ~10^33 steps and trained on)."""
    from ..training import runtime
    from ..training.accounting import peak_flops
    flops = seeds * sum(6 * n * d for n, d in runs)
    dev = runtime.resolve_device(cfg.train.device)
    peak = peak_flops(dev, runtime.resolve_precision(cfg.train.precision, dev))
    if peak is None:  # a device without a known peak: the FLOPs alone
        log(f"scaling: {len(runs)} run(s) x {seeds} seed(s), 6ND = {flops:.3g} FLOPs")
        return
    days = flops / peak / 86400
    took = f"{days * 24:.2g} hours" if days < 2 else f"{days:.3g} days"
    log(f"scaling: {len(runs)} run(s) x {seeds} seed(s), 6ND = {flops:.3g} FLOPs: at least {took} at {dev.type}'s peak "
        f"{peak:.3g} FLOP/s")
    if days > ABSURD_DAYS:
        raise TinyLMError(f"the study's {len(runs)} run(s) x {seeds} seed(s) need 6ND = {flops:.3g} FLOPs: at least "
                          f"{took} even at this {dev.type}'s peak {peak:.3g} FLOP/s (refused over {ABSURD_DAYS} days); "
                          f"give smaller --budgets (each run trains D = C / 6N tokens)")


def run_scaling(config: str | Path | None, budgets: list[float], sizes: list[str], out: str | Path, *,
                verify: tuple[float, float] | None = None, predict_at: tuple[float, float] | None = None,
                head_size: int = HEAD_SIZE, tokens_per_param: tuple[float, float] | None = None,
                lr_width: int | None = None, seeds: int = 1, jobs: int = 1,
                threads: int | None = None, overrides: list[str] | None = None,
                resamples: int = 200, log: Callable[[str], None] = print) -> dict:
    """Train the study, fit both laws, predict (and with ``verify`` = (N, D), train that model and compare).
    ``tokens_per_param`` = (low, high) trains only the budget x size pairs whose D / N lies in it; ``lr_width``
    scales the learning rate with the width (:func:`_point`); with ``seeds`` > 1 each point's loss is the mean
    over its seeds. Writes scaling.json,
    scaling.md and scaling.png to ``out``; returns scaling.json's content."""
    from ..config import build_config
    from .plan import depth_for
    out = Path(out)
    if lr_width is not None and lr_width < 1:
        raise TinyLMError(f"--lr-width {lr_width}: give the width the config's learning rate is for, e.g. 96")
    bad = [c for c in budgets if not (math.isfinite(c) and c > 0)]
    if bad:
        raise TinyLMError(f"--budgets {bad[0]:g}: each budget must be a positive, finite number of FLOPs, e.g. "
                          f"1e12,3e12,1e13")
    cfg = build_config(config, overrides or [])
    count = non_embedding_counter(cfg)
    shapes = sorted((parse_size(str(s), head_size) for s in sizes), key=count)
    if len(set(budgets)) < 2:
        raise TinyLMError(f"--budgets {','.join(f'{c:g}' for c in budgets)}: an IsoFLOP study needs at least 2 "
                          f"budgets (its frontier N*(C) joins each budget's optimum), e.g. 1e12,3e12,1e13")
    if len({size_name(s) for s in shapes}) < 3:
        raise TinyLMError(f"--sizes {','.join(map(str, sizes))}: a study needs at least 3 sizes (each budget's "
                          f"parabola in log N needs 3 points), e.g. 1,2,3,4")
    plan, skipped = study_points(cfg, sorted(budgets), shapes, count, tokens_per_param, lr_width)
    if not plan:
        if tokens_per_param:
            low, high = tokens_per_param
            raise TinyLMError(f"no budget x size pair has D / N within --tokens-per-param {low:g},{high:g}; widen the "
                              "window or change --sizes / --budgets")
        raise TinyLMError("no budget x size pair to train; give --budgets and --sizes")
    if len(plan) < len(PARAMS):
        raise TinyLMError(f"only {len(plan)} budget x size pair(s) to train (see --tokens-per-param): the L(N, D) fit "
                          f"has {len(PARAMS)} parameters and needs at least {len(PARAMS)} runs; add --budgets or "
                          f"--sizes")
    target = verify or predict_at
    extra = []
    if target:
        shape = shape_for(depth_for(target[0]), head_size=head_size)
        steps = max(1, round(target[1] / tokens_per_step(cfg)))
        target = (count(shape), steps * tokens_per_step(cfg))
        extra = ([_point(f"verify,size={size_name(shape)},D={target[1]:.3g}", cfg, shape, steps, lr_width)]
                 if verify else [])
    check_study_time(cfg, [(n, d) for _, _, n, d in plan] + ([target] if verify else []), seeds, log)
    files = Outputs(out / name for name in ("scaling.json", "scaling.md", "scaling.png"))  # refused before training
    sweep = run_points([p for p, *_ in plan] + extra, config, out, seeds=seeds, jobs=jobs, threads=threads,
                       overrides=overrides, log=log, command="tinylm scaling")
    losses: dict[str, list[float]] = {}
    for r in sweep.results:
        if r.status == "ok":
            losses.setdefault(r.point, []).append(r.final_val_loss)
    final = {point: float(np.mean(values)) for point, values in losses.items()}
    runs = [{"budget": c, "size": f"{p.overrides['model.n_layer']}x{p.overrides['model.n_embd']}", "N": n, "D": d,
             "lr": p.overrides.get("optim.lr", cfg.optim.lr), "loss": final.get(p.name),
             "seeds": len(losses.get(p.name, []))} for p, c, n, d in plan]
    done = [r for r in runs if r["loss"] is not None]
    result: dict = {"runs": runs, "convention": "N = non-embedding parameters; C = 6ND", "head_size": head_size,
                    "lr_width": lr_width, "seeds": seeds,
                    "tokens_per_param_window": list(tokens_per_param) if tokens_per_param else None,
                    "left_out": [{"budget": c, "size": name, "tokens_per_param": tpp} for c, name, tpp in skipped]}
    fits = {c: fit_parabola(c, [r["N"] for r in at], [r["loss"] for r in at]) for c in sorted(budgets)
            if len(at := [r for r in done if r["budget"] == c]) >= 3}
    parabolas = [p for p in fits.values() if p is not None]
    result["no_minimum"] = [c for c, p in fits.items() if p is None]
    result["parabolas"] = [{**asdict(p), "D_opt": p.d_opt, "tokens_per_param": p.d_opt / p.n_opt} for p in parabolas]
    result["frontier"] = dict(zip(("g", "a"), fit_frontier(parabolas), strict=True)) if len(parabolas) >= 2 else None
    law = fit_law_with_ci([r["N"] for r in done], [r["D"] for r in done], [r["loss"] for r in done], resamples)
    result["law"] = {"params": law.params, "low": law.low, "high": law.high}
    if target:
        value, low, high = law.predict(*target)
        result["prediction"] = {"N": target[0], "D": target[1], "loss": value, "low": low, "high": high}
        if verify:
            measured = final.get(extra[0].name)
            result["prediction"]["measured"] = measured
            if measured is not None:
                result["prediction"]["error"] = value / measured - 1
    with files:
        plotted = plot_scaling(result, parabolas, law, out / "scaling.png")
        write_text_atomic(out / "scaling.json", json.dumps(result, indent=1))
        write_text_atomic(out / "scaling.md", render(result, "scaling.png" if plotted else None))
    return result


E_NEGLIGIBLE = 1e-3  # a fitted E below this (nats) is the fit giving up on a floor, not a measured one


def render(result: dict, figure: str | None) -> str:
    """scaling.md: the runs, both fits beside the published exponents, the prediction."""
    law = result["law"]
    lines = ["# Scaling study", "",
             f"Convention: {result['convention']} (Kaplan et al. and Chinchilla fit non-embedding counts; with the "
             "embeddings counted, N grows and the tokens-per-parameter figure shrinks, most for small models).", "",
             "## Runs", ""]
    if result.get("lr_width"):
        lines += [f"Learning rate x {result['lr_width']} / width (the config's rate is the one for width "
                  f"{result['lr_width']}).", ""]
    seeds = result["seeds"]
    lines += ["| budget C | size (layers x width) | N | D | learning rate | final val loss"
              f"{f' (mean of {seeds} seeds)' if seeds > 1 else ''} |", "|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        loss = "failed" if r["loss"] is None else f"{r['loss']:.4f}"
        if 0 < r["seeds"] < seeds:
            loss += f" ({r['seeds']} of {seeds} seeds ran)"
        lines.append(f"| {r['budget']:.3g} | {r['size']} | {r['N']:,} | {r['D']:,} | {r['lr']:.3g} | {loss} |")
    if result.get("left_out"):
        low, high = result["tokens_per_param_window"]
        lines += ["", f"Not trained (D / N outside the window {low:g} to {high:g} tokens per parameter): " + ", ".join(
            f"{x['size']} at {x['budget']:.3g} ({x['tokens_per_param']:.2g})" for x in result["left_out"]) + "."]
    lines += ["", "## Approach 2: IsoFLOP parabolas", "", "| budget C | N* | D* | tokens per parameter | loss at N* |",
              "|---:|---:|---:|---:|---:|"]
    lines += [f"| {p['budget']:.3g} | {p['n_opt']:.3g}{'' if p['bracketed'] else ' (outside the sizes)'} | "
              f"{p['D_opt']:.3g} | {p['tokens_per_param']:.1f} | {p['loss_opt']:.4f} |" for p in result["parabolas"]]
    if result["no_minimum"]:
        lines += ["", "No minimum (the loss keeps falling or rising over the sizes; give sizes on both sides of the "
                  f"optimum) at budget(s): {', '.join(f'{c:.3g}' for c in result['no_minimum'])}."]
    f = result["frontier"]
    lines += ["", f"Frontier: N*(C) = {f['g']:.3g} x C^{f['a']:.3f} (Chinchilla's approach 2: a ≈ 0.49-0.50)." if f
              else "No frontier: it needs parabolas with a minimum at >= 2 budgets.", "",
              "## Approach 3: L(N, D) = E + A/N^alpha + B/D^beta", "",
              "| | this study [95% bootstrap CI] | Chinchilla (2022) | Besiroglu et al. (2024) |", "|---|---|---|---|"]
    lines += [f"| {k} | {law['params'][k]:.4g} [{law['low'][k]:.4g}, {law['high'][k]:.4g}] | {CHINCHILLA[k]} | "
              f"{BESIROGLU[k]} |" for k in PARAMS]
    lines += ["", "A small study spans little of N and D, so E, A, B and the exponents trade off against each other: "
              "wide intervals say the data do not pin them down. Character-level losses and a model family far "
              "below 100M parameters need not share Chinchilla's exponents.", ""]
    if law["params"]["E"] < E_NEGLIGIBLE:
        lines += [f"E went to 0 (below {E_NEGLIGIBLE:g}): over these sizes the data cannot tell an irreducible loss "
                  "from a slowly falling A / N^alpha, so the N term holds both, and predictions far beyond the "
                  "fitted sizes keep falling where a floor would stop them.", ""]
    pred = result.get("prediction")
    if pred:
        lines += ["## Prediction", "", f"N = {pred['N']:,}, D = {pred['D']:,}: predicted loss {pred['loss']:.4f} "
                  f"[{pred['low']:.4f}, {pred['high']:.4f}]"]
        if pred.get("measured") is not None:
            where = "inside" if pred["low"] <= pred["measured"] <= pred["high"] else "outside"
            lines += ["", f"Measured: {pred['measured']:.4f}; the prediction is off by {pred['error']:+.2%}, "
                      f"{where} the 95% interval (which resamples the study's runs: it does not hold each run's "
                      "seed noise or the error of the law's form, so it is narrow for an extrapolation)."]
        lines.append("")
    lines += ["## Plots", "", f"![scaling]({figure})" if figure else
              "(no plots: matplotlib is not installed; `pip install 'tinylm[plot]'`)", ""]
    return "\n".join(lines)


# -- the figure (matplotlib, the `plot` extra: False and nothing drawn without it) -------------------------


def plot_scaling(result: dict, parabolas: list, law: LawFit | None, path: Path) -> bool:
    """IsoFLOP curves with their parabolas, the fitted frontier N*(C), and predicted vs measured loss."""
    plt = pyplot()
    if plt is None:
        return False
    fig, (iso, front, pvm) = plt.subplots(1, 3, figsize=(17, 5), dpi=110)
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
    return save_figure(plt, fig, path)
