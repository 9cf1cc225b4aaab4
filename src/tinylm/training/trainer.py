"""The training loop: setup, accumulation, clipping, the non-finite guard, evaluation points, DDP and FSDP.

One :class:`Trainer`, driven by the CLI (:func:`train`: build one, run it), doctor, profile, the LR finder, the
tests and the benchmarks alike. Run it under ``torchrun --nproc_per_node N -m tinylm train ...`` for
DistributedDataParallel or FSDP2 (gloo on CPU, nccl on GPU): each process reads its own slice of every global
batch, gradients are reduced once per step (after the last micro-step), and only rank 0 logs and saves. Which
device, precision and process group a run gets, and its random streams, are :mod:`.runtime`'s; the run folder and
checkpoints :mod:`.checkpointing`'s; what the run says :mod:`.reporting`'s.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..analysis.report import write_after_training
from ..config import Config, derive_names, grad_accum_steps, micro_batch_size, validate
from ..config_check import format_duration, parse_duration
from ..data.loader import BatchLoader, PrefetchLoader, TokenWindows, with_prefetch
from ..data.prepare import ensure_prepared
from ..data.shards import load_data_tokenizer
from ..diagnostics.nonfinite import nonfinite_report
from ..errors import TinyLMError
from ..generation.generate import check_prompt
from ..interop.artifact import check_budget
from ..model.fp8 import convert_to_fp8
from ..model.gpt import GPT, label
from . import checkpoint as ckpt
from . import runtime
from .accounting import peak_flops
from .checkpointing import Checkpointer, LoopState, Saved
from .curve_checks import CurveChecks
from .evaluate import EvalResult, Evaluator
from .optim import build_optimizer, lr_scale, momentum_at, set_schedule
from .reporting import Reporter
from .tracking import read_metrics


def check_memory(cfg: Config, device: torch.device) -> None:
    """Refuse, before allocating, a model whose weights, gradients and optimizer state alone (fp32) exceed the
    device's memory: the allocation would fail deep inside torch, or the OS would kill the process. A lower bound:
    activations come on top, so a model this refuses can never train here."""
    from ..analysis.report import model_counts
    from .optim import STATE_TENSORS
    params = model_counts(cfg)[0]  # counted on the meta device: nothing allocated
    # FSDP shards gradients and state, but each process first builds the whole model
    state = STATE_TENSORS[cfg.optim.name]
    per_param, what = ((4, "the weights each process builds before FSDP shards them") if cfg.train.fsdp else
                       (4 * (2 + state), f"their weights, gradients and {cfg.optim.name} state"))
    need, have = params * per_param, runtime.device_memory(device)
    if have is not None and need > have:
        m = cfg.model
        raise TinyLMError(f"--model.n_layer {m.n_layer} x --model.n_embd {m.n_embd} (vocab {m.vocab_size}) is "
                          f"{params:,} parameters: training needs at least {need / 2**30:,.1f} GiB for {what} "
                          f"({per_param} bytes each, activations on top), more than the {have / 2**30:,.1f} GiB of "
                          f"this {device.type}; choose a smaller model")


def build_model(cfg: Config, rank: int, device: torch.device) -> GPT:
    """The model, initialized alike in every process (``train.seed``); then every random stream is
    reseeded with seed + rank, so that each DDP process draws its own dropout masks.

    (The batch loader has its own generator, the same in every process: they must agree on the
    global batch they share.)
    """
    check_memory(cfg, device)
    runtime.seed_everything(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    runtime.seed_everything(cfg.train.seed + rank)
    return model


# --------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    run_dir: Path
    step: int
    train_loss: float
    val_loss: float
    best_val_loss: float
    tokens_seen: int
    train_seconds: float
    stopped_early: bool


class Trainer:
    """One training run: set up from a config, then :meth:`run`.

    The Trainer owns its parts: a :class:`~.checkpointing.Checkpointer` (the run folder, resume, saving), a
    :class:`~.reporting.Reporter` (setup line, metrics, events, samples) and the loop's own state, one
    :class:`~.checkpointing.LoopState` saved and restored as a unit. :meth:`train_step` is one optimizer step
    (LR, micro-steps, clip, update), :meth:`evaluate` the fixed validation set (:mod:`.evaluate`), :meth:`save` a
    checkpoint. Doctor, profile and the benchmarks drive the same Trainer; :meth:`use_batches` gives it their batches.
    """

    clock = staticmethod(time.perf_counter)  # the loop's seconds (time budget, tokens/s, ETA); tests replace it

    def __init__(self, cfg: Config, *, resume: bool = False, log: Callable[[str], None] = print):
        derive_names(cfg)  # data.dir and run.name left "" come from the corpus and tokenizer
        self.checkpointer = Checkpointer(cfg)
        try:
            self._setup(cfg, resume, log)
        except BaseException:
            self._stop_prefetch()  # a failure after the batches (restore, compile): its executor shut down too
            self.checkpointer.discard()
            raise

    def close(self) -> None:
        """Stop the run's prefetching worker and unlock the run folder (:meth:`run` does it when it ends; the OS does
        it if the process dies)."""
        self._stop_prefetch()
        self.checkpointer.close()

    def _stop_prefetch(self) -> None:
        loader = getattr(self, "own_loader", None)  # absent when setup failed before the batches
        if isinstance(loader, PrefetchLoader):
            loader.close()

    # the loop's state, read-only, under the names it had before it became one LoopState
    step = property(lambda self: self.state.step, doc="Optimizer steps taken, earlier sessions included.")
    tokens_seen = property(lambda self: self.state.tokens_seen, doc="Training tokens seen, all processes together.")
    best_val = property(lambda self: self.state.best_val, doc="The lowest val loss of the run so far.")

    def use_batches(self, source: object) -> None:
        """Train on ``source`` (anything with ``next_batch() -> (x, y)``, one micro-batch a call) instead of the run's
        own loader: doctor's fixed batch, a benchmark's shared one. The run's loader stays, for checkpoints, and
        :meth:`close` closes it; ``source`` stays its owner's to close."""
        self.loader = source

    # ----------------------------------------------------------------- setup

    def _setup(self, cfg: Config, resume: bool, log: Callable[[str], None]) -> None:
        """Process, run folder, data, model, batches, then the checkpoint's state (in that order:
        locking the run folder is quick and preparing data may not be; the model's vocab size comes
        from the data; building the model seeds every random stream, resuming restores them)."""
        self._setup_process(cfg, log)
        resume_from = self.checkpointer.open(self.d, resume, self.log)
        self._setup_data()
        init_state = self.checkpointer.init_weights(resume_from, self.tok)  # may take the source's architecture
        check_budget(cfg, len(self.tokenizer_bytes))  # train.artifact_bytes: a model that will not fit stops here
        self._setup_model(init_state)
        self._setup_batches()
        self.checkpointer.describe(precision=self.precision, device=self.device, data_meta=self.meta,
                                   tokenizer_bytes=self.tokenizer_bytes)
        self.saved = Saved(self.raw_model, self.optimizer, self.scaler, self.own_loader, self.sharded)
        self.state = LoopState() if resume_from is None else self.checkpointer.restore(*resume_from, self.saved)
        if cfg.train.compile:
            self.model = torch.compile(self.model)
        self.compiling = cfg.train.compile  # the first step of this session (new or resumed) compiles
        self.tokens_per_step = cfg.train.batch_size * cfg.model.block_size
        said = {r["event"] for r in read_metrics(self.run_dir) if "event" in r and r["step"] <= self.state.step} \
            if self.state.step else set()  # the once-only checks a resumed run said before
        self.checks = CurveChecks(cfg.model.vocab_size, self.meta.get("unigram_entropy"), cfg.train.spike_factor,
                                  said)
        self.skips_in_a_row = 0
        # steps since the last log line: (step, loss, finite), read on the host together at the next log step
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        # fused AdamW skips a non-finite step on the device (found_inf): no host read per step. Muon, Lion and
        # nonfinite = halt (which stops at the very step, with its batch) read the flag on the host at each step.
        self.skip_on_device = bool(self.optimizer.defaults.get("fused")) and cfg.train.nonfinite == "skip"
        self.reporter = Reporter(cfg, self.d, self.log, lambda: self.clock())  # the clock a test may replace later

    def _setup_process(self, cfg: Config, log: Callable[[str], None]) -> None:
        """Join the process group, check the config against it, pick device and precision."""
        self.cfg, self.run_dir = cfg, cfg.run_dir
        self.d = d = runtime.init_distributed(cfg.train.device)
        validate(cfg, d.world_size)
        self.log = log if d.is_main else (lambda *a, **k: None)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = runtime.resolve_device(cfg.train.device, d.local_rank)
        runtime.enable_tf32(self.device)
        self.precision = runtime.resolve_precision(cfg.train.precision, self.device)
        if cfg.train.compile:  # before the run folder opens
            runtime.check_compiler(self.device, "--train.compile")
        self.time_budget = parse_duration(cfg.train.time_budget)
        self.sharded = cfg.train.fsdp and d.world_size > 1  # FSDP: each process holds a shard of the weights

    def _setup_data(self) -> None:
        """Prepare the data (rank 0; the others wait, then read it); the model's vocab size comes from it."""
        cfg, d = self.cfg, self.d
        self.meta = runtime.on_main(lambda: ensure_prepared(cfg.data, run_dir=cfg.run_dir, progress=cfg.run.progress,
                                                            log=self.log), d)
        if not d.is_main:
            self.meta = ensure_prepared(cfg.data, run_dir=cfg.run_dir, progress=False, log=self.log)
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = self.meta["vocab_size"]
        elif cfg.model.vocab_size < self.meta["vocab_size"]:
            raise TinyLMError(f"--model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's "
                              f"{self.meta['vocab_size']} ids; use 0 to take it from the data")
        self.tok = load_data_tokenizer(cfg.data.dir)
        # every checkpoint keeps this copy: the data folder may be prepared again with another tokenizer
        self.tokenizer_bytes = (Path(cfg.data.dir) / self.meta["tokenizer_file"]).read_bytes()
        check_prompt(self.tok, cfg.sample.prompt, cfg.data.dir)  # else the first evaluation fails, and each resume

    def _setup_model(self, init_state: dict[str, torch.Tensor] | None = None) -> None:
        """The model (its first weights ``init_state`` when given; wrapped for DDP/FSDP), its optimizer, and the
        fp16 gradient scaler."""
        cfg = self.cfg
        self.raw_model = build_model(cfg, self.d.rank, self.device)
        if init_state is not None:
            ckpt.load_state(self.raw_model, init_state, Path(cfg.train.init_from), "model")
        if self.precision == "fp8":  # the blocks' Linear layers swapped for torchao's, before compiling or DDP
            convert_to_fp8(self.raw_model)
        self.raw_model.activation_checkpointing = cfg.train.activation_checkpointing
        kernel = self.raw_model.choose_attention(self.device, runtime.compute_dtype(self.precision),
                                                 micro_batch_size(cfg, self.d.world_size), training=True)
        self.attention = runtime.broadcast_from_main(kernel, self.d)  # every process runs the same kernel
        self.raw_model.set_attention(self.attention)
        self.model = runtime.wrap_distributed(self.raw_model, self.d, self.device, fsdp=cfg.train.fsdp)
        self.optimizer = build_optimizer(self.raw_model, cfg.optim, self.device.type,
                                         torch.bfloat16 if self.precision == "bf16" else torch.float32)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _setup_batches(self) -> None:
        """This process's training batches (micro-batch x accumulation) and its share of the validation set."""
        cfg, d = self.cfg, self.d
        self.micro = micro_batch_size(cfg, d.world_size)
        self.accum = grad_accum_steps(cfg, d.world_size)
        windows = TokenWindows(cfg.data.dir, "train", cfg.model.block_size)
        loader = BatchLoader(windows, self.micro, mode=cfg.data.sampling, seed=cfg.train.seed,
                             rank=d.rank, world_size=d.world_size, device=self.device, align=cfg.data.align)
        self.own_loader = self.loader = with_prefetch(loader, cfg.data.prefetch)  # the next batch built in the step
        self.evaluator = Evaluator.for_split(cfg.data.dir, "val", cfg.model.block_size, self.micro, self.tok,
                                             max_tokens=cfg.train.eval_tokens, rank=d.rank, world_size=d.world_size)

    # ----------------------------------------------------------------- steps

    def evaluate(self, passes: int | None = None) -> EvalResult:
        """Loss, perplexity and bits per byte on the fixed validation set (every process takes part).

        The unwrapped model: DDP's forward would synchronize buffers; FSDP's gathers the weights either way.
        """
        return self.evaluator.run(self.raw_model, self.device, self.precision, self.d, passes)

    def train_step(self, lr_scale: float) -> dict:
        """One optimizer step at ``lr_scale`` x each group's peak LR: accumulate gradients over ``accum``
        micro-batches, clip, update (or skip).

        Returns the step's stats; ``loss``, ``grad_norm`` and ``finite`` (False: the update was skipped) are
        tensors on the device: reading one waits for the step to finish, so the loop reads them at log steps.
        """
        set_schedule(self.optimizer, lr_scale, momentum_at(self.state.step, self.cfg.optim))
        loss_sum = torch.zeros((), device=self.device)
        data_s = compute_s = 0.0
        for micro_step in range(self.accum):
            t0 = self.clock()
            with label("data"):  # `tinylm profile`'s ranges, here and below
                x, y = self.loader.next_batch()
            t1 = self.clock()
            data_s += t1 - t0
            with self._gradient_sync(micro_step == self.accum - 1):
                with label("forward"), runtime.autocast_context(self.precision, self.device):
                    _, loss = self.model(x, y)
                loss = loss / self.accum  # .backward() sums gradients over micro-steps: average them
                with label("backward"):
                    self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
            compute_s += self.clock() - t1
        t1 = self.clock()
        with label("optimizer"):
            grad_norm, finite = self._clip_and_update(loss_sum, (x, y))
            self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        return {"loss": loss_sum, "grad_norm": grad_norm, "finite": finite, "data_s": data_s,
                "compute_s": compute_s + self.clock() - t1}

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Reduce gradients across processes only on the last micro-step: DDP's ``no_sync`` before it; FSDP2's
        ``set_requires_gradient_sync`` (it reduce-scatters when the flag is back on). One process: nothing to do."""
        if hasattr(self.model, "no_sync"):
            return contextlib.nullcontext() if last else self.model.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _clip_and_update(self, loss_sum: torch.Tensor,
                         batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip the gradients and take the optimizer step, unless the loss or a gradient is not finite (then
        skip, or halt as ``--train.nonfinite`` says). Returns (gradient norm, finite), both device tensors."""
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor, the same value on every process
            grad_norm = grad_norm.full_tensor()
        finite = torch.isfinite(grad_norm) & torch.isfinite(loss_sum)
        if self.d.world_size > 1:  # every process must take the same decision
            finite = runtime.all_mean(finite.float(), self.d) == 1.0
        if self.precision == "fp16":  # the GradScaler skips overflowing steps by itself (and lowers its scale)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return grad_norm, torch.ones_like(finite)  # its skips calibrate the scale: not counted as failures
        if self.skip_on_device:
            self.optimizer.found_inf = (~finite).float()  # read by the fused kernel, as torch's GradScaler does
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif bool(finite):
            self.optimizer.step()
        elif self.cfg.train.nonfinite == "halt":
            self._halt(batch, loss_sum, grad_norm)
        return grad_norm, finite

    def _halt(self, batch: tuple[torch.Tensor, torch.Tensor], loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """``--train.nonfinite halt``: stop at the step, leaving the batch and a report (which gradients went bad
        first)."""
        step = self.state.step + 1
        bundle = self.run_dir / f"nonfinite_step_{step:06d}"
        bad = nonfinite_report(self.raw_model, batch, step, loss, grad_norm, self.cfg,
                               bundle if self.d.is_main else None, self.precision)
        raise TinyLMError(f"non-finite loss/gradient at step {step} (loss {float(loss)}, grad norm "
                          f"{float(grad_norm)}); first parameters with non-finite gradients: {bad[:5]}; "
                          f"batch, weights and report saved in {bundle}: `tinylm doctor --nan {bundle}` names "
                          f"the module. Lower --optim.lr, check the data, or use --train.nonfinite skip")

    def _settle(self) -> None:
        """Read the steps since the last settle on the host, in one transfer: log each skipped (non-finite) step,
        halt after ``--train.max_skips`` in a row, and watch the finite losses for spikes."""
        if not self.pending:
            return
        rows = torch.stack([torch.stack((loss.float(), finite.float())) for _, loss, finite in self.pending]).tolist()
        steps = [step for step, _, _ in self.pending]
        self.pending = []
        for step, (loss, finite) in zip(steps, rows, strict=True):
            if finite:
                self.skips_in_a_row = 0
                self.reporter.events(step, self.checks.train(loss))
                continue
            self.skips_in_a_row += 1
            self.reporter.event(step, "nonfinite_skip", f"non-finite loss/gradient: update skipped "
                                                        f"({self.skips_in_a_row} in a row)")
            if self.skips_in_a_row >= self.cfg.train.max_skips:
                raise TinyLMError(f"{self.skips_in_a_row} non-finite steps in a row (up to step {step}); training "
                                  f"has diverged: lower --optim.lr or --optim.warmup_steps, or resume from an "
                                  f"earlier checkpoint")

    # ----------------------------------------------------------------- saving and evaluation points

    def save(self, elapsed: float) -> Path | None:
        """Checkpoint the current step (rank 0 writes; the step folder, None elsewhere)."""
        return self._save(elapsed)[0]

    def _save(self, elapsed: float) -> tuple[Path | None, dict]:
        """:meth:`save`, also returning the whole model state the checkpoint holds (under FSDP gathered from every
        process: the sample after an evaluation needs it)."""
        model_state, optim_state = runtime.full_state_dicts(self.raw_model, self.optimizer, sharded=self.sharded)
        return self.checkpointer.write(self.state, elapsed, self.saved, model_state, optim_state), model_state

    def _eval_point(self, elapsed: float) -> float:
        """Save, evaluate, mark the best checkpoint, write a sample (the console says which it is doing)."""
        step, say = self.state.step, self.reporter.status
        say(step, "saving")
        saved, model_state = self._save(elapsed)  # before evaluating, which could fail
        say(step, "evaluating")
        result = self.evaluate()
        val_loss = result.loss
        self.state.best_val = min(self.state.best_val, val_loss)
        if self.d.is_main:
            ckpt.record_eval(saved, val_loss, is_best=val_loss <= self.state.best_val,
                             keep_last=self.cfg.train.keep_last)
            self.reporter.record({"step": step, "val_loss": val_loss, "val_ppl": result.ppl, "val_bpb": result.bpb,
                                  "tokens_seen": self.state.tokens_seen})
            self.reporter.events(step, self.checks.val(step, val_loss))
            say(step, "sampling")
            self.reporter.write_sample(self.raw_model, self.tok, step, val_loss,
                                       model_state if self.sharded else None)
        return val_loss

    def _elapsed(self) -> float:
        """Training seconds of this run, earlier sessions included."""
        return self.state.elapsed_before + self.clock() - self.t_start

    def _agree(self, stop: runtime.StopSignal) -> tuple[float, bool]:
        """:meth:`_elapsed` by rank 0's clock, and whether a signal reached any process, in every process (under DDP
        one all-reduce). The processes must agree on the LR and the last step against a time budget, and on the step
        to stop at after a signal: by their own clocks and signals they differ, and a process that steps once more
        than the others waits forever in a gradient all-reduce they left."""
        elapsed, stopping = runtime.main_clock_and_any_stop(self._elapsed(), stop.requested, self.d)
        stop.reached(stopping)
        return elapsed, stopping

    # ----------------------------------------------------------------- the run

    def run(self) -> TrainResult:
        """Train to the end, then unlock the run folder."""
        try:
            if self._finished(self.state.elapsed_before):
                return self._already_done()
            return self._run()
        finally:
            self.close()

    def _finished(self, elapsed: float) -> bool:
        """No steps left: ``max_steps`` reached, or the time budget spent (``elapsed``: this run's training
        seconds, earlier sessions included)."""
        spent = self.time_budget is not None and elapsed >= self.time_budget
        return self.state.step >= self.cfg.train.max_steps or spent

    def _already_done(self) -> TrainResult:
        """A resumed run with no steps left: say so and write nothing (no metrics, sample or checkpoint)."""
        tc, s = self.cfg.train, self.state
        if s.step >= tc.max_steps:
            why = f"--train.max_steps {tc.max_steps}"
            more = f"--train.max_steps, e.g. --train.max_steps {2 * s.step}"
        else:
            why = f"--train.time_budget {tc.time_budget} used: {format_duration(s.elapsed_before)} of training"
            more = f"--train.time_budget, e.g. --train.time_budget {format_duration(2 * self.time_budget)}"
        self.log(f"run {self.run_dir} is complete: already at step {s.step} ({why}), best val loss "
                 f"{s.best_val:.4f}; nothing to do. To train further, resume with a higher {more}")
        return TrainResult(self.run_dir, s.step, math.nan, math.nan, s.best_val, s.tokens_seen, s.elapsed_before,
                           False)

    def _run(self) -> TrainResult:
        """Describe, train until done, evaluate (and save) a last time, report."""
        self.reporter.describe(self.raw_model, self.device, self.precision, peak_flops(self.device, self.precision),
                               self.micro, self.accum, self.attention)
        self.reporter.start(self.state.step)
        try:
            with runtime.StopSignal() as stop, runtime.ending_when_a_process_is_lost(self.d, self.reporter.close):
                if self.state.step == 0:  # the loss on the first validation batch of each process
                    self.reporter.events(0, self.checks.initial(self.evaluate(passes=1).loss))
                self.train_loss = math.nan  # the last logged one
                self.t_start = self.clock()
                stopped = self._train_until_done(stop)
                train_seconds = self._elapsed()
                val_loss = self._eval_point(train_seconds)
                if stopped:
                    self.log(f"\nstopped by signal at step {self.state.step}; checkpoint saved, continue with "
                             f"--resume")
                report_lines: list[str] = []  # said after the final line
                if self.d.is_main and self.cfg.run.report:
                    self.reporter.status(self.state.step, "writing the report")
                    write_after_training(self.run_dir, report_lines.append)
        finally:
            self.reporter.close()
        s = self.state
        self.log(f"done at step {s.step}: final train loss {self.train_loss:.4f}, final val loss {val_loss:.4f} "
                 f"(best {s.best_val:.4f}); {s.tokens_seen:,} tokens in {train_seconds:.0f}s of training; "
                 f"run folder {self.run_dir}")
        for line in report_lines:
            self.log(line)
        return TrainResult(self.run_dir, s.step, self.train_loss, val_loss, s.best_val, s.tokens_seen, train_seconds,
                           stopped)

    def _train_until_done(self, stop: runtime.StopSignal) -> bool:
        """Steps until ``max_steps`` or the time budget; True when a signal stopped it first."""
        tc, window = self.cfg.train, self.reporter.window
        window.restart()
        # one agreement per step (under DDP an all-reduce on the host) serves the stop checks after the step and the
        # next step's LR; that LR does not see an evaluation or save in between until one step later
        elapsed, _ = self._agree(stop)
        while True:
            time_frac = elapsed / self.time_budget if self.time_budget else None
            scale = lr_scale(self.state.step, self.cfg.optim, tc.max_steps, time_frac)
            stats = self._timed_step(scale)
            step = self.state.step
            elapsed, stopping = self._agree(stop)
            last = self._finished(elapsed)  # then the final evaluation: no other one at this step
            if step % tc.log_interval == 0 or last or stopping:
                self._settle()  # the only wait for the device between steps
            if step % tc.log_interval == 0 or last:  # the last step is logged: the final train loss
                left = self.time_budget - self._elapsed() if self.time_budget else None
                self.train_loss = self.reporter.log_step(step, stats, scale, self.raw_model, self.optimizer,
                                                         (self.tokens_per_step, self.state.tokens_seen),
                                                         self._elapsed(), left)
            if not (last or stopping):  # else the final evaluation saves: once
                with window.paused():  # evaluation and saving are not training throughput
                    self._eval_or_save()
            if stopping:
                return True
            if last:
                if step < tc.max_steps:
                    self.reporter.event(step, "time_budget", f"time budget {tc.time_budget} reached")
                return False

    def _timed_step(self, scale: float) -> dict:
        """:meth:`train_step`, counted in the throughput window; its loss and skip flag wait for :meth:`_settle`."""
        first_compiled, self.compiling = self.compiling, False
        stats = self.train_step(scale)
        if first_compiled:  # the first compiled step includes compilation: report it apart
            self.reporter.event(self.state.step, "compiled", f"first step incl. torch.compile: "
                                f"{stats['compute_s']:.1f}s", compile_s=stats["compute_s"])
            self.reporter.window.restart()
        else:
            self.reporter.window.add(stats["data_s"], stats["compute_s"])
        self.pending.append((self.state.step, stats["loss"], stats["finite"]))
        return stats

    def _eval_or_save(self) -> None:
        """At an eval interval: save, then evaluate; at a save interval (default: the eval interval): save."""
        tc, step = self.cfg.train, self.state.step
        save_every = tc.save_interval or tc.eval_interval
        if tc.eval_interval and step % tc.eval_interval == 0:
            self._eval_point(self._elapsed())
        elif save_every and step % save_every == 0:
            self.save(self._elapsed())


def train(cfg: Config, *, resume: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train ``cfg`` to ``train.max_steps`` (or the time budget, or SIGINT/SIGTERM), saving to ``cfg.run_dir``."""
    return Trainer(cfg, resume=resume, log=log).run()
