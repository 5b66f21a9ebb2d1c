"""CPU time of a process group, from /proc: the benchmarks' measure of cost
(steadier than throughput on a shared machine)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(group: int) -> float:
    """User+system CPU time of every process in a process group (a server and its threads or workers)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")
