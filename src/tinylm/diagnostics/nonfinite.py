"""The NaN hunt: which module's output or gradient went non-finite first, found by replaying the step with hooks;
the bundle a non-finite step leaves, and its replay."""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import Config, from_dict
from ..errors import TinyLMError
from ..fileio import write_text_atomic
from ..training import checkpoint as ckpt
from ..training import runtime

BATCH_FILE, WEIGHTS_FILE, REPORT_FILE = "batch.pt", "model.pt", "report.json"  # a non-finite bundle's files


def nonfinite_report(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], step: int,
                     loss: torch.Tensor, grad_norm: torch.Tensor, cfg: Config, bundle: Path | None,
                     precision: str = "fp32") -> list[str]:
    """The parameters whose gradients went non-finite, in model order.

    With ``bundle`` (the main process), also leave there what reproduces the step: the batch
    (``batch.pt``), the weights the step started from (``model.pt``; not under FSDP, whose weights
    are sharded) and ``report.json``: step, loss, grad norm, those parameters, the config, and the
    NaN hunt's answer (:func:`hunt_nonfinite`: the first *module* whose output or gradient went
    non-finite, which parameter order cannot tell) with its likely cause.
    """
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bundle is None:
        return bad
    bundle.mkdir(parents=True, exist_ok=True)
    x, y = batch[0].cpu(), batch[1].cpu()
    torch.save({"x": x, "y": y}, bundle / BATCH_FILE)
    sharded = any(hasattr(p, "full_tensor") for p in model.parameters())  # FSDP DTensors
    report = {"step": step, "loss": float(loss), "grad_norm": float(grad_norm), "nonfinite_grads_in_order": bad}
    if not sharded:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, bundle / WEIGHTS_FILE)
        device = next(model.parameters()).device
        try:
            finding = hunt_nonfinite(model, (x.to(device), y.to(device)), precision)
        except RuntimeError as e:  # the report must be written whatever the replay hits
            report["hunt_error"] = str(e).splitlines()[0]
        else:
            report["first_nonfinite"] = finding.to_dict() if finding else None
            report["likely_cause"] = likely_cause(finding, step, precision)
    report["config"] = cfg.to_dict()
    write_text_atomic(bundle / REPORT_FILE, json.dumps(report, indent=2))
    return bad


# --------------------------------------------------------------------------- the NaN hunt

@dataclass
class NonfiniteFinding:
    """Where a replayed step first went non-finite."""
    module: str  # dotted module name, e.g. "blocks.1.mlp.up"; "loss" for the cross-entropy itself
    phase: str  # weights (a parameter already non-finite) | forward (its output) | backward (its input gradient)
    max_abs: float  # the largest finite |value| of that tensor (how far it had grown)
    nonfinite_share: float  # share of its values that are NaN or inf
    input_max_abs: float  # the largest finite |value| the module received (forward: its inputs; backward: grad_output)
    nonfinite_weights: list[str] = field(default_factory=list)  # parameters already non-finite before the step

    def to_dict(self) -> dict:
        return asdict(self)


