"""tinylm doctor: the seeds' debugging playbook as quick checks on your own config and data.

    tinylm doctor --config configs/tinyshakespeare-char.toml [overrides] [--json]
    tinylm doctor runs/my-run                  # the run's config.toml
    tinylm doctor --nan runs/my-run/nonfinite_step_000200

Every check drives the real :class:`~tinylm.training.trainer.Trainer` (model, data loader, optimizer groups,
precision) for a few steps in a scratch folder; the run folder is never touched. The short runs use
the config's peak LR without warmup and a small batch (:class:`DoctorOptions`), so a bug shows in
seconds. Each check says pass / warn / fail with the number behind it, and for warn and fail the
reason and the fix. Any fail makes the exit status 1.
"""
from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import Config, set_value
from ..data.prepare import ensure_prepared
from ..errors import TinyLMError
from ..training import runtime
from ..training.accounting import measure_cpu_peak, mfu, peak_flops
from ..training.trainer import Trainer
from .doctor_options import CHECKS, DoctorOptions
from .nonfinite import hunt_nonfinite

# how close micro-batch x accumulation must stay to the full batch, by precision (max |loss difference|
# over the first steps): fp32 differs by summation order only; half precision rounds every product
ACCUM_BOUND = {"fp32": 1e-4, "bf16": 2e-3, "fp16": 2e-3}
INIT_TOLERANCE = 0.10  # initial loss within 10% of ln(vocab): the model starts out guessing uniformly
# steps on one batch must lower its loss by 5%: with no update at all (LR 0, frozen or detached) it does not move;
# a healthy model as small as 1 layer of width 32 falls 11% at LR 3e-4 and 40% at 3e-3 (context 256, 50 steps)
OVERFIT_DROP = 0.05
IDENTITY_FRACTION = 0.1  # train and val loss both below 0.1 x ln(vocab) within a few steps: an identity leak
SEED_SPREAD = 0.1  # the seeds' rule: val loss varying by more than 0.1 between seeds is non-determinism
SEED_RULE_STEPS = 200  # ... of trained runs: after a few dozen steps seeds still differ in how fast they descend
DATA_SHARE = 0.1  # the seeds' rule: data time over 10% of compute time means the pipeline is the bottleneck
READABLE = 0.9  # share of printable characters for a decoded window to count as text


@dataclass
class Check:
    """One check's verdict."""
    name: str
    status: str  # pass | warn | fail
    value: float | None  # the number behind the verdict
    summary: str  # what was measured, in one line
    reason: str = ""  # warn / fail: what it means
    fix: str = ""  # warn / fail: what to do
    seconds: float = 0.0


