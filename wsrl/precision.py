"""``--precision``: the dtype of the hidden layers' GEMMs, and whether the hardware makes bf16 pay.

bf16 applies to the hidden layers of every network (wsrl/nets.py, ``EnsembleMLP``) and nothing
else; docs/performance.md gives the measurements behind each boundary. Parameters, gradients and
Adam state stay fp32 whatever the precision, so a checkpoint does not record one and loads in
either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "bf16-last-fp32"]
"""``bf16-last-fp32``: bf16 except the last hidden layer of each network, so that the heads read
fp32 activations computed in fp32 (the boundary docs/performance.md's learning comparison tests)."""
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-last-fp32": torch.bfloat16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""/proc/cpuinfo flags of a native bf16 dot product: x86's AVX512-BF16 and AMX, ARM's BF16."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where /proc/cpuinfo is absent."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def bf16_slower(device: torch.device) -> str | None:
    """Why bf16 GEMMs would be slower than fp32 on ``device``, or None where they are native."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return (f"{torch.cuda.get_device_name(device)} (sm{major}{minor}) has no bf16 tensor cores "
                    f"(sm80 and newer do), so bf16 matmuls would be emulated")
        return None
    if device.type == "cpu":
        if not set(CPU_BF16_FLAGS) & cpu_flags():
            return ("this CPU has no native bf16 matmul (none of the flags " + ", ".join(CPU_BF16_FLAGS)
                    + " in /proc/cpuinfo), so bf16 matmuls would be emulated")
        return None
    return f"bf16 is not supported on {device.type}"


def effective_precision(precision: str, device: torch.device) -> Precision:
    """``precision`` where the hardware makes it pay; else fp32, said in one line."""
    if precision != "fp32":
        why = bf16_slower(device)
        if why is not None:
            print(f"wsrl: --precision {precision}: {why} and slower than fp32; running fp32 instead")
            return "fp32"
    return precision  # type: ignore[return-value]
