"""Text generation from a trained model: temperature and top-k sampling."""
from __future__ import annotations

import torch

from .model import GPT
from .tokenizer import Tokenizer


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row, set the rest to -inf (k = 0 or >= vocab: unchanged)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1) the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Append ``max_new_tokens`` sampled tokens to idx (B, T); the context is cropped to block_size."""
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        context = idx[:, -model.cfg.block_size:]
        logits, _ = model(context)
        logits = top_k_filter(logits[:, -1, :].float() / temperature, top_k)  # (B, vocab)
        probs = torch.softmax(logits, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        idx = torch.cat((idx, nxt), dim=1)
    model.train(was_training)
    return idx


def sample_text(model: GPT, tok: Tokenizer, prompt: str, max_new_tokens: int, *, temperature: float,
                top_k: int, seed: int, device: torch.device | str = "cpu") -> str:
    """Prompt -> prompt + generated text, reproducible for a given seed."""
    ids = tok.encode(prompt) or [0]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen)
    return tok.decode(out[0].tolist())
