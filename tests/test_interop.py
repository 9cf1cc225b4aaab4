"""GPT-2 in, Hugging Face out: `tinylm import`, `--train.init_from`, `tinylm export --format hf`.

Every model here is built by the test itself with random weights (no download); transformers is
the reference: logits agree to 1e-5 in fp32 and greedy generation gives the same tokens.
"""
import hashlib
import json
import math
import os
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from tinylm.cli import main
from tinylm.config import SampleConfig, arch_keys, build_config, default_name
from tinylm.data.shards import load_data_tokenizer, load_meta
from tinylm.generation.generate import generate, generate_text
from tinylm.interop.hf_import import import_hf, imported_model
from tinylm.model.gpt import GPT
from tinylm.tokenizer import ENDOFTEXT, BPETokenizer, CharTokenizer
from tinylm.tokenizer.io import save_hf
from tinylm.training import checkpoint as ckpt
from tinylm.training.checkpoint import load_for_inference
from tinylm.training.run_folder import save_weights
from tinylm.training.trainer import Trainer, train

from conftest import REPO, shared_text, tiny_config

transformers = pytest.importorskip("transformers")

TOL = 1e-5  # fp32 logits


def refused(capsys, *needles):
    """The CLI said one line (no traceback) containing every needle."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("tinylm: error: "), err
    for needle in needles:
        assert needle in err, err


def files(folder):
    """Every file under ``folder`` with its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def shake(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every parameter (biases, norm gains), large enough that greedy choices are clear."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return module.eval()


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """A tiny GPT-2 (2 layers, width 32, GPT-2's vocabulary), saved by transformers as safetensors."""
    torch.manual_seed(0)
    model = shake(transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32,
                                                                        n_positions=64)))
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    model.save_pretrained(folder)
    return model, folder


def tokens(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- import

def test_import_gives_transformers_logits(tmp_path, hf_gpt2, capsys):
    hf, folder = hf_gpt2
    out = tmp_path / "runs" / "gpt2"
    assert main(["import", str(folder), "--out", str(out)]) == 0
    path, cfg, model, tok = load_for_inference(out, device="cpu")
    m = cfg.model
    assert (m.pos, m.norm, m.mlp, m.bias, m.tie_embeddings, m.vocab_size) == ("learned", "layernorm", "gelu", True,
                                                                              True, 50257)
    assert tok.vocab_size == 50257 and tok.encode("hello world") == [31373, 995]  # GPT-2's tokenizer
    x = tokens(40, 50257)
    with torch.no_grad():
        assert (hf(x).logits - model(x)[0]).abs().max() < TOL
    # an ordinary run folder: config.toml, a checkpoint with its tokenizer, `tinylm info` reads it
    assert (out / "config.toml").is_file() and (path / ckpt.TOKENIZER).is_file()
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 0


def test_import_of_exact_gelu_gpt2(tmp_path, hf_gpt2):
    _, folder = hf_gpt2
    exact = tmp_path / "exact"
    shutil.copytree(folder, exact)
    config = json.loads((exact / "config.json").read_text())
    (exact / "config.json").write_text(json.dumps({**config, "activation_function": "gelu"}))
    hf = transformers.AutoModelForCausalLM.from_pretrained(exact).eval()
    assert main(["import", str(exact), "--out", str(tmp_path / "run")]) == 0
    _, cfg, model, _ = load_for_inference(tmp_path / "run", device="cpu")
    assert cfg.model.mlp == "gelu_exact"
    x = tokens(40, 50257)
    with torch.no_grad():
        assert (hf(x).logits - model(x)[0]).abs().max() < TOL


def test_import_reads_pytorch_model_bin_with_weights_only(tmp_path, hf_gpt2, capsys):
    hf, folder = hf_gpt2
    pickled = tmp_path / "bin"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    torch.save(hf.state_dict(), pickled / "pytorch_model.bin")
    assert main(["import", str(pickled), "--out", str(tmp_path / "run")]) == 0
    model = load_for_inference(tmp_path / "run", device="cpu").model
    x = tokens(20, 50257)
    with torch.no_grad():
        assert (hf(x).logits - model(x)[0]).abs().max() < TOL
    # a pickle that would run code is refused by weights_only, and nothing is written
    torch.save({"w": torch.zeros(1), "evil": Evil()}, pickled / "pytorch_model.bin")
    assert main(["import", str(pickled), "--out", str(tmp_path / "run2")]) == 2
    refused(capsys, "holds more than tensors", "model.safetensors")
    assert not (tmp_path / "run2").exists()


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_import_refuses_other_models_and_existing_folders(tmp_path, hf_gpt2, capsys):
    _, folder = hf_gpt2
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    for change, needle in (({"activation_function": "relu"}, "activation_function = 'relu'"),
                           ({"model_type": "bert"}, "holds a 'bert' model; tinylm reads GPT-2, GPT-NeoX and Llama")):
        (other / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                       **change}))
        assert main(["import", str(other), "--out", str(tmp_path / "run")]) == 2
        refused(capsys, needle)
    assert not (tmp_path / "run").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["import", str(folder), "--out", str(taken)]) == 2
    refused(capsys, f"run folder {taken} already exists")
    assert files(taken) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}
    assert main(["import", "no/such/model/name", "--out", str(tmp_path / "x")]) == 2
    refused(capsys, "neither a folder nor a Hugging Face hub name")


