"""Parameter groups, the optimizer, and learning-rate schedules (pure functions of the step)."""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn

from .config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters by role: weight decay on hidden weight matrices only.

    Embeddings (and a tied head), norms, biases and other vectors get no decay: shrinking them
    toward zero does not regularize anything useful and hurts small models.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():  # .parameters() yields a tied tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "role": "matrices"},
            {"params": no_decay, "weight_decay": 0.0, "role": "embeddings, norms, biases"}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; the fused kernel on CUDA, foreach elsewhere."""
    fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             **({"fused": True} if fused else {"foreach": True}))


def lr_at(step: int, cfg: OptimConfig, max_steps: int, time_frac: float | None = None) -> float:
    """Learning rate at ``step`` (0-based): linear warmup, then cosine to ``min_lr_ratio * lr``.

    ``lr_at(0, ...)`` is ``lr / warmup_steps`` (never 0, so the first step trains);
    the last step ``max_steps - 1`` ends exactly at the floor. With a time budget,
    ``time_frac`` = elapsed / budget drives the decay too (whichever is further along), so a
    run cut by the clock still ends at the floor.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = max(max_steps - 1 - cfg.warmup_steps, 1)
    progress = min(max((step - cfg.warmup_steps) / decay_steps, time_frac or 0.0), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
