"""What a benchmark ran on: the CPU's name, cores and the vector instructions that set int8 and float32 speed.

The same model name ("AMD EPYC") has been lent here both with AVX-512 VNNI and with AVX2 only, and the int8 graph
runs about 2.5-3x slower on the second (``bench/results/graph.md``), so every results file says which one it was.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: cpuinfo flags worth naming, in order: int8 dot products, wide vectors, then matrix units.
_FLAGS = (
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
    ("amx_int8", "AMX int8"),
    ("asimddp", "Arm dot product"),
)


def describe_cpu(cpuinfo: str | None = None) -> str:
    """E.g. "AMD EPYC, 2 cores, AVX2, no int8 dot-product instructions", from /proc/cpuinfo where there is one."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(encoding="utf-8") if path.is_file() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    named = [label for flag, label in _FLAGS if flag in flags]
    if not any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")):
        named.append("no int8 dot-product instructions")
    return f"{name}, {os.cpu_count()} cores, " + (", ".join(named) if named else "vector features unknown")
