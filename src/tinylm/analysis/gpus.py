"""The devices `tinylm plan` prices: edit this file to change a price, an assumed MFU, or add a device.

Peak FLOP/s come from :data:`tinylm.training.accounting.GPU_PEAKS` through ``torch_name`` (the name torch reports),
so the planner and MFU logging agree; the CPU's peak is measured on this machine (``torch_name = ""``).
Prices are approximate US$ per device-hour, on demand unless the key says spot, as listed by cloud
providers in 2025 (Lambda, RunPod, AWS); they move: check before you spend.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    torch_name: str
    """The name torch reports, matched against accounting.GPU_PEAKS; "" = this machine's CPU (measured peak)."""
    usd_per_hour: float
    """Price of one device-hour."""
    mfu: float
    """Assumed model FLOPs utilization when tinylm has not measured one (--mfu / --mfu-from override it)."""
    precision: str = "bf16"
    """Which peak applies: bf16 (tensor cores) or fp32."""


# MFU: a GPT of 100M+ parameters trained well (nanoGPT with torch.compile, llm.c) reaches 35-50% of the bf16
# peak on A100/H100; 40% is the assumption. Small models and the CPU reach less.
DEVICES: dict[str, Device] = {
    "h100": Device("NVIDIA H100 80GB HBM3", 2.99, 0.40),
    "h100-spot": Device("NVIDIA H100 80GB HBM3", 1.99, 0.40),
    "h200": Device("NVIDIA H200", 3.79, 0.40),
    "a100": Device("NVIDIA A100-SXM4-80GB", 1.79, 0.40),
    "a100-spot": Device("NVIDIA A100-SXM4-80GB", 1.19, 0.40),
    "b200": Device("NVIDIA B200", 5.99, 0.40),
    "l40s": Device("NVIDIA L40S", 0.99, 0.35),
    "l4": Device("NVIDIA L4", 0.80, 0.35),
    "a10g": Device("NVIDIA A10G", 1.01, 0.35),
    "rtx4090": Device("NVIDIA GeForce RTX 4090", 0.69, 0.35),
    "rtx3090": Device("NVIDIA GeForce RTX 3090", 0.44, 0.35),
    "t4": Device("Tesla T4", 0.35, 0.30),
    "cpu": Device("", 0.10, 0.30, precision="fp32"),
}
