"""The machine a benchmark ran on: CPU model, cores, cache, library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

CPU_INFO = Path("/proc/cpuinfo")
CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
DEFAULT_LLC_BYTES = 32 * 2**20  # when the OS does not say


def cpu_model() -> str:
    """The CPU's model name (Linux), else what platform reports."""
    try:
        for line in CPU_INFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cores() -> int:
    """Cores this process may run on (affinity), which is what threads get."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _parse_size(text: str) -> int:
    """'32768K' -> bytes."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def last_level_cache_bytes() -> int:
    """Size of the highest-level cache, from sysfs; a common default elsewhere."""
    best_level, best_size = 0, DEFAULT_LLC_BYTES
    try:
        for index in CPU_CACHES.glob("index*"):
            level = int((index / "level").read_text())
            if level > best_level:
                best_level, best_size = level, _parse_size((index / "size").read_text())
    except (OSError, ValueError):
        return DEFAULT_LLC_BYTES
    return best_size


def load_average() -> float | None:
    """The 1-minute load average: other processes competing for the cores."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def describe(torch_version: str | None, load_before: float | None = None) -> dict:
    """Everything a reader needs to place the numbers."""
    import fastnorm
    from fastnorm._build import kernel_isa

    return {
        "load_average_before": load_before,
        "cpu": cpu_model(),
        "cores": cores(),
        "llc_bytes": last_level_cache_bytes(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch_version,
        "fastnorm": fastnorm.__version__,
        "openmp": fastnorm.openmp_enabled(),
        "kernels": {"avx2": "AVX2", "avx512": "AVX-512"}.get(kernel_isa(), "baseline"),
    }


def one_line(info: dict) -> str:
    """'AMD EPYC, 2 cores, numpy 2.4.6, torch 2.13.0+cpu, fastnorm 0.1.0 (OpenMP, AVX2 kernels)'."""
    torch = f"torch {info['torch']}" if info["torch"] else "no torch"
    openmp = "OpenMP" if info["openmp"] else "serial build"
    kernels = f", {info['kernels']} kernels" if info.get("kernels") else ""
    return (f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, numpy {info['numpy']}, "
            f"{torch}, fastnorm {info['fastnorm']} ({openmp}{kernels})")


def load_note(info: dict) -> str | None:
    """A warning when other processes kept the cores busy before the run."""
    load = info.get("load_average_before")
    if load is None or load < 0.5:
        return None
    return (f"note: load average {load:.2f} on {info['cores']} cores before the run (other processes). "
            "With every core busy, each parallel region waits for a time slice (often ~8-24 ms): "
            "multi-thread cells then time the scheduler, not the kernels; 1-thread cells still hold")
