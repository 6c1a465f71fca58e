"""The precision policy of the taming loop and the evaluation, and the measured speed switches beside it.

Where a Glow may compute in less than fp32, and why there only:

- The coupling networks (three convolutions per step of flow, nearly all of a Glow's arithmetic) may run in bf16
  in the passes that compute gradients (the taming step's forward and backward). Their output, cast back to fp32,
  is a function of the untouched half, so the flow stays invertible and its log-determinant exact whatever they
  compute in; only the trained function moves, by about bf16's rounding.
- Everything else stays fp32 whatever the mode: ActNorm, the invertible 1x1 convolutions (the LU weight is built
  and applied in fp32, so its log-determinant is exactly the sum of w_s; `slogdet` of a full weight in fp64), the
  priors, log-probabilities, log-determinants and every reduction (taming.glow accumulates in at least fp32, also
  under an autocast region opened by a caller).
- Every measurement runs without gradient and so in fp32: μ_R and σ_R, the stop checks on fresh passes, the
  confirmation, the audit evaluation. What the report certifies does not depend on the mode.

Modes (`TAMING_PRECISION`):
- "fp32": strict fp32, TF32 off for convolutions and matrix products (CUDA).
- "tf32": convolutions on TF32 tensor cores (cuDNN's own default), matrix products strict fp32 so that the LU
  weight stays exact. On the CPU the same as "fp32".
- "bf16": as "tf32", and the coupling networks under bf16 autocast in gradient passes (CUDA and CPU).
Measured on the CPU (tests/test_precision.py): "bf16" moves the step's bpd by under 1e-4 bpd on the mean of a
batch, about 1e-3 per image on the shipped model (one dequantization draw spreads an image's bpd by 0.02).

`channels_last` and `compile` are separate switches, off by default; README "GPU" has what they measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taming.glow import AffineCoupling, Glow

MODES = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class Precision:
    """How a run computes: the precision mode, and whether models go channels-last or through torch.compile."""

    mode: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"precision must be one of {', '.join(MODES)}, not {self.mode!r}")

    @property
    def step_dtype(self) -> torch.dtype | None:
        """The dtype of the coupling networks in gradient passes (None: fp32)."""
        return torch.bfloat16 if self.mode == "bf16" else None

    def configure(self) -> None:
        """Set the process-wide TF32 switches of this mode (a worker process runs one job at a time)."""
        set_tf32(conv=self.mode != "fp32", matmul=False)

    def prepare(self, model: Glow) -> Glow:
        """Apply the mode and the switches to `model` in place and return it.

        Prepare each model after any `copy.deepcopy` of it: a copy of a compiled module is not compiled.
        `nn.Module.compile` compiles in place and keeps the parameter names, so checkpoints are unchanged.
        """
        for module in model.modules():
            if isinstance(module, AffineCoupling):
                module.compute_dtype = self.step_dtype
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.compile:
            model.compile(dynamic=None)
        return model

    def describe(self) -> str:
        """One line for the report and the logs, e.g. "bf16, channels-last"."""
        parts = [self.mode] + (["channels-last"] if self.channels_last else []) + (["compiled"] if self.compile else [])
        return ", ".join(parts)


def set_tf32(conv: bool, matmul: bool) -> None:
    """TF32 for cuDNN convolutions and for fp32 matrix products, through the API this torch has."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):  # torch >= 2.9
        cudnn_conv.fp32_precision = "tf32" if conv else "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = conv
        torch.backends.cuda.matmul.allow_tf32 = matmul

