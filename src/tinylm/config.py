"""The one typed configuration tree. Every default in tinylm lives here, once (the ``[sample]`` section's beside
the strategy table that checks it, in :mod:`tinylm.generation.strategies`).

Precedence: dataclass defaults < ``--config preset.toml`` < dotted command-line overrides
(``--optim.lr 3e-4 --model.n_layer 6``). Overrides are converted to the field's declared type;
an unknown key is an error that lists the nearest valid names. Converting and parsing one value is
:mod:`tinylm.config_check`'s; :func:`validate` (bottom) checks the whole tree once, early, naming the flags to
change, with the batch arithmetic it checks (:func:`micro_batch_size`, :func:`grad_accum_steps`).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import sys
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from .config_check import TOKENIZERS, check_seed, convert_value, literal_fields, not_one_of, parse_bytes, parse_duration
from .errors import TinyLMError
from .generation.strategies import SampleConfig, check_sample

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


ArtifactBits = Literal[8, 6, 4]
ARTIFACT_BITS = typing.get_args(ArtifactBits)  # the quantized artifact's widths: train.artifact_bits, export --quantize
# field metadata: what a field is part of (read by arch_keys and prepared_keys below, never listed by hand)
NOT_ARCH = {"arch": False}  # a model setting a run may change on resume: not part of the checkpoint's architecture
PREPARED = {"prepared": True}  # a data setting the prepared shards depend on: a change means preparing again


@dataclass
class ModelConfig:
    vocab_size: int = 0
    """Token ids the model embeds; 0 = take it from the prepared data's meta.json."""
    block_size: int = 256
    """Context length in tokens."""
    n_layer: int = 6
    """Transformer blocks."""
    n_head: int = 6
    """Attention heads per block; n_embd must be divisible by it."""
    n_embd: int = 384
    """Width of the residual stream."""
    mlp: Literal["gelu_exact", "gelu", "swiglu", "relu2"] = "gelu_exact"
    """MLP kind: gelu_exact (erf) | gelu (tanh approximation, GPT-2's) | swiglu | relu2 (ReLU squared). On a CPU
    gelu_exact is the faster GELU (BENCHMARKS.md), the two differ by under 1e-3 per activation."""
    mlp_ratio: float = 4.0
    """MLP hidden width / n_embd (swiglu uses 2/3 of it per branch, keeping parameters equal)."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """Normalization: layernorm | rmsnorm."""
    pos: Literal["learned", "rope"] = "learned"
    """Positions: learned (absolute embedding table) | rope (rotary, no table)."""
    rope_base: float = 10000.0
    """Rotary base frequency (pos = rope only)."""
    qk_norm: bool = False
    """RMS-normalize queries and keys per head before attention."""
    tie_embeddings: bool = True
    """Share the token embedding with the output head."""
    bias: bool = False
    """Biases in linear layers and LayerNorm."""
    dropout: float = field(default=0.0, metadata=NOT_ARCH)
    """Dropout on attention, residual branches and embeddings; 0 turns it off."""
    attention_dropout: bool = field(default=True, metadata=NOT_ARCH)
    """Apply model.dropout to the attention weights too (GPT-2 and nanoGPT do); false keeps it on the residual
    branches and embeddings only, and CPU SDPA's fast kernel, which dropout on the weights leaves (BENCHMARKS.md)."""
    vocab_pad_to: int = field(default=1, metadata=NOT_ARCH)
    """Pad the output head's product to a multiple of this many ids (64 or 128 suit GPU matrix tiles: 50257 ->
    50304); the padding's logits are -inf, never returned or sampled, and parameters, checkpoints and exports keep
    vocab_size, so a run may change it on resume. 1 = no padding. Not part of the checkpoint's architecture."""
    loss_chunk: int = field(default=0, metadata=NOT_ARCH)
    """Compute the training loss (head, cross-entropy and their gradients) this many tokens at a time, never holding
    the batch's logits: memory chunk x vocab instead of batch x context x vocab; 0 = the whole batch at once."""
    attention: Literal["auto", "sdpa", "math"] = field(default="auto", metadata=NOT_ARCH)
    """Attention kernel: sdpa (torch's fused kernel) | math (explicit matmuls) | auto (the faster, measured once per
    machine, dtype and shape; SDPA on CUDA). Same results within the dtype's tolerance; not part of the checkpoint."""

    @property
    def weights_dropout(self) -> float:
        """The dropout on the attention weights in training: model.dropout, or 0 with attention_dropout off."""
        return self.dropout if self.attention_dropout else 0.0