def test_an_imported_run_is_not_resumed(tmp_path, hf_gpt2, text_200k, capsys):
    _, folder = hf_gpt2
    cfg = tiny_config(tmp_path, text_200k, **{"data.tokenizer": "gpt2"})
    assert main(["import", str(folder), "--out", str(cfg.run_dir)]) == 0
    before = files(cfg.run_dir)
    with pytest.raises(Exception, match=r"holds imported weights alone.*--train\.init_from"):
        Trainer(cfg, resume=True, log=lambda *a: None)
    assert files(cfg.run_dir) == before  # the lock file too is gone again


# --------------------------------------------------------------------------- fine-tuning

@pytest.mark.slow
def test_fine_tuning_an_imported_gpt2_on_shakespeare_lowers_val_loss(tmp_path, hf_gpt2):
    _, folder = hf_gpt2
    text = tmp_path / "shakespeare.txt"
    text.write_text(shared_text("tinyshakespeare/input.txt", 100_000))
    assert main(["import", str(folder), "--out", str(tmp_path / "runs" / "gpt2")]) == 0
    cfg = tiny_config(tmp_path, text, **{"data.tokenizer": "gpt2", "train.init_from": str(tmp_path / "runs" / "gpt2"),
                                         "run.name": "ft", "train.max_steps": 12, "train.eval_interval": 0,
                                         "train.batch_size": 4, "optim.lr": 3e-3, "optim.warmup_steps": 2,
                                         "model.n_layer": 6, "model.n_embd": 64})
    trainer = Trainer(cfg, log=lambda *a: None)
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.bias) == (2, 32, True)  # the source's architecture
    assert cfg.model.block_size == 32  # shorter than the source's 64: the first 32 positions
    source = load_for_inference(tmp_path / "runs" / "gpt2", device="cpu").model.state_dict()
    start = trainer.raw_model.state_dict()
    assert torch.equal(start["wpe.weight"], source["wpe.weight"][:32])
    assert all(torch.equal(start[k], source[k]) for k in source if k != "wpe.weight")
    assert trainer.optimizer.state_dict()["state"] == {}  # a fresh optimizer
    before = trainer.evaluate().loss
    after = trainer.run().val_loss
    assert after < before - 0.3, (before, after)


def test_init_from_refuses_data_with_another_tokenizer_naming_both(tmp_path, hf_gpt2, text_200k):
    _, folder = hf_gpt2
    cfg = tiny_config(tmp_path, text_200k, **{"train.init_from": str(folder)})  # char data
    with pytest.raises(Exception, match=r"uses the tokenizer bpe 'gpt2' \(50257 ids\), but --data.dir .* was "
                                        r"prepared with char \(\d+ ids\); prepare the data with --data.tokenizer gpt2"):
        Trainer(cfg, log=lambda *a: None)
    assert not cfg.run_dir.exists()  # the refused start left no run folder


