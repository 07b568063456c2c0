"""Peak memory of a series of runs: CUDA max allocated, or on the CPU the peak RSS with its counter reset."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fastervlm.bench.results import Memory

def _proc_status_bytes(field_name: str) -> int | None:
    """A field of /proc/self/status in bytes (Linux), None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMeter:
    """Peak memory over a series of runs: CUDA max allocated, or the CPU peak RSS with its counter (VmHWM) reset
    before each run, so that what happened before the first run does not count."""

    def __init__(self, device: torch.device, isolated: bool) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.baseline = torch.cuda.memory_allocated(device) if self.cuda else _proc_status_bytes("VmRSS")
        self.peak: int | None = None
        self.kind = "CUDA max allocated" if self.cuda else (
            "peak RSS, own process" if isolated else "peak RSS in a shared process (allocator reuse can hide growth)")

    @contextmanager
    def run(self) -> Iterator[None]:
        self._reset()
        yield
        peak = self._read()
        if peak is not None:
            self.peak = peak if self.peak is None else max(self.peak, peak)

    def memory(self) -> Memory:
        return Memory(self.peak, self.baseline, self.kind)

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # resets VmHWM to the current RSS
        except OSError:
            self.kind = "peak RSS since the process started (the counter cannot be reset here)"

    def _read(self) -> int | None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        peak = _proc_status_bytes("VmHWM")
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return peak


