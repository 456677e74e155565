"""How every benchmark reports: a readable table on stdout and one flat JSON object of named
numbers in bench/results/<name>.json (the unit is in each key: _ms, _us, _rps, _mb)."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import psutil  # type: ignore[import-untyped]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def tree_processes(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its descendants (a server's forked
    workers, a voice worker's job processes), including those that have exited."""
    total = 0.0
    for process in tree_processes(pid):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def write_results(
    name: str, figures: dict[str, float], goals: dict[str, str] | None = None
) -> Path:
    goals = goals or {}
    width = max(len(key) for key in figures)
    print(f"\n{name} benchmark ({platform.node()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    print(f"  {'figure'.ljust(width)}  {'value':>12}  goal")
    for key, value in figures.items():
        print(f"  {key.ljust(width)}  {value:>12.3f}  {goals.get(key, '')}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({k: round(v, 4) for k, v in figures.items()}, indent=2) + "\n")
    print(f"  -> {path.relative_to(RESULTS_DIR.parent.parent)}")
    return path