def test_init_from_a_run_and_resuming_the_fine_tuned_run(tmp_path, text_200k):
    src = tiny_config(tmp_path, text_200k, **{"run.name": "src", "train.max_steps": 5, "model.pos": "rope",
                                             "model.norm": "rmsnorm", "model.mlp": "swiglu"})
    Trainer(src, log=lambda *a: None).run()
    cfg = tiny_config(tmp_path, text_200k, **{"run.name": "ft", "train.init_from": str(src.run_dir),
                                             "train.max_steps": 5})
    trainer = Trainer(cfg, log=lambda *a: None)
    assert cfg.model.pos == "rope" and cfg.model.mlp == "swiglu"
    weights = load_for_inference(src.run_dir, device="cpu").model.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in trainer.raw_model.state_dict().items())
    assert trainer.state.step == 0
    trainer.run()
    again = tiny_config(tmp_path, text_200k, **{"run.name": "ft", "train.init_from": str(src.run_dir),
                                               "train.max_steps": 7})
    assert Trainer(again, resume=True, log=lambda *a: None).run().step == 7  # the architecture came back too


def test_fine_tuning_an_own_tokenizer_run_with_its_tokenizer_file(tmp_path, text_200k):
    """Run A trains its BPE on one text; run B fine-tunes A on another text prepared with A's tokenizer file."""
    a = tiny_config(tmp_path, text_200k, **{"run.name": "a", "data.dir": str(tmp_path / "data" / "a"),
                                           "data.tokenizer": "bpe", "data.vocab_size": 400, "train.max_steps": 5})
    train(a, log=lambda *a: None)
    other = tmp_path / "other.txt"
    other.write_text(shared_text("tinyshakespeare/input.txt")[-150_000:])  # not in A's first 200K characters
    tok_file = tmp_path / "data" / "a" / "tokenizer.txt"
    b = tiny_config(tmp_path, other, **{"run.name": "b", "data.dir": str(tmp_path / "data" / "b"),
                                       "data.tokenizer": str(tok_file), "train.init_from": str(a.run_dir),
                                       "train.max_steps": 5})
    assert default_name(b.data) == "other-tok-a"
    trainer = Trainer(b, log=lambda *a: None)
    meta = load_meta(b.data.dir)
    assert meta["data"]["tokenizer"] == str(tok_file) and meta["vocab_size"] == 400
    assert load_data_tokenizer(b.data.dir).same_ids(load_data_tokenizer(a.data.dir))
    assert meta["train"]["tokens"] != load_meta(a.data.dir)["train"]["tokens"]  # the new text, not A's
    weights = load_for_inference(a.run_dir, device="cpu").model.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in trainer.raw_model.state_dict().items())
    assert trainer.run().step == 5
    # the same text prepared with another BPE of the same size: refused, naming both
    c = tiny_config(tmp_path, other, **{"run.name": "c", "data.dir": str(tmp_path / "data" / "c"),
                                       "data.tokenizer": "bpe", "data.vocab_size": 400,
                                       "train.init_from": str(a.run_dir)})
    with pytest.raises(Exception, match=r"--train.init_from .* uses the tokenizer bpe \(400 ids\), but --data.dir "
                                        r".*c was prepared with another bpe \(400 ids\); prepare the data with "
                                        r"--data.tokenizer .*step_000005/tokenizer.txt"):
        Trainer(c, log=lambda *a: None)