@dataclass
class DataConfig:
    corpus: str = field(default="shakespeare", metadata=PREPARED)
    """Named corpus (shakespeare, tinyshakespeare, tinystories, pystdlib, ...) or a file/dir/glob."""
    tokenizer: str = field(default="char", metadata=PREPARED)
    """char | bpe (trained on the corpus) | gpt2 (GPT-2's 50257-token BPE) | a tinylm tokenizer file, e.g. another
    run's data/<name>/tokenizer.txt (fine-tuning that run with --train.init_from needs its ids)."""
    vocab_size: int = field(default=4096, metadata=PREPARED)
    """Target vocabulary for tokenizer = bpe (ignored for char and gpt2)."""
    dir: str = ""
    """Folder of prepared shards + meta.json + tokenizer; `tinylm prepare` writes it. "" = data/<corpus>-<tokenizer>
    (e.g. data/notes-char, data/tinystories-bpe4096)."""
    val_fraction: float = field(default=0.1, metadata=PREPARED)
    """Share of tokens held out for validation: the last val_fraction of the token stream, from the start of the
    document it falls in (unless that is far back); ignored by a corpus with its own validation file."""
    doc_separator: Literal["eot", "blank", "line", "file"] = field(default="eot", metadata=PREPARED)
    """What ends a document (each becomes one end-of-text id, never text): eot (<|endoftext|> markers) | blank (a
    blank line) | line (a line break; an empty line is a paragraph break inside) | file (one document per file)."""
    max_bytes: str = field(default="", metadata=PREPARED)
    """Read only the corpus's first bytes, cut at a document end: "200MB", "4KiB", "1000000"; "" = all of it."""
    sampling: Literal["epoch", "random"] = "epoch"
    """Training windows: epoch (seeded permutation, no replacement) | random (nanoGPT's random offsets)."""
    align: Literal["none", "doc"] = "none"
    """Where training windows start: none (anywhere) | doc (at a document start, after its end-of-text id)."""
    encoding_errors: Literal["strict", "replace"] = field(default="strict", metadata=PREPARED)
    """Non-UTF-8 bytes in the corpus: strict (stop with the file and offset) | replace (U+FFFD)."""
    num_workers: int = 0
    """Tokenizer worker processes for prepare; 0 = choose from the corpus size and CPU count."""
    prefetch: Literal["auto", "on", "off"] = "auto"
    """Build the next training batch in a background thread during the step (pinned, non-blocking copy on CUDA):
    auto (on CUDA only) | on | off."""


