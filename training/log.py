"""What the loop writes and measures: ``metrics.jsonl``, throughput and data wait, and the out-of-memory hint."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from mmcontrast.errors import UserError

from .config import TrainConfig

# what torch's allocators say when a request fails (CUDA and MPS: "out of memory"; the CPU: DefaultCPUAllocator)
OUT_OF_MEMORY = ("out of memory", "DefaultCPUAllocator: can't allocate", "not enough memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator failing a request (torch raises RuntimeError for the CPU's)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(text in str(error) for text in OUT_OF_MEMORY))


@contextmanager
def memory_hint(cfg: TrainConfig, device: torch.device):
    """An allocator failure in a training step as one line saying which settings lower the memory it needs."""
    try:
        yield
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(e):
            raise
        said = (str(e).strip().splitlines() or [""])[0]  # "CUDA out of memory. Tried to allocate 20.00 GiB ..."
        said = said if len(said) <= 160 else said[:160] + "…"
        chunk = cfg.train.chunk_size
        smaller = (f"lower train.chunk_size (now {chunk})" if chunk else
                   f"set train.chunk_size (GradCache: the same gradients, in the activation memory of that many "
                   f"samples), e.g. train.chunk_size={max(1, cfg.data.batch_size // 4)}")
        raise UserError(f"a training step with data.batch_size = {cfg.data.batch_size} does not fit in memory on "
                        f"{device} ({said}); {smaller}, or lower data.batch_size, or set "
                        f"model.grad_checkpointing=true") from None


class Meter:
    """Throughput and data-wait fraction between two log lines; time spent in evaluation excluded."""

    def __init__(self, global_batch: int):
        self.global_batch, self.steps, self.waited, self.since = global_batch, 0, 0.0, time.perf_counter()

    def wait(self, fetch):
        t0 = time.perf_counter()
        item = fetch()
        self.waited += time.perf_counter() - t0
        self.steps += 1
        return item

    def pause(self, fn):
        t0 = time.perf_counter()
        fn()
        self.since += time.perf_counter() - t0

    def rates(self) -> dict:
        """``samples_per_s`` and ``data_wait`` since the last call; the next period starts now."""
        now = time.perf_counter()
        elapsed = now - self.since
        rates = {"samples_per_s": self.steps * self.global_batch / elapsed, "data_wait": self.waited / elapsed}
        self.steps, self.waited, self.since = 0, 0.0, now
        return rates


class Logger:
    """``metrics.jsonl``: one JSON object per line, appended (a resumed run continues the file)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