def test_a_tokenizer_file_that_cannot_be_used_is_refused_in_one_line(tmp_path, text_200k, bpe, capsys):
    def prepare(tokenizer: str, *more: str) -> int:
        return main(["prepare", "--data.corpus", str(text_200k), "--data.dir", str(tmp_path / "data"),
                     "--data.tokenizer", tokenizer, "--run.progress", "false", *more])

    assert prepare(str(tmp_path / "missing.txt")) == 2
    refused(capsys, "--data.tokenizer", "missing.txt", "nor a tokenizer file (no such file)")
    assert prepare(str(tmp_path)) == 2
    refused(capsys, f"it is a folder: give the file in it, e.g. {tmp_path / 'tokenizer.txt'}")
    assert prepare(str(text_200k)) == 2
    refused(capsys, "is not a tinylm tokenizer file", "pass --data.tokenizer a file that `tinylm prepare`")
    BPETokenizer(bpe.merges).save(tmp_path / "plain.txt")  # no special tokens
    assert prepare(str(tmp_path / "plain.txt")) == 2
    refused(capsys, "has no <|endoftext|> token")
    assert not (tmp_path / "data").exists()
    bpe.save(tmp_path / "tok.txt")
    assert prepare(str(tmp_path / "tok.txt")) == 0
    assert load_data_tokenizer(tmp_path / "data").same_ids(bpe)
    bpe.truncated(300).save(tmp_path / "tok.txt")  # the file changes under the prepared folder
    capsys.readouterr()
    assert prepare(str(tmp_path / "tok.txt")) == 2
    refused(capsys, "that file has changed since", "--force")
    assert prepare(str(tmp_path / "tok.txt"), "--force") == 0
    assert load_data_tokenizer(tmp_path / "data").vocab_size == 300


# --------------------------------------------------------------------------- export

@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return BPETokenizer.train([shared_text("tinyshakespeare/input.txt", 200_000)], 400)


def tinylm_run(tmp_path, tok, seed=0, **model):
    """A run folder holding a randomly initialized tinylm model (weights alone) with ``tok``."""
    cfg = tiny_config(tmp_path, tmp_path, **{"run.name": "m", "model.block_size": 128, **model})
    cfg.model.vocab_size = tok.vocab_size
    torch.manual_seed(seed)
    gpt = shake(GPT(cfg.model), seed)
    save_weights(cfg, gpt.state_dict(), tok, "test")
    return cfg, gpt


ROTARY = {"model.pos": "rope", "model.norm": "rmsnorm"}
FAMILIES = {  # the architecture transformers loads, then what tells the variant apart
    "GPT2LMHeadModel": {"model.bias": "false", "model.tie_embeddings": "false"},  # exact GELU, the default
    "GPT2LMHeadModel tanh": {"model.mlp": "gelu"},  # GPT-2's own GELU
    "GPT2LMHeadModel relu2": {"model.mlp": "relu2", "model.bias": "true"},
    "GPTNeoXForCausalLM": {"model.pos": "rope", "model.mlp": "relu2", "model.bias": "true",
                           "model.tie_embeddings": "false", "model.rope_base": "500"},
    "GPTNeoXForCausalLM gelu": {"model.pos": "rope"},  # exact GELU, no biases, tied
    "LlamaForCausalLM": {**ROTARY, "model.mlp": "swiglu", "model.rope_base": "500"},
    "Qwen3ForCausalLM": {**ROTARY, "model.mlp": "swiglu", "model.qk_norm": "true", "model.tie_embeddings": "false"},
    "ArceeForCausalLM": {**ROTARY, "model.mlp": "relu2"},  # the presets' architecture
    "ArceeForCausalLM gelu": {**ROTARY, "model.mlp": "gelu", "model.tie_embeddings": "false"},
    "ApertusForCausalLM": {**ROTARY, "model.mlp": "relu2", "model.qk_norm": "true"},
}
ACTIVATION = {"GPT2LMHeadModel": "gelu", "GPT2LMHeadModel tanh": "gelu_new", "GPT2LMHeadModel relu2": "relu2",
              "GPTNeoXForCausalLM": "relu2", "GPTNeoXForCausalLM gelu": "gelu",
              "LlamaForCausalLM": "silu", "Qwen3ForCausalLM": "silu", "ArceeForCausalLM": "relu2",
              "ArceeForCausalLM gelu": "gelu_new", "ApertusForCausalLM": "relu2"}


