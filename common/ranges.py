"""Byte-range arithmetic for the chunk protocol.

Ranges are half-open ``(start, end)`` pairs of byte offsets. A file of ``size`` bytes is sent in
chunks of ``chunk_size`` bytes at offsets ``0, chunk_size, 2*chunk_size, …``; only the last chunk
may be shorter.
"""

from __future__ import annotations

from collections.abc import Iterable

Range = tuple[int, int]


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks a file of ``size`` bytes has (a zero-byte file has none)."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    return (size + chunk_size - 1) // chunk_size


def chunk_length(index: int, size: int, chunk_size: int) -> int:
    """The length of chunk ``index``: ``chunk_size`` except for a shorter last chunk."""
    start = index * chunk_size
    if index < 0 or start >= size:
        raise ValueError(f"chunk {index} is outside a file of {size} bytes")
    return min(chunk_size, size - start)


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sort and coalesce overlapping or touching ranges; empty ranges vanish."""
    out: list[Range] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def add(ranges: Iterable[Range], new: Range) -> list[Range]:
    """``ranges`` with ``new`` added, merged."""
    return merge([*ranges, new])


def subtract(ranges: Iterable[Range], removed: Range) -> list[Range]:
    """``ranges`` with the bytes of ``removed`` taken out."""
    rs, re_ = removed
    out: list[Range] = []
    for start, end in merge(ranges):
        if end <= rs or start >= re_:
            out.append((start, end))
            continue
        if start < rs:
            out.append((start, rs))
        if end > re_:
            out.append((re_, end))
    return out


def covers(ranges: Iterable[Range], wanted: Range) -> bool:
    """Whether ``wanted`` lies wholly inside the union of ``ranges``."""
    ws, we = wanted
    if we <= ws:
        return True
    return any(start <= ws and we <= end for start, end in merge(ranges))


def missing_ranges(received: Iterable[Range], size: int) -> list[Range]:
    """The parts of ``[0, size)`` that ``received`` does not cover."""
    missing: list[Range] = []
    cursor = 0
    for start, end in merge(received):
        if start > cursor:
            missing.append((cursor, min(start, size)))
        cursor = max(cursor, end)
        if cursor >= size:
            break
    if cursor < size:
        missing.append((cursor, size))
    return [r for r in missing if r[1] > r[0]]


def total(ranges: Iterable[Range]) -> int:
    """How many bytes the union of ``ranges`` holds."""
    return sum(end - start for start, end in merge(ranges))


def chunk_offsets(ranges: Iterable[Range], size: int, chunk_size: int) -> list[int]:
    """Offsets of every chunk that overlaps any of ``ranges``: what to send to fill them."""
    offsets: set[int] = set()
    for start, end in merge(ranges):
        first = start // chunk_size
        last = (min(end, size) - 1) // chunk_size
        offsets.update(i * chunk_size for i in range(first, last + 1))
    return sorted(o for o in offsets if o < size)
