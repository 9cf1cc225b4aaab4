"""Parameter groups, optimizers (AdamW, Muon, Lion), schedules (pure functions). (The LR range test: lr_find.py.)

The trainer builds one optimizer object per run with :func:`build_optimizer`; every group carries
its own peak learning rate (``peak_lr``) and the schedule is one multiplier applied to all of
them (:func:`lr_scale`), so ratios between groups stay fixed over the run.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..config import OptimConfig
from ..config_check import literal_fields, not_one_of
from ..errors import TinyLMError

# The quintic Newton-Schulz coefficients published with Muon (Keller Jordan, 2024): chosen so the
# iteration pushes every singular value of a normalized matrix into roughly [0.7, 1.2] in 5 steps.
NS_COEFFS = (3.4445, -4.7750, 2.0315)
# fp32 tensors of optimizer state per parameter: AdamW's two moments, Lion's and Muon's one momentum (Muon's AdamW
# groups, the embeddings and norms, keep two: this is the least a step holds)
STATE_TENSORS = {"adamw": 2, "lion": 1, "muon": 1}


# ----------------------------------------------------------------------------- parameter groups

def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Parameters by role, each group with its peak LR and weight decay.

    * ``matrices``: hidden weight matrices (attention and MLP projections): decay ``weight_decay``,
      LR ``lr``, betas ``beta1, beta2``; with Muon, these (and only these) are orthogonalized.
    * ``embeddings``: token/position embeddings and the output head (tied or not): LR ``embed_lr``,
      decay ``embed_weight_decay`` (0 by default), betas ``embed_beta1, embed_beta2``.
    * ``scalars``: norms, biases and any other vector: LR ``scalar_lr``, never decayed, the
      embeddings' betas.

    A tied head is the embedding tensor, listed once. Empty groups are left out.
    """
    embed_lr = cfg.embed_lr or cfg.lr
    head = getattr(model, "lm_head", None)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    if isinstance(head, nn.Linear):
        embeddings.add(id(head.weight))
    by_role: dict[str, list[nn.Parameter]] = {"matrices": [], "embeddings": [], "scalars": []}
    seen: set[int] = set()
    for p in model.parameters():  # .parameters() yields a tied tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        role = "embeddings" if id(p) in embeddings else "matrices" if p.dim() >= 2 else "scalars"
        by_role[role].append(p)
    embed_betas = (cfg.embed_beta1, cfg.embed_beta2)
    settings = {"matrices": (cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2)),
                "embeddings": (embed_lr, cfg.embed_weight_decay, embed_betas),
                "scalars": (cfg.scalar_lr or embed_lr, 0.0, embed_betas)}
    return [{"params": ps, "role": role, "peak_lr": settings[role][0], "lr": settings[role][0],
             "weight_decay": settings[role][1], "betas": settings[role][2]} for role, ps in by_role.items() if ps]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str,
                    ns_dtype: torch.dtype = torch.float32) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` names, over :func:`param_groups`.

    AdamW is torch's fused kernel on CPU and CUDA (one kernel over all parameters instead of foreach's per-tensor ops;
    BENCHMARKS.md, "Training throughput", has what it saves), foreach on other devices. The fused kernel
    also skips a step on the device when given a ``found_inf`` flag: the trainer's non-finite guard uses it.
    ``ns_dtype`` is the dtype of Muon's Newton-Schulz matmuls: the trainer passes bfloat16 when the run's precision
    is bf16 (the hardware is fast at it), float32 otherwise.
    """
    groups = param_groups(model, cfg)
    if cfg.name == "muon":
        for g in groups:
            g["muon"] = g["role"] == "matrices"
        return Muon(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, ns_steps=cfg.ns_steps,
                    eps=cfg.eps, ns_dtype=ns_dtype)
    if cfg.name == "lion":
        return Lion(groups, lr=cfg.lr)
    fused = device_type in ("cpu", "cuda") and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.eps,
                             **({"fused": True} if fused else {"foreach": True}))


def set_schedule(optimizer: torch.optim.Optimizer, scale: float, momentum: float | None = None) -> None:
    """Set every group's LR to ``scale * peak_lr`` (and Muon groups' momentum, when given)."""
    for group in optimizer.param_groups:
        group["lr"] = scale * group["peak_lr"]
        if momentum is not None and group.get("muon"):
            group["momentum"] = momentum


class _GroupwiseOptimizer(torch.optim.Optimizer):
    """``step()`` = :meth:`update_group` for every param group, gradients off (torch's closure protocol kept)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self.update_group(group)
        return loss

    def update_group(self, group: dict) -> None:
        raise NotImplementedError

    def with_state(self, group: dict, *buffers: str):
        """(parameter, its state) for each parameter of ``group`` that has a gradient; ``buffers`` start at 0."""
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state.update({name: torch.zeros_like(p) for name in buffers})
            yield p, state


# ----------------------------------------------------------------------------- Muon

def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to ``g`` (its ``U V^T``), approximately, by Newton-Schulz.

    ``g`` is one matrix (m, n) or a batch of them (..., m, n). Works on the smaller side: a tall
    (m > n) matrix is transposed so that ``X @ X^T`` is the small n x n Gram matrix. The result has
    ``g``'s shape and singular values near 1 (0.7-1.2 with the quintic coefficients: the iteration
    trades exactness for speed, which Muon does not mind).
    """
    a, b, c = NS_COEFFS
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT  # (n, m) with n < m
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT  # (n, n)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(_GroupwiseOptimizer):
    """Muon on the hidden weight matrices, AdamW on everything else: one ``step()``, one ``state_dict()``.

    Groups with ``muon=True``: SGD momentum (Nesterov by default) whose update for each 2-D matrix
    is orthogonalized by :func:`orthogonalize` and scaled by ``sqrt(max(1, rows / cols))``, so every
    matrix moves by about the same RMS amount per step whatever its shape; decoupled weight decay.
    Other groups: AdamW (bias-corrected moments, decoupled decay), the same update as
    ``torch.optim.AdamW``.

    Muon only makes sense for dense hidden matrices: an embedding table's rows are updated
    sparsely and a vector has nothing to orthogonalize, so handing either to the Muon part is an error.
    """

    def __init__(self, params: Iterable, *, lr: float, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0,
                 ns_dtype: torch.dtype = torch.float32):
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps, "betas": betas,
                    "eps": eps, "weight_decay": weight_decay, "muon": False}
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            if not group["muon"]:
                continue
            if group.get("role") in ("embeddings", "scalars"):
                raise TinyLMError(f"Muon was handed the '{group['role']}' group: Muon is for hidden weight "
                                  f"matrices only; put embeddings, the head, norms and biases in an AdamW group "
                                  f"(muon=False)")
            for p in group["params"]:
                if p.dim() != 2:
                    raise TinyLMError(f"Muon orthogonalizes 2-D weight matrices, but was handed a parameter of "
                                      f"shape {tuple(p.shape)}; put it in an AdamW group (muon=False)")

    def update_group(self, group: dict) -> None:
        (self._muon_step if group["muon"] else self._adamw_step)(group)

    def _muon_step(self, group: dict) -> None:
        lr, mu = group["lr"], group["momentum"]
        by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # shape -> [(param, update)]
        for p, state in self.with_state(group, "momentum_buffer"):
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(p.grad)
            by_shape.setdefault(p.shape, []).append((p, p.grad.add(buf, alpha=mu) if group["nesterov"] else buf))
        for (rows, cols), items in by_shape.items():
            # matrices of one shape (the same projection in every block) orthogonalize together:
            # one batched matmul per iteration instead of one per matrix
            updates = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"], self.ns_dtype)
            for (p, _), update in zip(items, updates, strict=True):
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * max(1.0, rows / cols) ** 0.5)

    def _adamw_step(self, group: dict) -> None:
        (beta1, beta2), lr = group["betas"], group["lr"]
        for p, state in self.with_state(group, "exp_avg", "exp_avg_sq"):
            state["step"] = state.get("step", 0) + 1
            t = state["step"]
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
            p.mul_(1 - lr * group["weight_decay"])
            p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** t))


# ----------------------------------------------------------------------------- Lion

class Lion(_GroupwiseOptimizer):
    """Lion (Chen et al., 2023): the update is the sign of an interpolation of momentum and gradient.

    ``update = sign(beta1 * m + (1 - beta1) * g)``; ``p -= lr * (update + wd * p)``;
    ``m = beta2 * m + (1 - beta2) * g``. Every coordinate moves by exactly ``lr``, so Lion wants a
    learning rate 3-10x smaller than AdamW's (and a larger weight decay for the same effect).
    """

    def __init__(self, params: Iterable, *, lr: float, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    def update_group(self, group: dict) -> None:
        (beta1, beta2), lr = group["betas"], group["lr"]
        for p, state in self.with_state(group, "exp_avg"):
            m = state["exp_avg"]
            update = m.lerp(p.grad, 1 - beta1).sign_()
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(update, alpha=-lr)
            m.lerp_(p.grad, 1 - beta2)


# ----------------------------------------------------------------------------- schedules

_DECAY_SHAPES = {  # q in [0, 1] through the final decay -> fraction of the way from the floor to the peak
    "linear": lambda q: 1.0 - q,
    "cosine": lambda q: 0.5 * (1.0 + math.cos(math.pi * q)),
    "1-sqrt": lambda q: 1.0 - math.sqrt(q),
}


def lr_scale(step: int, cfg: OptimConfig, max_steps: int, time_frac: float | None = None) -> float:
    """The schedule: a multiplier of every group's peak LR at ``step`` (0-based).

    Warmup is linear and never 0 (``lr_scale(0)`` is ``1 / warmup_steps``, so the first step
    trains). After it, ``p`` runs from 0 to 1 over the remaining steps and the last step
    (``max_steps - 1``) sits at the end of the schedule. With a time budget, ``time_frac`` =
    elapsed / budget moves ``p`` too (whichever is further along), so a run cut by the clock still
    ends decayed. With warmup 10, max_steps 110, min_lr_ratio 0.1, decay_frac 0.2 at step 100
    (p = 0.909): constant 1.0, cosine 0.118, wsd (linear) 0.509, cosine_warmdown 0.054.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    p = min(max((step - cfg.warmup_steps) / max(max_steps - 1 - cfg.warmup_steps, 1), time_frac or 0.0), 1.0)
    floor = cfg.min_lr_ratio
    cosine = floor + (1 - floor) * _DECAY_SHAPES["cosine"](p)
    q = max(p - (1 - cfg.decay_frac), 0.0) / cfg.decay_frac  # 0 until the final decay, then up to 1
    if cfg.schedule == "cosine":
        return cosine
    if cfg.schedule == "wsd":  # warmup, stable at the peak, then decay to the floor
        return floor + (1 - floor) * _DECAY_SHAPES[cfg.decay_shape](q)
    if cfg.schedule == "cosine_warmdown":  # cosine, and over the last decay_frac a linear ramp to 0
        return cosine * (1.0 - q)
    raise TinyLMError(not_one_of("optim.schedule", cfg.schedule, literal_fields(cfg)["schedule"]))


def momentum_at(step: int, cfg: OptimConfig) -> float:
    """Muon's momentum: linear from ``momentum_warmup_start`` to ``momentum`` over the warmup steps."""
    if step >= cfg.momentum_warmup_steps:
        return cfg.momentum
    frac = step / cfg.momentum_warmup_steps
    return (1 - frac) * cfg.momentum_warmup_start + frac * cfg.momentum