@pytest.mark.parametrize("arch", FAMILIES)
def test_export_loads_in_transformers_with_the_same_logits_and_greedy_tokens(tmp_path, bpe, arch, capsys):
    cfg, gpt = tinylm_run(tmp_path, bpe, **FAMILIES[arch])
    out = tmp_path / "hf"
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(out)]) == 0
    umask = os.umask(0o022)
    os.umask(umask)
    assert {f.stat().st_mode & 0o777 for f in out.iterdir()} == {0o666 & ~umask}  # not safetensors' own 0600
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == arch.split()[0] and hf.dtype == torch.float32
    config = hf.config.to_dict()
    assert config.get("activation_function", config.get("hidden_act")) == ACTIVATION[arch]
    x = tokens(100, bpe.vocab_size)
    with torch.no_grad():
        assert (hf(x).logits - gpt(x)[0]).abs().max() < TOL
    prompt = bpe.encode("ROMEO:\nWhat say you")
    ours = generate(gpt, [prompt], SampleConfig(strategy="greedy", max_new_tokens=50))[0][0].tokens
    hf.generation_config.eos_token_id = None  # run all 50 steps, as ours does without an end-of-text id
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=50, do_sample=False)[0, len(prompt):].tolist()
    assert len(ours) == 50 and theirs == ours
    # the tokenizer: AutoTokenizer encodes like tinylm, special tokens included
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = shared_text("tinyshakespeare/input.txt")[-20_000:] + "<|endoftext|>Now, \u2019tis 42 déjà-vu\r\n  x"
    assert hf_tok(text).input_ids == bpe.encode(text, allowed_special="all")
    assert hf_tok.decode(bpe.encode(text, allowed_special="all")) == text
    assert hf_tok.eos_token == "<|endoftext|>" and hf.config.eos_token_id == bpe.eot_token
    # read back, the folder is the run's model: its architecture and every weight (GPT-2's zero biases aside)
    source = import_hf(str(out))
    assert all(torch.equal(source.state[k], v) for k, v in gpt.state_dict().items())
    same = [k for k in arch_keys() if k != "bias"]  # GPT-2 without biases reads back with zero biases
    assert [getattr(source.model, k) for k in same] == [getattr(cfg.model, k) for k in same]
    # a second export replaces the first
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(out)]) == 0


PRESETS = sorted((REPO / "configs").glob("*.toml"))


@pytest.mark.parametrize("preset", [p.name for p in PRESETS if "init_from" not in p.read_text()])
def test_every_presets_model_exports_with_the_same_logits_and_greedy_text(tmp_path, bpe, preset, capsys):
    """Each preset's architecture and tokenizer kind, shrunk to 2 layers of width 32 (the demo's and
    tiny Shakespeare's: rotary + RMSNorm + ReLU², characters): transformers computes the same logits from the
    exported folder, as its own architecture and through tinylm's modeling code (--format hf-code), and
    AutoTokenizer + generate continue the preset's prompt with the same text. The GPT-2 fine-tuning preset
    trains GPT-2's own architecture: "GPT2LMHeadModel tanh" above."""
    cfg = build_config(REPO / "configs" / preset, ["--model.n_layer", "2", "--model.n_embd", "32", "--model.n_head",
                                                   "2", "--model.block_size", "128", "--run.dir", str(tmp_path),
                                                   "--run.name", "m"])
    char = cfg.data.tokenizer == "char"
    tok = CharTokenizer.train([shared_text("tinyshakespeare/input.txt")], [ENDOFTEXT]) if char else bpe
    cfg.model.vocab_size = tok.vocab_size
    torch.manual_seed(0)
    gpt = shake(GPT(cfg.model))
    save_weights(cfg, gpt.state_dict(), tok, "test")
    x = tokens(128, tok.vocab_size)
    greedy = SampleConfig(strategy="greedy", max_new_tokens=60, stop_at_eot=False)  # all 60, <|endoftext|> or not
    ours = generate_text(gpt, tok, [cfg.sample.prompt], greedy)[0][0]
    for fmt in ("hf", "hf-code"):  # the transformers architecture that computes it; tinylm's own modeling code
        out = tmp_path / fmt
        assert main(["export", str(cfg.run_dir), "--format", fmt, "--out", str(out)]) == 0
        said = capsys.readouterr().out
        code = fmt == "hf-code"  # transformers 5's AutoTokenizer reads config.json too: it asks for the trust
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=code).eval()
        hf_tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=code)
        with torch.no_grad():
            assert (hf(x).logits - gpt(x)[0]).abs().max() < TOL
        prompt = hf_tok(cfg.sample.prompt, return_tensors="pt").input_ids
        assert prompt[0].tolist() == tok.encode(cfg.sample.prompt)
        hf.generation_config.eos_token_id = None
        theirs = hf.generate(prompt, max_new_tokens=60, do_sample=False)[0, prompt.size(1):]
        assert len(ours.tokens) == 60 and hf_tok.decode(theirs) == ours.text
        assert said.splitlines()[-1].startswith(f"{out}: {hf.config.architectures[0]} + tokenizer.json from ")
        # and back: `tinylm import` makes a run with the same kind of tokenizer and the same model
        assert main(["import", str(out), "--out", str(tmp_path / f"back-{fmt}")]) == 0
        said = capsys.readouterr().out
        assert said.splitlines()[-1].startswith(f"{tmp_path / f'back-{fmt}'}: {hf.config.architectures[0]} from {out}")
        back = load_for_inference(tmp_path / f"back-{fmt}", device="cpu")
        assert back.config.data.tokenizer == cfg.data.tokenizer and back.tokenizer.same_ids(tok)
        assert all(torch.equal(back.model.state_dict()[k], v) for k, v in gpt.state_dict().items())
        same = [k for k in arch_keys() if k != "bias"]  # GPT-2 without biases reads back with zero biases
        assert [getattr(back.config.model, k) for k in same] == [getattr(cfg.model, k) for k in same]


