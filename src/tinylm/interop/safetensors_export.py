"""tinylm export --out model.safetensors: a checkpoint's weights alone, as safetensors, with its config and tokenizer in
the file's metadata (tinylm reads the file back; other tools read the tensors)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import TinyLMError
from ..fileio import check_replaceable, write_bytes_atomic, write_failure
from ..training.checkpoint import checkpoint_config, checkpoint_tokenizer, load_part, tokenizer_path


def _is_tinylm_export(path: Path) -> bool:
    """Did :func:`export_safetensors` write this file (safetensors whose metadata holds a tinylm config)?"""
    from safetensors import safe_open
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return "tinylm_config" in (f.metadata() or {})
    except Exception:  # not safetensors at all (any parse error): not ours
        return False


def export_safetensors(ckpt_dir: Path, out: Path) -> int:
    """Model weights alone as safetensors (a tied head is stored once, as wte.weight), with the config and
    the checkpoint's tokenizer file in the metadata (``tinylm_config``, ``tinylm_tokenizer``).

    Returns the number of tensors written; the file appears complete or not at all.
    """
    from safetensors.torch import save
    if out.is_dir():
        raise TinyLMError(f"--out {out} is a folder; give a file name, e.g. --out {out / 'model.safetensors'}")
    check_replaceable(out, proof=_is_tinylm_export)
    state = load_part(ckpt_dir, "model")
    cfg = checkpoint_config(ckpt_dir)
    if cfg.model.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as wte.weight
    state = {k: v.contiguous() for k, v in state.items()}
    checkpoint_tokenizer(ckpt_dir)  # refuse a damaged one before writing anything
    metadata = {"format": "pt", "tinylm_config": json.dumps(cfg.to_dict()),
                "tinylm_tokenizer": tokenizer_path(ckpt_dir).read_text(encoding="utf-8")}
    try:  # the atomic writer: complete or absent, and the permissions of every file tinylm writes (not 0600)
        write_bytes_atomic(out, save(state, metadata=metadata))
    except OSError as e:
        raise write_failure(e, out) from None
    return len(state)
