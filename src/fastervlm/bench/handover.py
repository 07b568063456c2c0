"""Handing a built pipeline to worker processes with its weights in one shared-memory buffer per dtype.

torch.multiprocessing shares each tensor through a file descriptor of its own. A model has hundreds of tensors
(Video-LLaVA's 24-layer tower alone: about 650), more than a process start may pass (the fork server takes at most
252: "ValueError: too many fds"), and every one of them stays open. Here every CPU parameter and buffer of the
pipeline becomes a view into one shared buffer per dtype (in this process too, so the weights still exist once), the
pipeline is pickled with those views written as references (buffer, offset, shape, stride), and a worker rebuilds
them as views of the buffers it received: a handful of descriptors, whatever the model.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch


@dataclass
class Handover:
    """A pipeline as the shared weight buffers plus the pickled rest; picklable (the buffers by descriptor)."""

    buffers: list[torch.Tensor]
    payload: bytes

    def pipeline(self) -> Any:
        """The pipeline, its weights views of the shared buffers (no copy)."""
        return _Unpickler(io.BytesIO(self.payload), self.buffers).load()


def hand_over(pipeline: Any) -> Handover:
    """Move the pipeline's CPU weights into shared buffers (in place) and pickle the rest around them."""
    buffers = _share_weights(_tensors(pipeline))
    payload = io.BytesIO()
    _Pickler(payload, buffers).dump(pipeline)
    return Handover(buffers, payload.getvalue())


def _tensors(pipeline: Any) -> list[torch.Tensor]:
    """Every parameter and buffer of the adapter's modules, once each (tied weights are one tensor)."""
    modules = [m for m in vars(pipeline.adapter).values() if isinstance(m, torch.nn.Module)]
    found: dict[int, torch.Tensor] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "cpu":
                found.setdefault(id(tensor), tensor)
    return list(found.values())


def _share_weights(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """One shared buffer per dtype; each tensor's data becomes a view into it (its old storage is freed)."""
    buffers = []
    for dtype in sorted({t.dtype for t in tensors}, key=str):
        group = [t for t in tensors if t.dtype == dtype]
        buffer = torch.empty(sum(t.numel() for t in group), dtype=dtype).share_memory_()
        offset = 0
        for tensor in group:
            view = buffer[offset: offset + tensor.numel()].view(tensor.shape)
            view.copy_(tensor.detach())
            tensor.data = view
            offset += tensor.numel()
        buffers.append(buffer)
    return buffers


class _Pickler(ForkingPickler):
    """torch's pickler, with tensors that live in the shared buffers written as references to them."""

    def __init__(self, file: io.BytesIO, buffers: list[torch.Tensor]) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self._buffers = {buffer.untyped_storage().data_ptr(): n for n, buffer in enumerate(buffers)}

    def persistent_id(self, obj: Any) -> tuple | None:
        if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu":
            return None
        number = self._buffers.get(obj.untyped_storage().data_ptr())
        if number is None:
            return None
        kind = "parameter" if isinstance(obj, torch.nn.Parameter) else "tensor"
        return kind, number, obj.storage_offset(), tuple(obj.shape), tuple(obj.stride()), obj.requires_grad


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, buffers: list[torch.Tensor]) -> None:
        super().__init__(file)
        self._buffers = buffers

    def persistent_load(self, pid: tuple) -> torch.Tensor:
        kind, number, offset, shape, stride, requires_grad = pid
        view = self._buffers[number].as_strided(shape, stride, offset)
        return torch.nn.Parameter(view, requires_grad=requires_grad) if kind == "parameter" else view