@pytest.mark.parametrize(("model", "nearest"), [
    ({"model.qk_norm": "true"}, "GPT2LMHeadModel's (--model.qk_norm false)"),
    ({"model.pos": "rope", "model.norm": "layernorm", "model.mlp": "swiglu"},
     "GPTNeoXForCausalLM's (--model.mlp gelu|gelu_exact|relu2) or LlamaForCausalLM's (--model.norm rmsnorm)"),
    ({**ROTARY, "model.mlp": "relu2", "model.bias": "true"},
     "GPTNeoXForCausalLM's (--model.norm layernorm) or ArceeForCausalLM's (--model.bias false)"),
    ({"model.norm": "rmsnorm", "model.mlp": "relu2"},  # two families one change away: both named
     "GPT2LMHeadModel's (--model.norm layernorm) or ArceeForCausalLM's (--model.pos rope)"),
    ({"model.mlp": "swiglu", "model.qk_norm": "true"},
     "GPT2LMHeadModel's (--model.mlp gelu|gelu_exact|relu2 --model.qk_norm false) or "
     "Qwen3ForCausalLM's (--model.pos rope --model.norm rmsnorm)"),
])
def test_export_refuses_what_no_family_computes_naming_the_nearest_settings(tmp_path, bpe, model, nearest, capsys):
    cfg, _ = tinylm_run(tmp_path, bpe, **model)
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    refused(capsys, "no Hugging Face architecture computes this model (--model.pos ", f"export are {nearest}: train",
            "with --format hf-code (transformers loads it with trust_remote_code=True)")
    assert not (tmp_path / "hf").exists()


REMOTE = {  # what no transformers architecture computes: the architecture ablation's points among them
    "learned rmsnorm": {"model.norm": "rmsnorm"},
    "learned swiglu biases untied": {"model.mlp": "swiglu", "model.bias": "true", "model.tie_embeddings": "false"},
    "learned qk_norm tanh": {"model.qk_norm": "true", "model.mlp": "gelu"},
    "rope layernorm swiglu": {"model.pos": "rope", "model.mlp": "swiglu", "model.rope_base": "500"},
    "rope biases qk_norm swiglu": {**ROTARY, "model.mlp": "swiglu", "model.bias": "true", "model.qk_norm": "true"},
}


