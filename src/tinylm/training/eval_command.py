"""`tinylm eval`: loss, perplexity and bits per byte of a checkpoint, a quantized artifact or a Hugging Face folder, on
its run's split or on a text file (the scoring itself is :mod:`.evaluate`'s)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import Config, from_dict, micro_batch_size
from ..data.prepare import encode_file
from ..data.shards import load_data_tokenizer
from ..errors import TinyLMError
from ..interop.artifact import read_header
from ..interop.hf_import import config_for_eval, import_hf, imported_model, is_hf_folder
from ..tokenizer import Tokenizer
from . import runtime
from .checkpoint import checkpoint_config, load_for_inference, read_meta, resolve_checkpoint
from .evaluate import Evaluator

# tokens per forward pass when scoring a Hugging Face folder: its context may be long and its vocabulary
# large (GPT-2: 4 windows of 1024 -> 0.8 GB of fp32 logits)
HF_BATCH_TOKENS = 4096


def parse_tokens(text: str | None) -> int | None:
    """``--tokens``: "all" -> 0 (the whole split or text), "100000" or "1e5" -> 100000, None -> None (the default)."""
    if text is None or text == "all":
        return None if text is None else 0
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = -1.0
    if not (value >= 1 and value.is_integer()):
        raise TinyLMError(f"--tokens expects a positive whole number or all, got {text!r}")
    return int(value)


def _evaluator(step_dir: Path, cfg: Config, tok: Tokenizer, split: str, text: str | None, tokens: int | None,
               batch_size: int, d: runtime.Dist) -> tuple[Evaluator, str]:
    """The evaluator of ``text`` (a file) or of the run's ``split``, and a description of what it scores."""
    kw = {"rank": d.rank, "world_size": d.world_size}
    if text is None:
        data_dir = cfg.data.dir
        if load_data_tokenizer(data_dir).to_text() != tok.to_text():
            raise TinyLMError(f"{data_dir} was prepared again with another tokenizer since {step_dir} was saved; "
                              f"evaluate a file with --text, or prepare {data_dir} again with the run's settings")
        max_tokens = cfg.train.eval_tokens if tokens is None else tokens
        ev = Evaluator.for_split(data_dir, split, cfg.model.block_size, batch_size, tok, max_tokens=max_tokens, **kw)
        return ev, f"the {split} split of {data_dir}"
    path = Path(text)
    if not path.is_file():
        raise TinyLMError(f"--text {text} is not a file; give a UTF-8 text file")
    try:
        ids = encode_file(path, tok, cfg.data)
    except TinyLMError as e:  # a character the run's vocabulary lacks, bytes that are not UTF-8
        raise TinyLMError(f"--text {text}: {e}") from None
    if len(ids) < 2:
        what = "is empty" if path.stat().st_size == 0 else f"holds {len(ids)} token(s) with the run's tokenizer"
        raise TinyLMError(f"--text {text} {what}: evaluation needs at least 2 tokens (one to predict from, one "
                          f"to predict); give a longer text")
    ev = Evaluator([ids], cfg.model.block_size, batch_size, tok.token_byte_lengths(), max_tokens=tokens or 0, **kw)
    return ev, str(path)


def evaluate_run(run: str | Path, *, checkpoint: str = "last", split: str | None = None, tokens: int | None = None,
                 text: str | None = None, batch_size: int | None = None, device: str | None = None,
                 context: int | None = None) -> dict | None:
    """`tinylm eval`: a checkpoint's loss, perplexity and bits per byte on its run's split or on a text file.

    ``run`` may be a quantized artifact (a file ``tinylm export --quantize`` wrote), scored on the split of the data
    folder its config names or on ``text``; or a Hugging Face GPT-2 or Llama folder (``tinylm export --format hf``
    writes one; transformers' ``save_pretrained`` too), scored on ``text`` with its own tokenizer: a model's bits per
    byte beside GPT-2's on the same file. ``tokens``: targets to score (0 = all; default the run's
    ``train.eval_tokens`` on a split, all of a text); ``batch_size``: windows per forward pass (default
    the run's micro-batch, or :data:`HF_BATCH_TOKENS` tokens' worth for a folder; the result does not
    depend on it); ``context``: windows of at most this many tokens (default the model's context: set it to
    compare models of different contexts on equal terms). Under torchrun the processes share the work. Returns
    the report on rank 0, else None.
    """
    if batch_size is not None and batch_size < 1:
        raise TinyLMError(f"--batch-size {batch_size} must be positive")
    if text is not None and split is not None:
        raise TinyLMError("give --split or --text, not both: --text scores a file instead of the run's split")
    folder = Path(run)
    hf = is_hf_folder(folder)
    quantized = folder.is_file()  # runs and checkpoints are folders; a file is an artifact (export --quantize)
    if quantized:
        header = read_header(folder)
        cfg = from_dict(header["config"])
    elif hf:
        if text is None or checkpoint != "last":
            raise TinyLMError(f"{run} is a Hugging Face model folder: it has neither a prepared split nor "
                              f"checkpoints; score a file with --text FILE")
        source = import_hf(str(folder))
        if source.tokenizer.eot_token is None:
            raise TinyLMError(f"the tokenizer of {run} has no <|endoftext|> token, which tinylm puts between the "
                              f"documents of --text; add it to the folder's tokenizer as a special token")
        cfg = config_for_eval(folder, source)
    else:
        step_dir = resolve_checkpoint(run, checkpoint)
        cfg = checkpoint_config(step_dir)
    if context is not None and not 1 <= context <= cfg.model.block_size:
        raise TinyLMError(f"--context {context}: give 1 to {cfg.model.block_size}, the model's context")
    device = device or cfg.train.device
    d = runtime.init_distributed(device)
    dev = runtime.resolve_device(device, d.local_rank, flag="--device")  # one GPU per process under torchrun
    if hf:
        path, model, tok, step = folder, imported_model(source, folder, dev), source.tokenizer, None
    else:
        path, cfg, model, tok = load_for_inference(folder if quantized else step_dir, checkpoint, device=str(dev))
        step = header["source"].get("step") if quantized else read_meta(path)["step"]
    if context is not None:
        cfg = replace(cfg, model=replace(cfg.model, block_size=context))
    batch_size = batch_size or (max(1, HF_BATCH_TOKENS // cfg.model.block_size) if hf
                                else micro_batch_size(cfg, d.world_size))
    ev, source_text = _evaluator(path, cfg, tok, split or "val", text, tokens, batch_size, d)
    # fp16 needs CUDA: a run trained in it is evaluated elsewhere in the best precision of that device; so is an
    # fp8 run anywhere (its checkpoint holds plain weights: FP8 was only how its training multiplied)
    other = cfg.train.precision == "fp8" or (cfg.train.precision == "fp16" and dev.type != "cuda")
    precision = runtime.resolve_precision("auto" if other else cfg.train.precision, dev)
    model.set_attention(runtime.broadcast_from_main(
        model.choose_attention(dev, runtime.compute_dtype(precision), batch_size), d))
    result = ev.run(model, dev, precision, d)
    if not d.is_main:
        return None
    return {"checkpoint": str(path), "step": step, "on": source_text, "context": cfg.model.block_size,
            **result.as_dict()}