class _FixedBatch:
    """Stands in for the trainer's loader: the same (x, y) split into micro-batches, again and again."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, micro: int):
        self.parts = list(zip(x.split(micro), y.split(micro), strict=True))
        self.i = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        part = self.parts[self.i % len(self.parts)]
        self.i += 1
        return part


def _quiet(*args, **kwargs) -> None:
    pass


class Doctor:
    """The checks of one config; :meth:`run` gives the list of :class:`Check`."""

    def __init__(self, cfg: Config, opts: DoctorOptions | None = None, log: Callable[[str], None] = print):
        unknown = set((opts or DoctorOptions()).checks) - set(CHECKS)
        if unknown:
            raise TinyLMError(f"doctor has no check {', '.join(sorted(unknown))}; the checks are {', '.join(CHECKS)}")
        self.cfg, self.opts, self.log = cfg, opts or DoctorOptions(), log
        least = {"steps": 1, "seeds": 1, "batch_size": 1, "overfit_steps": 2, "overfit_batch": 1, "throughput_steps": 1}
        for name, low in least.items():
            if getattr(self.opts, name) < low:
                raise TinyLMError(f"doctor --{name.replace('_', '-')} {getattr(self.opts, name)} must be at least "
                                  f"{low}; leave it out for the default ({getattr(DoctorOptions, name)})")
        self._runs: dict | None = None  # the short runs, shared by identity and determinism

    # ----------------------------------------------------------------- scratch trainers

    @contextlib.contextmanager
    def trainer(self, own_batch: bool = False, **overrides) -> Iterator[Trainer]:
        """A Trainer on the user's config in a scratch folder: peak LR without warmup (a bug shows at once),
        the doctor's small batch unless ``own_batch``, no compile, non-finite steps skipped without limit."""
        cfg = copy.deepcopy(self.cfg)
        batch = cfg.train.batch_size if own_batch else min(self.opts.batch_size, cfg.train.batch_size)
        cap = 4 * batch * cfg.model.block_size
        base = {"optim.warmup_steps": 0, "optim.schedule": "constant", "train.compile": False,
                "train.nonfinite": "skip", "train.max_skips": 10**9,
                "train.eval_tokens": min(cfg.train.eval_tokens or cap, cap),  # at most 4 batches' worth
                "run.progress": False, "run.tensorboard": False, "run.wandb": False, "run.dir": self.tmp,
                "run.name": f"doctor-{self._count}"}
        if not own_batch:
            base.update({"train.batch_size": batch, "train.micro_batch_size": 0})
        self._count += 1
        for key, value in {**base, **overrides}.items():
            set_value(cfg, key, value)
        trainer = Trainer(cfg, log=_quiet)
        try:
            yield trainer
        finally:
            trainer.close()

    def _steps(self, trainer: Trainer, n: int) -> list[float]:
        return [float(trainer.train_step(1.0)["loss"]) for _ in range(n)]

    # ----------------------------------------------------------------- the run

    def run(self) -> list[Check]:
        """Prepare the data (a problem there stops doctor with its one-line error), then every check."""
        ensure_prepared(self.cfg.data, run_dir=self.cfg.run_dir, progress=self.cfg.run.progress, log=self.log)
        results = []
        with tempfile.TemporaryDirectory(prefix="tinylm-doctor-") as tmp:
            self.tmp, self._count = tmp, 0
            with self.trainer():  # builds the model once outside the checks: init_from's errors stop here too
                pass
            for name in self.opts.checks:
                t0 = time.perf_counter()
                try:
                    check = getattr(self, f"check_{name}")()
                except (RuntimeError, ValueError) as e:  # a bug that crashes the step is this check's fail
                    check = Check(name, "fail", None, f"raised {type(e).__name__}: {str(e).splitlines()[0]}",
                                  "the training step itself failed", "fix the error above; the other checks may "
                                  "say where")
                check.seconds = time.perf_counter() - t0
                self.log(format_check(check))
                results.append(check)
        return results

    # ----------------------------------------------------------------- the checks

    def check_data(self) -> Check:
        """A window decodes to text; y is x shifted by one; how often a window spans a document boundary."""
        with self.trainer() as tr:
            x, y = (t.cpu() for t in tr.loader.next_batch())
            shifted = float((y[:, :-1] == x[:, 1:]).float().mean())
            text = tr.tok.decode(x[0].tolist())
            printable = sum(c.isprintable() or c.isspace() for c in text) / max(len(text), 1)
            eot = tr.tok.eot_token
            spans = float((x == eot).any(1).float().mean()) if eot is not None else 0.0
            markers = sum(int((s == eot).sum()) for s in tr.loader.w.shards) if eot is not None else 0
        shown = text[:60].replace("\n", "\\n")
        summary = (f"y[t] = x[t+1] at {100 * shifted:.1f}% of positions; window decodes to {100 * printable:.0f}% "
                   f"printable text: {shown!r}; {markers} end-of-text markers in train, {100 * spans:.0f}% of "
                   f"windows span a (marked) document boundary")
        if shifted < 1.0 or bool((x == y).all()):
            return Check("data", "fail", shifted, summary, "the targets are not the inputs shifted by one: the "
                         "model is taught to copy (loss near zero, gibberish samples) or to predict the wrong token",
                         "make y = tokens[o+1 : o+T+1] for x = tokens[o : o+T] (data/loader.py TokenWindows.gather)")
        if printable < READABLE:
            return Check("data", "fail", printable, summary, "a training window does not decode to readable text: "
                         "the shards and the tokenizer do not belong together, or the corpus is not text",
                         "prepare the data again with this tokenizer: `tinylm prepare --config ... --force`")
        return Check("data", "pass", shifted, summary)

    def check_init(self) -> Check:
        """The loss of the freshly initialized model on a validation batch, against ln(vocab)."""
        with self.trainer() as tr:
            loss = tr.evaluate(passes=1).loss  # the first validation batch
            vocab = tr.cfg.model.vocab_size
        ln_v = math.log(vocab)
        rel = (loss - ln_v) / ln_v
        summary = f"initial loss {loss:.4f} vs ln({vocab}) = {ln_v:.4f} ({100 * rel:+.1f}%)"
        if self.cfg.train.init_from:
            return Check("init", "pass", loss, f"{summary}; starts from pretrained weights "
                         f"(--train.init_from {self.cfg.train.init_from}), so the ln(vocab) rule does not apply")
        if not math.isfinite(loss):
            return Check("init", "fail", loss, summary, "the freshly initialized model already gives a non-finite "
                         "loss (NaN at step 1): the initialization or a layer is broken",
                         "`tinylm doctor` names the module in the gradients check; see the NaN hunt")
        if abs(rel) > INIT_TOLERANCE:
            why = ("far above: the initial logits are too large (init std too big, an unscaled head), so the model "
                   "starts confidently wrong and the first steps are spent undoing it" if rel > 0 else
                   "far below: the targets are predictable from the inputs before any training (leaked targets)")
            return Check("init", "fail", loss, summary, why, "initialize weights with std 0.02 (model/gpt.py "
                         "_init_weights) and check that the head is not scaled up")
        return Check("init", "pass", loss, summary)

    def check_gradients(self) -> Check:
        """One forward/backward: every parameter trainable, in an optimizer group, with a finite non-zero gradient."""
        with self.trainer() as tr:
            x, y = tr.loader.next_batch()
            with runtime.autocast_context(tr.precision, tr.device):
                loss = tr.model(x, y)[1]
            if loss.requires_grad:
                loss.backward()
            in_groups = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
            problems: dict[str, list[str]] = {"frozen (requires_grad False)": [], "in no optimizer group": [],
                                              "without a gradient": [], "with a non-finite gradient": [],
                                              "with an all-zero gradient": []}
            for name, p in tr.raw_model.named_parameters():
                if not p.requires_grad:
                    problems["frozen (requires_grad False)"].append(name)
                    continue
                if id(p) not in in_groups:
                    problems["in no optimizer group"].append(name)
                if p.grad is None:
                    problems["without a gradient"].append(name)
                elif not torch.isfinite(p.grad).all():
                    problems["with a non-finite gradient"].append(name)
                elif not p.grad.any():
                    problems["with an all-zero gradient"].append(name)
            empty = [g.get("role", str(i)) for i, g in enumerate(tr.optimizer.param_groups) if not g["params"]]
            norms = {g.get("role", str(i)): math.sqrt(sum(float(p.grad.float().pow(2).sum()) for p in g["params"]
                                                         if p.grad is not None))
                     for i, g in enumerate(tr.optimizer.param_groups)}
            culprit = None
            if problems["with a non-finite gradient"] or not torch.isfinite(loss):
                culprit = hunt_nonfinite(tr.raw_model, (x, y), tr.precision)
            tr.optimizer.zero_grad(set_to_none=True)
        norm_text = ", ".join(f"{k} {v:.3g}" for k, v in norms.items())
        found = {k: v for k, v in problems.items() if v}
        if empty:
            found["empty parameter groups"] = empty
        if not loss.requires_grad:
            found["loss detached from the graph"] = ["loss"]
        bad = sum(len(v) for v in found.values())
        if not found:
            return Check("gradients", "pass", 0, f"every parameter has a finite, non-zero gradient; gradient norm "
                         f"per group: {norm_text}")
        summary = "; ".join(f"{len(v)} {k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in found.items())
        if culprit is not None:
            summary += f"; first non-finite module: {culprit.module} ({culprit.phase})"
        return Check("gradients", "fail", bad, f"{summary}; norms: {norm_text}",
                     "a parameter that gets no usable gradient never learns (frozen, left out of the optimizer, "
                     "unused in the forward, or poisoned by a NaN)", "set requires_grad on every parameter, build the "
                     "optimizer over model.parameters() (optim.param_groups), and follow the NaN hunt to the module")

    def check_overfit(self) -> Check:
        """``overfit_steps`` steps on one fixed batch must lower its loss by OVERFIT_DROP (sanity_overfit_one_batch):
        no update at all leaves it where it started; any model that learns moves it further."""
        with self.trainer() as tr:
            x, y = tr.loader.next_batch()
            n = min(self.opts.overfit_batch, len(x))
            tr.use_batches(_FixedBatch(x[:n], y[:n], n))
            losses = self._steps(tr, self.opts.overfit_steps)
            lrs = ", ".join(f"{g.get('role', i)} {g['lr']:.3g}" for i, g in enumerate(tr.optimizer.param_groups))
        first, last = losses[0], losses[-1]
        need = (1 - OVERFIT_DROP) * first
        summary = (f"loss {first:.4f} -> {last:.4f} in {len(losses)} steps on one batch of {n} sequences "
                   f"(needs <= {need:.4f}, {OVERFIT_DROP:.0%} below the start: without updates it stays put, a "
                   f"healthy 1-layer width-32 model falls 11% or more); LRs: {lrs}")
        if math.isfinite(last) and last <= need:
            return Check("overfit", "pass", last, summary)
        return Check("overfit", "fail", last, summary, "the model cannot even memorize one batch: the updates do not "
                     "reach the weights. Usual causes: parameters without requires_grad, LR 0 (or a schedule stuck "
                     "at 0), an empty parameter group, a loss detached from the graph (.item() or .detach() "
                     "before backward), or NaN", "see the gradients check; print optimizer.param_groups' lr and the "
                     "loss's requires_grad")

    def check_accumulation(self) -> Check:
        """The same batch as micro-batches x accumulation vs one full batch: the same losses and gradient norms."""
        batch = min(self.opts.batch_size, self.cfg.train.batch_size)
        accum = next((k for k in (4, 2) if batch % k == 0 and batch // k >= 1), 1)
        if accum == 1:
            return Check("accumulation", "pass", None, f"batch of {batch} cannot be split: nothing to compare")
        runs = []
        for micro in (batch, batch // accum):
            # dropout off: its masks follow the micro-batch shapes, so they differ even when accumulation is right
            with self.trainer(**{"train.micro_batch_size": micro, "model.dropout": 0.0}) as tr:
                if not runs:
                    x, y = tr.loader.next_batch()
                tr.use_batches(_FixedBatch(x, y, micro))
                stats = [tr.train_step(1.0) for _ in range(3)]
                runs.append(([float(s["loss"]) for s in stats], [float(s["grad_norm"]) for s in stats]))
                precision = tr.precision
        (loss_a, norm_a), (loss_b, norm_b) = runs
        diff = max(abs(a - b) for a, b in zip(loss_a, loss_b, strict=True))
        norm_rel = abs(norm_a[0] - norm_b[0]) / max(norm_a[0], 1e-12)
        bound = ACCUM_BOUND[precision]
        summary = (f"{batch} x 1 vs {batch // accum} x {accum} (dropout off): max loss difference {diff:.2e} "
                   f"over 3 steps, first gradient norm {norm_a[0]:.4g} vs {norm_b[0]:.4g} "
                   f"(bound {bound:g} in {precision})")
        if diff <= bound and norm_rel <= bound * 10 and math.isfinite(diff):
            return Check("accumulation", "pass", diff, summary)
        return Check("accumulation", "fail", diff, summary, "accumulating micro-batches does not reproduce the full "
                     "batch: the loss is not divided by the accumulation steps, gradients are zeroed between "
                     "micro-steps, or the step count is wrong", "divide each micro-batch's loss by the accumulation "
                     "steps and zero gradients only after the optimizer step")

    def _short_runs(self) -> dict:
        """``steps`` real steps per seed: the first seed twice, then the others; train losses and final val loss."""
        if self._runs is None:
            seed = self.cfg.train.seed
            order = [seed, seed] + [seed + i for i in range(1, self.opts.seeds)]
            runs = []
            for s in order:
                with self.trainer(**{"train.seed": s}) as tr:
                    losses = self._steps(tr, self.opts.steps)
                    runs.append({"seed": s, "losses": losses, "val": tr.evaluate().loss, "device": tr.device.type,
                                 "vocab": tr.cfg.model.vocab_size})
            self._runs = {"first": runs[0], "again": runs[1], "seeds": [runs[0], *runs[2:]]}
        return self._runs

    def check_identity(self) -> Check:
        """Train and val loss both collapsing toward zero in a few steps: the model sees the token it predicts."""
        run = self._short_runs()["first"]
        ln_v = math.log(run["vocab"])
        train_loss = sum(run["losses"][-3:]) / len(run["losses"][-3:])
        summary = (f"after {len(run['losses'])} steps: train {train_loss:.4f}, val {run['val']:.4f} "
                   f"(identity threshold {IDENTITY_FRACTION * ln_v:.3f} = {IDENTITY_FRACTION} x ln V)")
        if train_loss < IDENTITY_FRACTION * ln_v and run["val"] < IDENTITY_FRACTION * ln_v:
            return Check("identity", "fail", run["val"], summary, "near-zero train AND val loss this early means "
                         "the model copies the token it should predict: targets equal to inputs (shift missing) or "
                         "attention that sees the future", "make y = x shifted by one and keep attention causal "
                         "(is_causal=True)")
        return Check("identity", "pass", run["val"], summary)

    def check_determinism(self) -> Check:
        """The same seed twice gives identical losses; N seeds give a val spread under the seeds' 0.1 rule."""
        runs = self._short_runs()
        a, b = runs["first"]["losses"], runs["again"]["losses"]
        diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
        vals = [r["val"] for r in runs["seeds"]]
        spread = max(vals) - min(vals)
        summary = (f"same seed twice: max loss difference {diff:.3g} over {len(a)} steps; {len(vals)} seeds: val "
                   f"{min(vals):.4f}..{max(vals):.4f} (spread {spread:.4f}, rule {SEED_SPREAD})")
        if diff > 0 and not (runs["first"]["device"] == "cuda" and diff < 1e-3):
            return Check("determinism", "fail", diff, summary, "the same seed gave different losses: the data order, "
                         "the initialization or dropout draws from an unseeded random source",
                         "seed every generator from --train.seed (the loader's own torch.Generator, build_model)")
        if diff > 0:
            return Check("determinism", "warn", diff, summary, "GPU kernels are not bitwise deterministic "
                         "(atomic adds)", "torch.use_deterministic_algorithms(True) if you need bitwise repeats")
        if len(a) < SEED_RULE_STEPS:
            judged = (f"above the rule, not judged: after {len(a)} steps seeds still differ in how fast they descend"
                      if spread > SEED_SPREAD else "within the rule")
            return Check("determinism", "pass", diff, f"{summary}: {judged}; the {SEED_SPREAD} rule applies from "
                         f"{SEED_RULE_STEPS} steps (--steps {SEED_RULE_STEPS})")
        if spread > SEED_SPREAD:
            return Check("determinism", "warn", spread, summary, f"val loss varies by more than {SEED_SPREAD} between "
                         "seeds: the result depends on luck (an unstable setup: LR too high, too little warmup)",
                         "lower --optim.lr or add --optim.warmup_steps, then compare the seeds again")
        return Check("determinism", "pass", diff, f"{summary}: within the rule")

    def check_throughput(self) -> Check:
        """Data vs compute time per step at the config's own batch (the 10% rule), MFU, and the precision choice."""
        with self.trainer(own_batch=True) as tr:
            tr.train_step(1.0)  # warm-up: first-call costs (allocations, thread pools) are not throughput
            stats = [tr.train_step(1.0) for _ in range(self.opts.throughput_steps)]
            data_s = sum(s["data_s"] for s in stats) / len(stats)
            compute_s = sum(s["compute_s"] for s in stats) / len(stats)
            tokens_per_s = tr.tokens_per_step / max(data_s + compute_s, 1e-9)
            util = mfu(tokens_per_s, tr.raw_model.flops_per_token(), peak_flops(tr.device, tr.precision))
            device, precision = tr.device, tr.precision
            # the probe multiplies at the model's own MLP shape: at small widths bf16's conversions can cost more
            # than its faster arithmetic saves, which a large square matmul would not show
            shape = (min(tr.micro * tr.cfg.model.block_size, 8192), tr.cfg.model.n_embd, 4 * tr.cfg.model.n_embd)
        choice, probe = self._best_precision(device, shape)
        share = data_s / max(compute_s, 1e-12)
        summary = (f"data {1000 * data_s:.2f} ms vs compute {1000 * compute_s:.1f} ms per step ({100 * share:.1f}%), "
                   f"{tokens_per_s:,.0f} tokens/s, MFU {'unknown' if util is None else f'{100 * util:.1f}%'}; "
                   f"precision {precision} on {device.type}: {probe}")
        if share > DATA_SHARE:
            return Check("throughput", "warn", share, summary, f"data loading takes over {100 * DATA_SHARE:.0f}% of "
                         "compute: the pipeline is the bottleneck", "keep the data as prepared memory-mapped shards "
                         "on a local disk; raise the batch so compute dominates")
        if choice is not None and choice != precision:
            return Check("throughput", "warn", share, summary, f"{choice} is faster than {precision} on this "
                         f"hardware", f"--train.precision {choice} (auto picks by the CPU's bf16 support; "
                         f"TINYLM_CPU_BF16=1/0 overrides the detection)")
        return Check("throughput", "pass", share, summary)

    @staticmethod
    def _best_precision(device: torch.device, shape: tuple[int, int, int]) -> tuple[str | None, str]:
        """(the faster of fp32 and bf16 by a matmul probe of ``shape``, its description); on a GPU, what `auto`
        picks (bf16 wherever the GPU supports it)."""
        auto = runtime.resolve_precision("auto", device)
        if device.type != "cpu":
            return None, f"auto picks {auto} here"
        fp32, bf16 = (measure_cpu_peak(dtype, trials=3, seconds=0.1, shape=shape)
                      for dtype in (torch.float32, torch.bfloat16))
        best = "bf16" if bf16 > 1.1 * fp32 else "fp32"  # bf16 halves activation memory: worth it only when faster
        return best, (f"matmul probe {shape[0]}x{shape[1]} @ {shape[1]}x{shape[2]}: fp32 {fp32 / 1e9:.0f} vs bf16 "
                      f"{bf16 / 1e9:.0f} GFLOP/s, auto picks {auto}")


# --------------------------------------------------------------------------- report

def format_check(c: Check) -> str:
    """``PASS  data         ...`` and, for warn / fail, the reason and the fix on their own lines."""
    lines = [f"{c.status.upper():<5} {c.name:<13} {c.summary}"]
    if c.status != "pass":
        lines += [f"{'':<19}why: {c.reason}", f"{'':<19}fix: {c.fix}"]
    return "\n".join(lines)


def doctor(cfg: Config, opts: DoctorOptions | None = None, log: Callable[[str], None] = print) -> dict:
    """Run the checks; returns the JSON report: {"ok", "checks": [...], "options", "config"}."""
    m = cfg.model
    log(f"tinylm doctor: {m.n_layer} layers, width {m.n_embd}, context {m.block_size}, data {cfg.data.dir} "
        f"({cfg.data.corpus}, {cfg.data.tokenizer})")
    opts = opts or DoctorOptions()
    checks = Doctor(cfg, opts, log).run()
    ok = all(c.status != "fail" for c in checks)
    fails = [c.name for c in checks if c.status == "fail"]
    log("doctor: all checks passed" if ok else f"doctor: {len(fails)} failed: {', '.join(fails)}")
    return {"ok": ok, "checks": [asdict(c) for c in checks], "options": asdict(opts), "config": cfg.to_dict()}


def run_config(run: str | Path, overrides: list[str]) -> Config:
    """The config of a run folder (its config.toml), with command-line overrides."""
    from ..config import build_config
    path = Path(run) / "config.toml"
    if not path.is_file():
        raise TinyLMError(f"{run} has no config.toml: give a run folder (runs/<name>) or --config with a preset")
    return build_config(path, overrides)