@pytest.mark.parametrize("model", REMOTE)
def test_hf_code_exports_any_model_for_trust_remote_code_with_the_same_logits_and_greedy_tokens(tmp_path, bpe, model,
                                                                                                 capsys):
    """--format hf refuses these; --format hf-code writes them with tinylm's modeling code, which transformers runs
    with the same logits and, through generate's own KV cache, the same greedy tokens, for a left-padded batch too."""
    cfg, gpt = tinylm_run(tmp_path, bpe, **REMOTE[model])
    out = tmp_path / "hf"
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(out)]) == 2
    refused(capsys, "no Hugging Face architecture computes this model", "--format hf-code")
    assert main(["export", str(cfg.run_dir), "--format", "hf-code", "--out", str(out)]) == 0
    code = (out / "modeling_tinylm.py").read_text()
    assert not re.search(r"^\s*(from|import) tinylm", code, re.M)  # self-contained: a user need not install tinylm
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(hf).__name__ == "TinyLMForCausalLM"
    x = tokens(100, bpe.vocab_size)
    with torch.no_grad():
        assert (hf(x).logits - gpt(x)[0]).abs().max() < TOL
    prompts = [bpe.encode("ROMEO:\nWhat say you"), bpe.encode("JULIET:")]
    ours = [c[0].tokens for c in generate(gpt, prompts, SampleConfig(strategy="greedy", max_new_tokens=30))]
    T = max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])  # left-padded, as tinylm pads
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    hf.generation_config.eos_token_id = None
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=0)[:, T:]
    alone = hf.generate(torch.tensor([prompts[1]]), max_new_tokens=30, do_sample=False)[0, len(prompts[1]):]
    assert theirs.tolist() == ours and alone.tolist() == ours[1] and len(ours[0]) == 30


def test_export_refuses_a_foreign_folder(tmp_path, bpe, capsys):
    cfg, _ = tinylm_run(tmp_path / "bpe", bpe)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(mine)]) == 2
    refused(capsys, f"{mine} exists and was not written by tinylm", "choose another --out (a new or empty folder)")
    assert files(mine) == {"config.json": hashlib.sha256(b"{}").hexdigest()}


# --------------------------------------------------------------------------- eval of Hugging Face folders

def eval_json(capsys, *args) -> dict:
    """`tinylm eval ... --json`'s report, computed on the CPU (on a GPU, TF32 matmuls move the 5th digit)."""
    capsys.readouterr()
    assert main(["eval", *map(str, args), "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "LlamaForCausalLM", "ArceeForCausalLM"])
def test_eval_of_an_exported_folder_equals_eval_of_its_run(tmp_path, text_200k, arch, capsys):
    cfg = tiny_config(tmp_path, text_200k, **{"data.tokenizer": "bpe", "data.vocab_size": 400, "train.max_steps": 10,
                                             "train.eval_interval": 0, **FAMILIES[arch]})
    train(cfg, log=lambda *a: None)
    out = tmp_path / "hf"
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(out)]) == 0
    text = tmp_path / "other.txt"
    text.write_text(shared_text("tinyshakespeare/input.txt")[-30_000:])
    ours = eval_json(capsys, cfg.run_dir, "--text", text)
    theirs = eval_json(capsys, out, "--text", text, "--batch-size", "3")
    assert ours["step"] == 10 and theirs["step"] is None and theirs["checkpoint"] == str(out)
    assert (theirs["tokens"], theirs["bytes"]) == (ours["tokens"], ours["bytes"]) and ours["tokens"] > 5000
    assert abs(theirs["loss"] - ours["loss"]) < TOL and abs(theirs["bits_per_byte"] - ours["bits_per_byte"]) < TOL
    # read back, the folder is the run's model: its tokenizer, and every weight (GPT-2's zero biases aside)
    run, source = load_for_inference(cfg.run_dir, device="cpu"), import_hf(str(out))
    assert source.tokenizer.same_ids(run.tokenizer)
    assert all(torch.equal(source.state[k], v) for k, v in run.model.state_dict().items())
    same = [k for k in arch_keys() if k != "bias"]  # GPT-2 without biases reads back with zero biases
    assert [getattr(source.model, k) for k in same] == [getattr(run.config.model, k) for k in same]


