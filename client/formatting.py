"""Presentation helpers shared by the command line and the web UI."""

from __future__ import annotations


def human_size(size: int) -> str:
    """1536 -> "1.5 KiB"; bytes as a whole number."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
