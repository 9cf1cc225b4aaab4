"""FP8 training (``--train.precision fp8``): the transformer blocks' Linear layers multiply in FP8 through torchao.

torchao's float8 training (``torchao.float8``) swaps each chosen ``nn.Linear`` for a ``Float8Linear`` whose
matmuls (forward and both backward products) scale their inputs to float8 per tensor and run on the GPU's FP8
tensor cores; the weights stay the fp32 master copies the optimizer updates, and everything else (embeddings,
norms, attention's softmax, the output head and the loss) runs under bf16 autocast as ``bf16`` does. The head
stays out: its logits feed a softmax over the whole vocabulary, where FP8's 3-bit mantissa costs the most. The
parameters keep their names and shapes, so checkpoints, resuming and exports are those of a bf16 run.

torchao is optional (not installed by ``make setup``); only a run that asks for fp8 imports it.
"""
from __future__ import annotations

import importlib.util

import torch

from ..errors import TinyLMError

FP8_CAPABILITY = (8, 9)  # Ada (8.9) and Hopper (9.0) onwards have FP8 tensor cores


def check_fp8(device: torch.device) -> None:
    """Refuse ``--train.precision fp8`` in one line where it cannot run: not CUDA, a GPU older than compute
    capability 8.9 (an A100 is 8.0), or no torchao to import."""
    if device.type != "cuda":
        raise TinyLMError(f"--train.precision fp8 needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+: "
                          f"Ada, Hopper, Blackwell); this run is on {device.type}: use --train.precision bf16")
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_CAPABILITY:
        raise TinyLMError(f"--train.precision fp8 needs FP8 tensor cores (compute capability 8.9+); "
                          f"{torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}: "
                          f"use --train.precision bf16")
    if importlib.util.find_spec("torchao") is None:
        raise TinyLMError("--train.precision fp8 trains through torchao's float8 layers and torchao is not "
                          "installed: pip install torchao (the release built for your torch), or use bf16")


def in_fp8(fqn: str, module: torch.nn.Module) -> bool:
    """Whether the layer named ``fqn`` multiplies in FP8: a Linear inside a block whose sides are multiples of
    16 (what torch's FP8 matmul needs); the output head, embeddings and norms never."""
    return (isinstance(module, torch.nn.Linear) and fqn.startswith("blocks.")
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def convert_to_fp8(model: torch.nn.Module) -> int:
    """Swap the layers :func:`in_fp8` chooses for torchao's ``Float8Linear`` (dynamic tensorwise scaling, its
    default recipe), in place, before compiling or wrapping for DDP. Returns how many were swapped."""
    from torchao.float8 import convert_to_float8_training
    chosen = [fqn for fqn, m in model.named_modules() if in_fp8(fqn, m)]
    convert_to_float8_training(model, module_filter_fn=lambda m, fqn: in_fp8(fqn, m))
    return len(chosen)