@dataclass
class OptimConfig:
    name: Literal["adamw", "muon", "lion"] = "adamw"
    """Optimizer: adamw | muon (Muon on hidden matrices + AdamW on the rest) | lion."""
    lr: float = 1e-3
    """Peak learning rate of the hidden weight matrices (Muon's rate with name = muon, e.g. 0.02)."""
    embed_lr: float = 0.0
    """Peak learning rate of the embeddings and output head; 0 = lr (muon needs it set: an AdamW rate)."""
    scalar_lr: float = 0.0
    """Peak learning rate of norms, biases and other vectors; 0 = embed_lr (or lr when that is 0)."""
    schedule: Literal["constant", "cosine", "wsd", "cosine_warmdown"] = "cosine"
    """LR schedule after warmup: constant | cosine (to min_lr_ratio) | wsd (stable, then decay over decay_frac)
    | cosine_warmdown (cosine, then linear to 0 over decay_frac)."""
    warmup_steps: int = 100
    """Linear warmup steps from 0 to the peak; 0 turns warmup off."""
    min_lr_ratio: float = 0.1
    """Where cosine and wsd end, as a fraction of each peak learning rate."""
    decay_frac: float = 0.2
    """wsd / cosine_warmdown: fraction of the post-warmup steps spent in the final decay."""
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "linear"
    """wsd: shape of the final decay: linear | cosine | 1-sqrt."""
    weight_decay: float = 0.1
    """Decoupled weight decay of the hidden weight matrices."""
    embed_weight_decay: float = 0.0
    """Decoupled weight decay of the embeddings and head (norms, biases and vectors never decay)."""
    beta1: float = 0.9
    """Adam first-moment decay of the hidden matrices (Lion: the interpolation factor of its update)."""
    beta2: float = 0.95
    """Adam second-moment decay (Lion: its momentum decay; the Lion paper uses 0.99)."""
    embed_beta1: float = 0.9
    """beta1 of the embeddings, head, norms and biases (with muon: of its AdamW part)."""
    embed_beta2: float = 0.95
    """beta2 of the embeddings, head, norms and biases (with muon: of its AdamW part)."""
    eps: float = 1e-8
    """Adam epsilon."""
    momentum: float = 0.95
    """Muon: momentum of the hidden-matrix updates."""
    nesterov: bool = True
    """Muon: Nesterov momentum."""
    ns_steps: int = 5
    """Muon: Newton-Schulz iterations that orthogonalize each update."""
    momentum_warmup_steps: int = 0
    """Muon: steps over which momentum rises linearly from momentum_warmup_start; 0 = off."""
    momentum_warmup_start: float = 0.85
    """Muon: momentum at step 0 when momentum_warmup_steps > 0."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""


@dataclass
class TrainConfig:
    max_steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 64
    """Sequences per optimizer step, summed over accumulation micro-steps and DDP processes."""
    micro_batch_size: int = 0
    """Sequences per forward pass per process; 0 = batch_size / processes (no accumulation)."""
    eval_interval: int = 250
    """Evaluate, checkpoint and sample every this many steps (and at the end); 0 = only at the end."""
    eval_tokens: int = 262_144
    """Validation tokens scored per evaluation: the split's first N targets, in windows at stride block_size, the same
    set whatever the batch size, processes or resume (see tinylm/training/evaluate.py); 0 = the whole split."""
    log_interval: int = 10
    """Write a metrics line every this many steps."""
    precision: Literal["auto", "fp32", "bf16", "fp16", "fp8"] = "auto"
    """fp32 | bf16 (autocast) | fp16 (autocast + GradScaler, CUDA only) | fp8 (bf16 autocast with the blocks' Linear
    layers in FP8 through torchao; GPUs of compute capability 8.9+) | auto (bf16 where the hardware is fast at it)."""
    device: str = "auto"
    """cpu | cuda | cuda:N | mps | auto."""
    seed: int = 1337
    """Seed for init, data order, dropout and sampling."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    threads: int = 0
    """CPU threads for torch; 0 = torch's default (one per core)."""
    time_budget: str = ""
    """Wall-clock limit like 90s, 10m, 1h30m; the LR decay follows elapsed time so the run ends decayed. "" = none."""
    save_interval: int = 0
    """Checkpoint every this many steps; 0 = at each evaluation (and always at the end)."""
    keep_last: int = 1
    """Step checkpoints kept besides the best one (the newest k)."""
    nonfinite: Literal["skip", "halt"] = "skip"
    """On a NaN/inf loss or gradient: skip (drop the update; stop after max_skips in a row) | halt (save a
    diagnostic bundle and stop)."""
    max_skips: int = 5
    """Consecutive non-finite steps tolerated by nonfinite = skip."""
    spike_factor: float = 3.0
    """Log a loss spike when the loss exceeds this times the running median; 0 turns it off."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, ~30% more compute."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state with FSDP2 (fully_shard) under torchrun instead of DDP."""
    init_from: str = ""
    """Start from these weights with a fresh optimizer: a run or checkpoint folder, a Hugging Face GPT-2 folder, or
    a hub name (gpt2, gpt2-medium; needs the hf extra). The model takes its architecture; "" = random init."""
    artifact_bytes: str = ""
    """Byte budget of the run's quantized artifact (`tinylm export --quantize`): "16MB", "1MiB", "1000000"; a model
    whose artifact at artifact_bits will not fit is refused before step 1, and the report shows its size. "" = none."""
    artifact_bits: ArtifactBits = 8
    """Bits per matrix weight of the artifact the budget counts: 8 | 6 | 4 (export with --quantize int8/int6/int4)."""