def _tensors(obj: object) -> list[torch.Tensor]:
    """The floating-point tensors in a module's inputs or outputs (tensor, tuple, list, or None)."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _stats(tensors: list[torch.Tensor]) -> tuple[float, float]:
    """(largest finite |value|, share of non-finite values) over ``tensors``; (0, 0) for none."""
    if not tensors:
        return 0.0, 0.0
    flat = torch.cat([t.detach().float().reshape(-1) for t in tensors])
    finite = torch.isfinite(flat)
    max_abs = float(flat[finite].abs().max()) if finite.any() else math.nan
    return max_abs, 1.0 - float(finite.float().mean())


def _nonfinite(tensors: list[torch.Tensor]) -> bool:
    return any(not bool(torch.isfinite(t).all()) for t in tensors)


def hunt_nonfinite(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                   precision: str = "fp32") -> NonfiniteFinding | None:
    """Replay one forward and backward of ``batch`` with hooks on every module; name the first to go non-finite.

    Forward hooks see modules finish innermost first, so the first module whose output holds a NaN or
    inf is where it was made (its inputs were still finite). If the forward stays finite, backward hooks
    (on modules, and on parameters for the gradients that leave no module input, like an embedding's)
    name the first module whose gradient went non-finite. Parameters that are already non-finite are
    listed too: then the cause is an earlier update. None when the replay stays finite throughout.
    Leaves the replay's gradients in the parameters (callers are about to stop, or clear them).
    """
    names = {m: n or "model" for n, m in model.named_modules()}
    owner = {id(p): n.rpartition(".")[0] or "model" for n, p in model.named_parameters()}
    bad_weights = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    found: list[NonfiniteFinding] = []

    def note(module_name: str, phase: str, tensors: list[torch.Tensor], inputs: list[torch.Tensor]) -> None:
        if not found and _nonfinite(tensors):
            max_abs, share = _stats(tensors)
            found.append(NonfiniteFinding(module_name, phase, max_abs, share, _stats(inputs)[0], bad_weights))

    def on_forward(module: torch.nn.Module, args: tuple, output: object) -> None:
        note(names[module], "forward", _tensors(output), _tensors(args))

    tainted: set[str] = set()  # modules whose output gradient arrived non-finite: they passed it on, not made it

    def before_backward(module: torch.nn.Module, grad_output: tuple) -> None:
        if _nonfinite(_tensors(grad_output)):
            tainted.add(names[module])

    def on_backward(module: torch.nn.Module, grad_input: tuple, grad_output: tuple) -> None:
        if names[module] not in tainted:
            note(names[module], "backward", _tensors(grad_input), _tensors(grad_output))

    def on_param_grad(p: torch.nn.Parameter) -> Callable[[torch.Tensor], None]:
        return lambda grad: None if owner[id(p)] in tainted else note(owner[id(p)], "backward", [grad], [])

    handles = [h for m in model.modules() for h in (m.register_forward_hook(on_forward),
                                                    m.register_full_backward_pre_hook(before_backward),
                                                    m.register_full_backward_hook(on_backward))]
    handles += [p.register_hook(on_param_grad(p)) for p in model.parameters() if p.requires_grad]
    checkpointing = getattr(model, "activation_checkpointing", False)
    try:
        model.activation_checkpointing = False  # a recomputed forward would fire the hooks twice
        model.zero_grad(set_to_none=True)
        x, y = batch
        with runtime.autocast_context(precision, x.device):
            _, loss = model(x, y)
        note("loss", "forward", [loss], [])
        if loss.requires_grad:
            with warnings.catch_warnings():  # the token embedding's input (ids) needs no gradient: expected
                warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
                loss.backward()
    finally:
        model.activation_checkpointing = checkpointing
        for h in handles:
            h.remove()
    if found:
        if bad_weights and found[0].phase == "forward":
            found[0].phase = "weights"
        return found[0]
    return None


def likely_cause(finding: NonfiniteFinding | None, step: int, precision: str) -> str:
    """The usual reason behind a finding, and what to try (the seeds' table: NaN at step 1 vs later)."""
    if finding is None:
        return ("the replay stayed finite: the non-finite value came from something random (dropout masks) or "
                "from the data order; rerun with --train.nonfinite skip, which drops such a step")
    where = f"{finding.module} ({finding.phase})"
    if finding.phase == "weights":
        return (f"the weights were already non-finite ({', '.join(finding.nonfinite_weights[:3])}): an earlier "
                f"update blew up, usually an LR too high; lower --optim.lr, lengthen --optim.warmup_steps, keep "
                f"--optim.grad_clip on, and resume from an earlier checkpoint")
    biggest = max(finding.max_abs if math.isfinite(finding.max_abs) else 0.0, finding.input_max_abs)
    if precision == "fp16" and biggest > 1e4:
        return (f"fp16 range: values reached {biggest:.3g} at {where}, near fp16's largest number 65504; "
                f"use --train.precision bf16 (fp32's range) or lower --optim.lr")
    if "attn" in finding.module and finding.phase == "forward":
        return (f"overflowing attention logits at {where}: queries and keys grew until q.k overflowed; "
                f"--model.qk_norm true bounds them, or lower --optim.lr")
    if step <= 1:
        return (f"non-finite at step 1 ({where}): the initialization or the data, not training; check "
                f"`tinylm doctor` (init loss near ln(vocab)) and the batch's token ids, then lower --optim.lr "
                f"or add --optim.warmup_steps")
    if biggest > 1e4:
        return (f"values grew to {biggest:.3g} before {where} went non-finite: an LR too high; lower "
                f"--optim.lr, lengthen --optim.warmup_steps, keep --optim.grad_clip on")
    return (f"non-finite at {where} after {step - 1} good steps with moderate values: a single bad batch or an "
            f"operation undefined at its input (log/sqrt of 0, division by 0); look at the saved batch, keep "
            f"--optim.grad_clip on, or use --train.nonfinite skip")


def replay_bundle(bundle: str | Path, device: str = "cpu") -> dict:
    """``tinylm doctor --nan RUN/nonfinite_step_N``: rebuild the model from the bundle's config and weights,
    replay its batch with :func:`hunt_nonfinite`, and return the report with the finding and likely cause."""
    from ..model.gpt import GPT
    bundle = Path(bundle)
    if not (bundle / REPORT_FILE).is_file() or not (bundle / BATCH_FILE).is_file():
        raise TinyLMError(f"{bundle} is not a non-finite bundle (no {REPORT_FILE} and {BATCH_FILE}); "
                          f"`--train.nonfinite halt` writes them to RUN/nonfinite_step_N")
    if not (bundle / WEIGHTS_FILE).is_file():
        raise TinyLMError(f"{bundle} has no {WEIGHTS_FILE} (written by an older tinylm or an FSDP run): the "
                          f"step cannot be replayed; its report.json lists the parameters with non-finite gradients")
    try:
        report = json.loads((bundle / REPORT_FILE).read_text(encoding="utf-8"))
        cfg = from_dict(report["config"])
    except (ValueError, KeyError, TypeError) as e:  # not JSON, or JSON without a config of this tinylm
        raise TinyLMError(f"{bundle / REPORT_FILE} is corrupt ({type(e).__name__}: {e}); the bundle cannot be "
                          f"replayed: train again with --train.nonfinite halt for a new one") from None
    dev = runtime.resolve_device(device, flag="--device")
    wanted = cfg.train.precision if cfg.train.precision != "fp16" or dev.type == "cuda" else "fp32"  # fp16: CUDA only
    wanted = "bf16" if wanted == "fp8" else wanted  # no FP8 layers in the replay: the rest of the run was bf16
    precision = runtime.resolve_precision(wanted, dev)
    model = GPT(cfg.model).to(dev)
    # tensors only: a pickle that would run code, or a damaged file, is refused in one line
    ckpt.load_state(model, ckpt.load_part(bundle, Path(WEIGHTS_FILE).stem, dev), bundle, "model")
    batch = ckpt.load_part(bundle, Path(BATCH_FILE).stem, dev)
    finding = hunt_nonfinite(model, (batch["x"], batch["y"]), precision)
    return {"bundle": str(bundle), "step": report["step"], "loss": report["loss"], "precision": precision,
            "device": str(dev), "first_nonfinite": finding.to_dict() if finding else None,
            "likely_cause": likely_cause(finding, report["step"], precision)}


def format_nan_report(r: dict) -> str:
    """The replay's answer as a few lines for the console."""
    f = r["first_nonfinite"]
    lines = [f"{r['bundle']}: step {r['step']}, loss {r['loss']}, replayed on {r['device']} in {r['precision']}"]
    if f is None:
        lines.append("  the replay stayed finite")
    else:
        lines.append(f"  first non-finite: {f['module']} ({f['phase']}): max |x| {f['max_abs']:.4g}, "
                     f"{100 * f['nonfinite_share']:.1f}% non-finite; its input max |x| {f['input_max_abs']:.4g}")
        if f["nonfinite_weights"]:
            lines.append(f"  non-finite weights: {', '.join(f['nonfinite_weights'][:5])}")
    lines.append(f"  likely cause: {r['likely_cause']}")
    return "\n".join(lines)
