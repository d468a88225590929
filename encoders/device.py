"""Device, autocast and CPU-thread selection shared by the encoders.

One code path: the device is chosen once (``cuda`` when present, else ``cpu``); bf16 autocast
is used only on CUDA devices that support it, ``contextlib.nullcontext()`` everywhere else.
"""

from __future__ import annotations

import contextlib
import logging
import os
from contextlib import AbstractContextManager

import torch

logger = logging.getLogger(__name__)


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``device`` when given, else ``cuda`` when present, else ``cpu``.

    Args:
        device: ``None`` (auto), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: ``device`` is not a valid torch device string, or asks for CUDA when none is present.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N' (got {device!r})") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: CUDA was requested but is not available (got {device!r})")
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N' (got {device!r})")
    return chosen


def autocast_context(device: torch.device) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA devices that support it; a no-op context otherwise."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def available_cpus() -> int:
    """CPU cores this process may run on (respects container affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def limit_cpu_threads(reserve: int = 0) -> int:
    """Cap torch's intra-op threads at the cores available minus one, minus ``reserve``.

    One core is left for tokenisation, the OS and other processes, ``reserve`` more for DataLoader
    workers. Why: OpenMP threads spin-wait for each other, so on a small shared machine a thread
    per core is far slower than one fewer (measured on a loaded 2-core box: MiniLM at 2 threads
    ran at 5-6 texts/s, at 1 thread at 15-16). Never raises the count (an explicit
    ``OMP_NUM_THREADS`` or ``torch.set_num_threads`` by the caller wins when lower).

    Returns:
        The thread count in effect afterwards.
    """
    cap = max(1, available_cpus() - 1 - max(0, reserve))
    if torch.get_num_threads() > cap:
        logger.debug("limiting torch threads from %d to %d", torch.get_num_threads(), cap)
        torch.set_num_threads(cap)
    return torch.get_num_threads()