@pytest.mark.parametrize("context", [None, 24])
def test_eval_of_a_transformers_gpt2_folder_is_transformers_loss(tmp_path, hf_gpt2, capsys, context):
    """A folder save_pretrained wrote (no tokenizer files: GPT-2's own, from tiktoken) against the loss and
    bits per byte computed here from transformers' logits on the same windows (of the folder's context, or of
    ``--context``)."""
    hf, folder = hf_gpt2
    enc = pytest.importorskip("tiktoken").get_encoding("gpt2")
    text = shared_text("tinyshakespeare/input.txt")[-6_000:].strip()  # a document has no outer whitespace
    (tmp_path / "t.txt").write_text(text)
    report = eval_json(capsys, folder, "--text", tmp_path / "t.txt", *(["--context", context] if context else []))
    ids = [*enc.encode_ordinary(text), enc.eot_token]  # one document, then its end
    T, sums = context or hf.config.n_positions, torch.zeros(3, dtype=torch.float64)  # nats, nats of text, bytes
    assert report["context"] == T
    for o in range(0, len(ids) - 1, T):
        window = torch.tensor([ids[o:o + T + 1]])
        with torch.no_grad():
            nats = F.cross_entropy(hf(window[:, :-1]).logits[0], window[0, 1:], reduction="none").double()
        nbytes = torch.tensor([0 if t == enc.eot_token else len(enc.decode_single_token_bytes(t))
                               for t in window[0, 1:].tolist()])
        sums += torch.stack([nats.sum(), (nats * (nbytes > 0)).sum(), nbytes.sum()])
    scored_bytes = len(text.encode()) - len(enc.decode_single_token_bytes(ids[0]))  # the targets: all but the first
    assert report["tokens"] == len(ids) - 1 and report["bytes"] == int(sums[2]) == scored_bytes
    assert abs(report["loss"] - sums[0].item() / (len(ids) - 1)) < TOL
    assert abs(report["bits_per_byte"] - sums[1].item() / (math.log(2) * sums[2].item())) < TOL
    assert 4 < report["bits_per_byte"] < 7  # random weights: near log2(50257) = 15.6 bits per ~3-byte token


def test_a_transformers_llama_folder_reads_as_the_same_model(tmp_path, bpe):
    """The reverse of the Llama export on a folder transformers built: an odd MLP width, an untied head."""
    config = dict(vocab_size=bpe.vocab_size, hidden_size=32, intermediate_size=87, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    hf = shake(transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)))
    hf.save_pretrained(tmp_path / "llama")
    save_hf(bpe, tmp_path / "llama" / "tokenizer.json")
    source = import_hf(str(tmp_path / "llama"))
    assert source.model.tie_embeddings is False and source.tokenizer.same_ids(bpe)
    x = tokens(64, bpe.vocab_size)
    with torch.no_grad():
        assert (hf(x).logits - imported_model(source, tmp_path / "llama", "cpu")(x)[0]).abs().max() < TOL


def test_eval_of_a_folder_refuses_what_it_cannot_score(tmp_path, hf_gpt2, bpe, capsys):
    _, folder = hf_gpt2
    (tmp_path / "t.txt").write_text("To be, or not to be.")
    assert main(["eval", str(folder)]) == 2
    refused(capsys, "is a Hugging Face model folder", "score a file with --text FILE")
    grouped = tmp_path / "grouped"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=bpe.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6)).save_pretrained(grouped)
    save_hf(bpe, grouped / "tokenizer.json")
    capsys.readouterr()  # transformers' progress bar
    assert main(["eval", str(grouped), "--text", str(tmp_path / "t.txt")]) == 2
    refused(capsys, "num_key_value_heads = 2 has no tinylm counterpart", "a key/value head per query head")


@pytest.mark.slow
def test_the_gpt2_fine_tuning_preset_runs_on_a_tiny_gpt2(tmp_path, hf_gpt2, text_200k):
    """configs/finetune-gpt2-shakespeare.toml, with the tiny model in place of GPT-2 small (no download)."""
    _, folder = hf_gpt2
    cfg = build_config(REPO / "configs" / "finetune-gpt2-shakespeare.toml", [
        "--train.init_from", str(folder), "--model.block_size", "64", "--data.corpus", str(text_200k),
        "--data.dir", str(tmp_path / "data"), "--run.dir", str(tmp_path / "runs"), "--train.max_steps", "2",
        "--train.batch_size", "2", "--train.eval_tokens", "128", "--sample.max_new_tokens", "5",
        "--run.progress", "false", "--train.precision", "fp32", "--train.device", "cpu"])
    result = train(cfg, log=lambda *a: None)
    assert result.step == 2 and cfg.model.n_embd == 32 and (result.run_dir / "samples.md").is_file()
