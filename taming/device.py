"""Where the library's tensors go: the device of a model, and host-to-device copies that do not wait.

A plain `.to("cuda")` of a tensor in ordinary (pageable) host memory waits until the GPU has finished every
kernel queued before it, a host sync in the middle of a taming step. From page-locked (pinned) memory the copy
is queued like a kernel and the host goes on; torch's caching host allocator reuses the pinned buffers and keeps
each until its copy has completed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def model_device(model: nn.Module) -> torch.device:
    """The device of `model`'s parameters."""
    return next(model.parameters()).device


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """A host tensor on `device`; to a GPU through pinned memory without waiting for the GPU."""
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)
