"""One generation step, today's single-forward model against an earlier revision's model.py.

    .venv/bin/python benchmarks/bench_decode_step.py [--against 2515b65] [--rounds 7] [--steps 200]

Up to 2515b65 the model had a separate decode path (``forward_cached``: weights called directly,
no nn.Module calls, a rotary form with its own tables); since then one ``forward`` serves training
and generation. This measures what that costs per generated token: the same weights in both
models, a 16-token prompt read into a KV cache, then ``--steps`` one-token ``decode`` steps, timed;
the models take turns for ``--rounds`` rounds and the best round of each is reported (a round hit by
another process's work is slower, never faster). Shapes: the tiny Shakespeare preset's model
(4 x 128, rotary, RMSNorm, ReLU²) and ModelConfig's default size (6 x 384, learned positions,
LayerNorm, GELU), batch 1 and 8. The earlier model.py is read with ``git show`` (needs the
repository's history).
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import REPO, machine, machine_line

from tinylm.config import ModelConfig
from tinylm.model.gpt import GPT

SHAPES = {
    "4x128 rotary/RMSNorm/ReLU² (preset)": dict(n_layer=4, n_head=4, n_embd=128, pos="rope", norm="rmsnorm",
                                               mlp="relu2"),
    "6x384 learned/LayerNorm/GELU (default)": dict(n_layer=6, n_head=6, n_embd=384),
}


def model_at(rev: str):
    """The model module as it was at git revision ``rev`` (then ``src/tinylm/model.py``)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:src/tinylm/model.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "model_then.py"
    path.write_text(source.replace("from .config import", "from tinylm.config import"))
    spec = importlib.util.spec_from_file_location("model_then", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ms_per_token(step, prefill, batch: int, steps: int) -> float:
    """Prefill 16 tokens per row, then time ``steps`` one-token steps; milliseconds per step."""
    cache = prefill(torch.zeros(batch, 16, dtype=torch.long))
    token = torch.zeros(batch, 1, dtype=torch.long)
    t = time.perf_counter()
    for _ in range(steps):
        step(token, cache)
    return 1000 * (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default="2515b65", help="the git revision whose model.py to compare with")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    print(f"# {info['date']} | {machine_line(info)}", flush=True)
    then = model_at(args.against)
    print(f"| shape | batch | {args.against} (separate decode path) ms/token | now (one forward) ms/token "
          f"| now / then |")
    print("| --- | --- | --- | --- | --- |")
    for name, shape in SHAPES.items():
        cfg = ModelConfig(block_size=256, vocab_size=65, **shape)
        torch.manual_seed(0)
        now = GPT(cfg).eval()
        old = then.GPT(cfg).eval()
        old.load_state_dict(now.state_dict())

        def prefill_now(idx, m=now):
            cache = m.new_cache(idx.size(0))
            m(idx, cache=cache)
            return cache

        def prefill_then(idx, m=old):
            cache = m.new_cache(idx.size(0))
            m.forward_cached(idx, cache)
            return cache

        for batch in (1, 8):
            best = {"then": float("inf"), "now": float("inf")}
            with torch.inference_mode():
                for _ in range(args.rounds):
                    best["then"] = min(best["then"], ms_per_token(old.decode, prefill_then, batch, args.steps))
                    best["now"] = min(best["now"], ms_per_token(now.decode, prefill_now, batch, args.steps))
            print(f"| {name} | {batch} | {best['then']:.3f} | {best['now']:.3f} | {best['now'] / best['then']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
