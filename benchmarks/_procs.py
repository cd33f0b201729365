"""Process trees for the benchmarks that watch a sweep from outside (endurance.py, gpu_sweeps.py)."""

from __future__ import annotations

import subprocess


def descendants(root: int) -> list[int]:
    """The process ids under ``root`` (children, grandchildren, ...), from ``ps``."""
    table = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n")
    children: dict[int, list[int]] = {}
    for line in table:
        parts = line.split()
        if len(parts) == 2:
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
