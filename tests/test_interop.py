"""GPT-2 in, Hugging Face out: `tinylm import`, `--train.init_from`, `tinylm export --format hf`.

Every model here is built by the test itself with random weights (no download); transformers is
the reference: logits agree to 1e-5 in fp32 and greedy generation gives the same tokens.
"""
import hashlib
import json

import pytest
import torch

from tinylm import checkpoint as ckpt
from tinylm.checkpoint import load_for_inference
from tinylm.cli import main
from tinylm.config import SampleConfig, build_config
from tinylm.generate import generate
from tinylm.model import GPT
from tinylm.tokenizer import BPETokenizer, CharTokenizer
from tinylm.train import Trainer, train

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
                           ({"model_type": "llama"}, "holds a 'llama' model")):
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
    assert trainer.step == 0
    trainer.run()
    again = tiny_config(tmp_path, text_200k, **{"run.name": "ft", "train.init_from": str(src.run_dir),
                                               "train.max_steps": 7})
    assert Trainer(again, resume=True, log=lambda *a: None).run().step == 7  # the architecture came back too


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
    ckpt.save_weights(cfg, gpt.state_dict(), tok, "test")
    return cfg, gpt


FAMILIES = {
    "GPT2LMHeadModel": {"model.bias": "false", "model.tie_embeddings": "false"},
    "LlamaForCausalLM": {"model.pos": "rope", "model.norm": "rmsnorm", "model.mlp": "swiglu", "model.rope_base": "500"},
}


@pytest.mark.parametrize("arch", FAMILIES)
def test_export_loads_in_transformers_with_the_same_logits_and_greedy_tokens(tmp_path, bpe, arch, capsys):
    cfg, gpt = tinylm_run(tmp_path, bpe, **FAMILIES[arch])
    out = tmp_path / "hf"
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == arch and hf.dtype == torch.float32
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
    # a second export replaces the first
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(out)]) == 0


@pytest.mark.parametrize(("model", "needle"), [
    ({"model.mlp": "relu2"}, '--model.mlp "relu2"'),
    ({"model.qk_norm": "true"}, "--model.qk_norm true"),
    ({"model.pos": "rope", "model.norm": "layernorm", "model.mlp": "swiglu"}, '--model.norm "layernorm"'),
    ({"model.pos": "rope", "model.norm": "rmsnorm", "model.mlp": "swiglu", "model.bias": "true"},
     "--model.bias true"),
])
def test_export_refuses_what_neither_family_computes_naming_the_option(tmp_path, bpe, model, needle, capsys):
    cfg, _ = tinylm_run(tmp_path, bpe, **model)
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    refused(capsys, needle, "--format safetensors")
    assert not (tmp_path / "hf").exists()


def test_export_refuses_a_char_tokenizer_and_a_foreign_folder(tmp_path, bpe, capsys):
    cfg, _ = tinylm_run(tmp_path / "char", CharTokenizer("abc \n", ["<|endoftext|>"]))
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    refused(capsys, "writes BPE tokenizers; this run's is char (6 ids)")
    assert not (tmp_path / "hf").exists()
    cfg, _ = tinylm_run(tmp_path / "bpe", bpe)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    assert main(["export", str(cfg.run_dir), "--format", "hf", "--out", str(mine)]) == 2
    refused(capsys, f"--out {mine} exists and is not a tinylm Hugging Face export")
    assert files(mine) == {"config.json": hashlib.sha256(b"{}").hexdigest()}



@pytest.mark.slow
def test_the_gpt2_fine_tuning_preset_runs_on_a_tiny_gpt2(tmp_path, hf_gpt2, text_200k):
    """configs/finetune-gpt2-shakespeare.toml, with the tiny model in place of GPT-2 small (no download)."""
    _, folder = hf_gpt2
    cfg = build_config(REPO / "configs" / "finetune-gpt2-shakespeare.toml", [
        "--train.init_from", str(folder), "--model.block_size", "64", "--data.corpus", str(text_200k),
        "--data.dir", str(tmp_path / "data"), "--run.dir", str(tmp_path / "runs"), "--train.max_steps", "2",
        "--train.batch_size", "2", "--train.eval_tokens", "128", "--sample.max_new_tokens", "5",
        "--run.progress", "false", "--train.precision", "fp32"])
    result = train(cfg, log=lambda *a: None)
    assert result.step == 2 and cfg.model.n_embd == 32 and (result.run_dir / "samples.md").is_file()
