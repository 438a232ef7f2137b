"""How times are written for people, the same in the training log and in `spfde.status`."""

from __future__ import annotations


def clock(seconds: float) -> str:
    """A duration as 1h02m, or 4m05s under an hour."""
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