@dataclass
class RunConfig:
    name: str = ""
    """Run folder name under run.dir; "" = <corpus>-<tokenizer> like data.dir's (e.g. runs/notes-char)."""
    dir: str = "runs"
    """Parent folder of run folders."""
    progress: bool = True
    """Live progress bar when the console is a terminal; false (or not a terminal): one plain line per log."""
    tensorboard: bool = False
    """Also write TensorBoard events to <run>/tb (needs the `track` extra)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the `track` extra; WANDB_MODE=offline works without network)."""
    wandb_project: str = "tinylm"
    """W&B project name."""
    report: bool = True
    """Write report.md + report.png (curves, summary, curve health) into the run folder when training ends."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir) / self.run.name

    def to_dict(self) -> dict:
        return asdict(self)


SECTIONS = [f.name for f in dataclasses.fields(Config)]
# keys tinylm no longer has -> what to write instead; a checkpoint's stored config may still hold them
REPLACED = {"train.eval_batches": "--train.eval_tokens (validation tokens per evaluation, the same set for every "
                                  "batch size and process count; 0 = the whole split), e.g. --train.eval_tokens "
                                  "262144"}


def all_keys() -> list[str]:
    """Every dotted key, e.g. ["model.vocab_size", ..., "run.progress"]."""
    cfg = Config()
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(cfg, s))]


def arch_keys() -> tuple[str, ...]:
    """The model fields a checkpoint and the run loading it must agree on: all but those marked NOT_ARCH."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("arch", True))


def prepared_keys() -> tuple[str, ...]:
    """The data fields the prepared shards depend on (meta.json records them; a change means preparing again)."""
    return tuple(f.name for f in dataclasses.fields(DataConfig) if f.metadata.get("prepared"))


def _field_types(section_obj: object) -> dict[str, type]:
    return typing.get_type_hints(type(section_obj))


def set_value(cfg: Config, key: str, value: object) -> None:
    """Set a dotted key (``"optim.lr"``) converting ``value`` to the declared type."""
    if key in REPLACED:
        raise TinyLMError(f"--{key} was replaced by {REPLACED[key]}")
    section, _, name = key.partition(".")
    obj = getattr(cfg, section, None) if section in SECTIONS else None
    types = _field_types(obj) if obj is not None else {}
    if name not in types:
        near = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join('--' + k for k in near)}?" if near else \
            "; `tinylm config --keys` lists every key"
        raise TinyLMError(f"unknown config key --{key}{hint}")
    setattr(obj, name, convert_value(key, value, types[name]))


