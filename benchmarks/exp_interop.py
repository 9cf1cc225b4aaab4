"""Interop figures (issue 17): GPT-2 in, Hugging Face out, fine-tuning from imported weights.

    .venv/bin/python benchmarks/exp_interop.py                       # tiny random models, a few minutes
    .venv/bin/python benchmarks/exp_interop.py --gpt2 gpt2           # + GPT-2 small (hub name or local folder)
    .venv/bin/python benchmarks/exp_interop.py --steps 300 --out /tmp/interop

* **import**: a tiny random GPT-2 (2 layers, width 64, GPT-2's vocabulary) built and saved by
  transformers, then ``tinylm import``: the largest |logit difference| against transformers (fp32,
  2 x 128 random tokens). With ``--gpt2``, the same for real GPT-2 weights.
* **export**: a random GPT-2-family and a Llama-family tinylm model exported with ``--format hf`` and
  loaded by ``AutoModelForCausalLM``: the largest |logit difference| and whether 50 greedy tokens
  from transformers' ``generate`` equal tinylm's.
* **fine-tune**: the tiny imported GPT-2 trained with ``--train.init_from`` on tiny Shakespeare
  (GPT-2 tokenizer) for ``--steps`` steps: validation loss before and after.

Needs ``transformers`` (the dev extra). Results: printed as a markdown table and written to
``--out``/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from common import SHARED, machine, machine_line, use_shared_data


def shake(module, seed: int = 0):
    """Random values in every parameter (biases and norm gains too), so that no mapping error hides behind zeros."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return module.eval()


def max_diff(hf, ours, vocab: int, length: int = 128) -> float:
    """The largest |logit difference| of the two models on 2 x ``length`` random tokens (fp32)."""
    import torch
    x = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((hf(x).logits.float() - ours(x)[0].float()).abs().max())


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def tiny_gpt2(out: Path) -> Path:
    """A tiny random GPT-2 saved by transformers (its own safetensors and config.json)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = shake(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128)))
    model.save_pretrained(fresh(out / "tiny-gpt2"))
    return out / "tiny-gpt2"


def import_figure(source: str, out: Path) -> tuple[float, Path]:
    """Max |logit difference| between transformers' model ``source`` and ``tinylm import``'s; the run folder."""
    from transformers import AutoModelForCausalLM

    from tinylm.cli import main
    from tinylm.training.checkpoint import load_for_inference
    run = fresh(out / "runs" / f"import-{Path(source).name}")
    assert main(["import", source, "--out", str(run)]) == 0
    hf = AutoModelForCausalLM.from_pretrained(source, dtype="float32").eval()
    model = load_for_inference(run, device="cpu").model
    return max_diff(hf, model, model.cfg.vocab_size), run


def export_figure(family: dict[str, str], out: Path, name: str) -> tuple[float, bool]:
    """A random tinylm model of ``family`` exported and reloaded: max |logit difference|, 50 greedy tokens equal."""
    import torch
    from transformers import AutoModelForCausalLM

    from tinylm.cli import main
    from tinylm.config import Config, SampleConfig, set_value
    from tinylm.generation.generate import generate
    from tinylm.model.gpt import GPT
    from tinylm.tokenizer import BPETokenizer
    from tinylm.training.run_folder import save_weights
    tok = BPETokenizer.from_tiktoken("gpt2")
    cfg = Config()
    for key, value in {"run.dir": str(out / "runs"), "run.name": f"export-{name}", "model.n_layer": "2",
                       "model.n_head": "4", "model.n_embd": "64", "model.block_size": "128", **family}.items():
        set_value(cfg, key, value)
    cfg.model.vocab_size = tok.vocab_size
    torch.manual_seed(0)
    model = shake(GPT(cfg.model))
    fresh(cfg.run_dir)
    save_weights(cfg, model.state_dict(), tok, "random")
    folder = fresh(out / "hf" / name)
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(folder)]) == 0
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = tok.encode("ROMEO: What say you")
    ours = generate(model, [prompt], SampleConfig(strategy="greedy", max_new_tokens=50))[0][0].tokens
    hf.generation_config.eos_token_id = None
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=50, do_sample=False)[0, len(prompt):].tolist()
    return max_diff(hf, model, tok.vocab_size), theirs == ours


def fine_tune_figure(source: Path, out: Path, steps: int) -> tuple[float, float]:
    """Validation loss of the imported model on tiny Shakespeare before and after ``steps`` steps of fine-tuning."""
    from tinylm.config import build_config
    from tinylm.training.trainer import Trainer
    cfg = build_config(None, [
        "--train.init_from", str(source), "--data.corpus", "tinyshakespeare", "--data.tokenizer", "gpt2",
        "--data.dir", str(out / "data" / "tinyshakespeare-gpt2"), "--run.dir", str(out / "runs"),
        "--run.name", "fine-tune", "--model.block_size", "128", "--train.max_steps", str(steps),
        "--train.batch_size", "16", "--train.eval_interval", "0", "--train.eval_tokens", "0",
        "--optim.lr", "1e-3", "--optim.warmup_steps", "20", "--train.precision", "fp32", "--run.progress", "false"])
    fresh(cfg.run_dir)
    trainer = Trainer(cfg, log=lambda *a: None)
    try:
        before = trainer.evaluate().loss
    except BaseException:
        trainer.close()  # run() closes it otherwise
        raise
    return before, trainer.run().val_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpt2", help="also import this GPT-2 (a hub name such as gpt2, or a local folder)")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (default 300)")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "tinylm-exp-interop"))
    args = p.parse_args()
    use_shared_data()
    if (SHARED / "tiktoken_cache").is_dir():  # GPT-2's tokenizer files, offline
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine("transformers", "tokenizers", "safetensors")
    results: dict = {"machine": info}
    diff, imported = import_figure(str(tiny_gpt2(out)), out)
    results["import_tiny_gpt2_max_abs_diff"] = diff
    if args.gpt2:
        results["import_gpt2_max_abs_diff"] = import_figure(args.gpt2, out)[0]
    for name, family in {"gpt2": {"model.bias": "true"},
                         "llama": {"model.pos": "rope", "model.norm": "rmsnorm", "model.mlp": "swiglu"}}.items():
        diff, same = export_figure(family, out, name)
        results[f"export_{name}_max_abs_diff"], results[f"export_{name}_greedy_50_identical"] = diff, same
    before, after = fine_tune_figure(imported, out, args.steps)
    results |= {"fine_tune_steps": args.steps, "fine_tune_val_before": before, "fine_tune_val_after": after}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"# Interop figures\n\n{machine_line(info)}\n\n| measurement | value |\n| --- | --- |")
    for key, value in results.items():
        if key != "machine":
            print(f"| {key} | {value:.3g} |" if isinstance(value, float) else f"| {key} | {value} |")


if __name__ == "__main__":
    main()
