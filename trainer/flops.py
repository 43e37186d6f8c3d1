"""Peak dense bf16 throughput by accelerator name, for an honest MFU on every card.

Upstream autoresearch divides by the H100's peak everywhere; we look the device up by
name and report no MFU at all when the card (or a CPU) is unknown.
"""

from __future__ import annotations

# (substring of torch.cuda.get_device_name(), dense bf16 tensor-core TFLOP/s). More
# specific names first: the first substring that matches wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("H800", 989.0),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("B100", 1750.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("A6000", 155.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("RTX 5090", 209.5),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16; V100 has no bf16
    ("T4", 65.0),  # fp16
)


def peak_flops(device_name: str | None) -> float | None:
    """Peak FLOP/s of the named accelerator, or None when unknown (no MFU is reported)."""
    if not device_name:
        return None
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def mfu_percent(flops_per_token: float, tokens: int, seconds: float,
                device_name: str | None) -> float | None:
    """Model FLOPs utilisation in percent, None on CPU or an unknown card."""
    peak = peak_flops(device_name)
    if peak is None or seconds <= 0:
        return None
    return 100.0 * flops_per_token * tokens / seconds / peak