def load_toml(path: str | Path, cfg: Config | None = None) -> Config:
    """Apply a TOML preset (tables [model], [data], ...) on top of ``cfg`` (default: defaults)."""
    cfg = cfg or Config()
    path = Path(path)
    if not path.is_file():
        raise TinyLMError(f"config file {path} does not exist (presets live in configs/)")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise TinyLMError(f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise TinyLMError(f"{path} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1].hex()}); "
                          f"TOML files are UTF-8: save it in that encoding") from None
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise TinyLMError(f"{path}: top-level key {section!r} must be a table like [model]; "
                              f"sections are {SECTIONS}")
        for name, value in table.items():
            try:
                set_value(cfg, f"{section}.{name}", value)
            except TinyLMError as e:
                raise TinyLMError(f"{path}: {e}") from None
    return cfg


def from_dict(d: dict) -> Config:
    """Inverse of :meth:`Config.to_dict` (used for configs stored in checkpoints)."""
    cfg = Config()
    for section, table in d.items():
        for name, value in table.items():
            if f"{section}.{name}" not in REPLACED:  # saved by an older tinylm: its successor keeps its default
                set_value(cfg, f"{section}.{name}", value)
    return cfg


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """``["--optim.lr", "3e-4", "--run.name=x"]`` -> ``[("optim.lr", "3e-4"), ("run.name", "x")]``."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or "." not in a.split("=")[0]:
            raise TinyLMError(f"unexpected argument {a!r}; config overrides look like --optim.lr 3e-4")
        if "=" in a:
            key, value = a[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise TinyLMError(f"{a} needs a value, e.g. {a} 3")
            key, value = a[2:], args[i + 1]
            i += 2
        out.append((key, value))
    return out


def build_config(preset: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults < preset TOML < dotted overrides, then validated."""
    cfg = load_toml(preset) if preset else Config()
    for key, value in parse_overrides(overrides or []):
        set_value(cfg, key, value)
    derive_names(cfg)
    validate(cfg)
    return cfg


def default_name(d: DataConfig) -> str:
    """The folder name of a corpus + tokenizer (+ vocab for bpe, + the data.max_bytes cap), what data.dir and
    run.name default to: ``notes.txt`` char -> ``notes-char``, ``tinystories`` bpe 4096 -> ``tinystories-bpe4096``,
    ``logs/**/*.log`` gpt2 -> ``logs-gpt2``; a tokenizer file names its folder: ``notes.txt`` with
    ``data/tinystories-bpe4096/tokenizer.txt`` -> ``notes-tok-tinystories-bpe4096``. Another corpus or tokenizer
    gets another name, so a run on your own text never lands in the demo's folders."""
    parts = [p for p in re.split(r"[/\\]", d.corpus) if p not in ("", ".", "..", "~") and not set(p) & set("*?[")]
    stem = _safe_name(Path(parts[-1]).stem if parts else "", "corpus")
    cap = "-" + re.sub(r"[^A-Za-z0-9.]+", "", d.max_bytes) if d.max_bytes.strip() else ""
    file = tokenizer_file(d)
    if file is not None:  # data/<name>/tokenizer.txt -> <name>; runs/<run>/checkpoints/<step>/tokenizer.txt -> <run>
        folder = file.parents[2] if file.parent.parent.name == "checkpoints" else file.parent
        return f"{stem}-tok-{_safe_name(folder.name if file.stem == 'tokenizer' else file.stem, 'file')}{cap}"
    return f"{stem}-{d.tokenizer}{d.vocab_size if d.tokenizer == 'bpe' else ''}{cap}"


def _safe_name(name: str, fallback: str) -> str:
    """``name`` safe in a folder name: ``"My Notes" -> "My-Notes"``; ``fallback`` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or fallback


def derive_names(cfg: Config) -> Config:
    """Fill in data.dir and run.name where they were not given ("", the defaults) from :func:`default_name`."""
    cfg.data.dir = cfg.data.dir or f"data/{default_name(cfg.data)}"
    cfg.run.name = cfg.run.name or default_name(cfg.data)
    return cfg


def unused_keys(cfg: Config) -> dict[str, str]:
    """Settings ``cfg`` never reads, each with the reason: ``{"data.vocab_size": 'data.tokenizer is "char"'}``."""
    if cfg.data.tokenizer != "bpe":  # char has the corpus's characters, gpt2 its own 50257 tokens
        return {"data.vocab_size": f"data.tokenizer is {json.dumps(cfg.data.tokenizer)}"}
    return {}


def to_toml(cfg: Config) -> str:
    """The fully resolved config as TOML, every default written out (run folder's config.toml); a setting
    the config never reads (:func:`unused_keys`) is written as a comment that says so."""
    unused = unused_keys(cfg)
    lines = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for name, value in asdict(getattr(cfg, section)).items():
            # json renders bools as true/false and strings with TOML-compatible escapes
            line = f"{name} = {json.dumps(value, ensure_ascii=False)}"
            why = unused.get(f"{section}.{name}")
            lines.append(f"# {line}  (unused: {why})" if why else line)
        lines.append("")
    return "\n".join(lines)


def describe_keys() -> str:
    """Every key with its default and docstring (for `tinylm config --keys`)."""
    import ast
    import itertools

    # the sections' classes as their files define them, each file parsed once (inspect.getsource(cls) parses
    # the whole file again for each class: most of the command's time)
    classes: dict[str, dict[str, ast.ClassDef]] = {}
    out = []
    for section in SECTIONS:
        cls = type(getattr(Config(), section))
        file = sys.modules[cls.__module__].__file__
        if file not in classes:
            tree = ast.parse(Path(file).read_text(encoding="utf-8"))
            classes[file] = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
        docs: dict[str, str] = {}
        for node, nxt in itertools.pairwise(classes[file][cls.__name__].body):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())  # a docstring may wrap
        for f in dataclasses.fields(cls):
            out.append(f"--{section}.{f.name} (default {json.dumps(f.default)}): {docs.get(f.name, '')}")
    return "\n".join(out)


# -- checking the tree ---------------------------------------------------------------------------
def tokenizer_file(d: DataConfig) -> Path | None:
    """``--data.tokenizer`` as a file path, or None when it names a tokenizer (char, bpe, gpt2)."""
    return None if d.tokenizer in TOKENIZERS else Path(d.tokenizer)


def micro_batch_size(cfg: Config, world_size: int = 1) -> int:
    """Sequences per process per forward: --train.micro_batch_size, or (0) the process's share of the batch."""
    return cfg.train.micro_batch_size or cfg.train.batch_size // world_size


def grad_accum_steps(cfg: Config, world_size: int = 1) -> int:
    """Micro-steps per optimizer step: batch_size / (micro_batch_size * processes)."""
    return cfg.train.batch_size // (micro_batch_size(cfg, world_size) * world_size)


def validate(cfg: Config, world_size: int = 1) -> None:
    """Check the tree once, early; every message names the flags to change."""
    m, d, o, t, s = cfg.model, cfg.data, cfg.optim, cfg.train, cfg.sample

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise TinyLMError(msg)

    for sec in (f.name for f in dataclasses.fields(cfg)):  # values set in Python skip convert_value
        for name, allowed in literal_fields(getattr(cfg, sec)).items():
            value = getattr(getattr(cfg, sec), name)
            need(value in allowed, not_one_of(f"{sec}.{name}", value, allowed))
    for key in ("model.block_size", "model.n_layer", "model.n_head", "model.n_embd",
                "train.max_steps", "train.batch_size", "train.log_interval"):
        sec, name = key.split(".")
        need(getattr(getattr(cfg, sec), name) > 0, f"--{key} must be positive")
    need(m.n_embd % m.n_head == 0,
         f"--model.n_embd {m.n_embd} is not divisible by --model.n_head {m.n_head}")
    need(m.pos != "rope" or (m.n_embd // m.n_head) % 2 == 0,
         f"rotary positions need an even head size; --model.n_embd {m.n_embd} / --model.n_head {m.n_head} is odd")
    need(m.rope_base > 1 and math.isfinite(m.rope_base),  # base 0: infinite frequencies, NaN at step 1
         f"--model.rope_base {m.rope_base} must be a finite number > 1 (the rotary base; 10000 is usual, larger for "
         f"long contexts)")
    need(m.vocab_size == 0 or m.vocab_size >= 2, "--model.vocab_size must be 0 (from the data) or >= 2")
    need(m.vocab_pad_to >= 1, f"--model.vocab_pad_to {m.vocab_pad_to} must be >= 1 (1 = no padding; 64 for GPUs)")
    need(m.loss_chunk >= 0, f"--model.loss_chunk {m.loss_chunk} must be >= 0 (0 = the whole batch at once)")
    need(0.0 <= m.dropout < 1.0, f"--model.dropout {m.dropout} must be in [0, 1)")
    need(m.mlp_ratio > 0, "--model.mlp_ratio must be positive")
    file = tokenizer_file(d)
    need(file is None or file.is_file(),
         f"--data.tokenizer {d.tokenizer!r} is not one of {', '.join(TOKENIZERS)}, nor a tokenizer file"
         + (f" (it is a folder: give the file in it, e.g. {file / 'tokenizer.txt'})" if file and file.is_dir()
            else " (no such file)") + "; pass another run's data/<name>/tokenizer.txt to reuse its tokenizer")
    need(d.tokenizer != "bpe" or d.vocab_size >= 257,
         f"--data.vocab_size {d.vocab_size} is too small for byte-level BPE: it needs the 256 byte "
         f"tokens plus at least one merge (use >= 257, e.g. 4096)")
    need(0.0 < d.val_fraction < 1.0, f"--data.val_fraction {d.val_fraction} must be in (0, 1)")
    need(d.num_workers >= 0, "--data.num_workers must be >= 0 (0 = automatic)")
    parse_bytes(d.max_bytes)
    need(o.lr > 0 and math.isfinite(o.lr), f"--optim.lr {o.lr} must be a positive number")
    need(0 <= o.min_lr_ratio <= 1, f"--optim.min_lr_ratio {o.min_lr_ratio} must be in [0, 1]")
    need(o.warmup_steps >= 0, "--optim.warmup_steps must be >= 0")
    need(all(0 <= b < 1 for b in (o.beta1, o.beta2, o.embed_beta1, o.embed_beta2)),
         "--optim.beta1, --optim.beta2, --optim.embed_beta1 and --optim.embed_beta2 must be in [0, 1)")
    need(o.weight_decay >= 0 and o.embed_weight_decay >= 0 and o.grad_clip >= 0,
         "--optim.weight_decay, --optim.embed_weight_decay and --optim.grad_clip must be >= 0")
    need(o.embed_lr >= 0 and o.scalar_lr >= 0, "--optim.embed_lr and --optim.scalar_lr must be >= 0 (0 = inherit)")
    need(o.name != "muon" or o.embed_lr > 0,
         f"--optim.name muon needs --optim.embed_lr: the AdamW learning rate of the embeddings, head and norms "
         f"(Muon's --optim.lr {o.lr} is for hidden matrices only; try --optim.lr 0.02 --optim.embed_lr 3e-3)")
    need(o.name != "muon" or not t.fsdp, "--optim.name muon does not support --train.fsdp yet (Newton-Schulz "
         "needs whole matrices); use DDP (the default under torchrun) or --optim.name adamw")
    need(0 < o.decay_frac <= 1, f"--optim.decay_frac {o.decay_frac} must be in (0, 1]")
    need(0 <= o.momentum < 1 and 0 <= o.momentum_warmup_start < 1,
         "--optim.momentum and --optim.momentum_warmup_start must be in [0, 1)")
    need(o.ns_steps >= 1 and o.momentum_warmup_steps >= 0,
         "--optim.ns_steps must be >= 1 and --optim.momentum_warmup_steps >= 0")
    check_seed(t.seed, "--train.seed")
    need(t.eval_interval >= 0, "--train.eval_interval must be >= 0 (0 = only at the end)")
    need(t.eval_tokens >= 0, "--train.eval_tokens must be >= 0 (0 = the whole validation split)")
    need(t.micro_batch_size >= 0, "--train.micro_batch_size must be >= 0 (0 = no accumulation)")
    need(t.threads >= 0, "--train.threads must be >= 0 (0 = torch's default)")
    need(t.save_interval >= 0 and t.keep_last >= 1 and t.max_skips >= 1,
         "--train.save_interval must be >= 0, --train.keep_last and --train.max_skips >= 1")
    need(t.spike_factor == 0 or t.spike_factor > 1, "--train.spike_factor must be 0 (off) or > 1")
    parse_duration(t.time_budget)
    parse_bytes(t.artifact_bytes, "--train.artifact_bytes")
    micro = micro_batch_size(cfg, world_size)
    need(t.batch_size % world_size == 0,
         f"--train.batch_size {t.batch_size} is not divisible by {world_size} DDP processes")
    need(micro > 0 and t.batch_size % (micro * world_size) == 0,
         f"--train.batch_size {t.batch_size} is not divisible by --train.micro_batch_size {micro} "
         f"x {world_size} process(es); pick a micro-batch that divides the batch")
    check_sample(s)
    # one plain folder name: "..", "." or a path would put the run's files outside (or on top of) --run.dir
    need(cfg.run.name == "" or (cfg.run.name.strip() not in ("", ".", "..")  # "": derive_names fills it in
                                and not set(cfg.run.name) & {"/", "\\", "\0"}),
         f"--run.name {cfg.run.name!r} must be one plain folder name (not empty, '.' or '..', no '/' or '\\'), "
         f"e.g. --run.name my-run; put the parent folder in --run.dir")
