"""Label placement for the regime map (:mod:`opdgeo.plots_map`): labels that never overlap one
another, a point, or a leader line."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in display units (x right, y up)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def overlap(self, other: Box) -> float:
        """Area shared with ``other`` (0 when they only touch)."""
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return w * h if w > 0 and h > 0 else 0.0

    def inside(self, bounds: Box) -> bool:
        return (
            self.x0 >= bounds.x0
            and self.y0 >= bounds.y0
            and self.x1 <= bounds.x1
            and self.y1 <= bounds.y1
        )

    def grown(self, pad: float) -> Box:
        return Box(self.x0 - pad, self.y0 - pad, self.x1 + pad, self.y1 + pad)


@dataclass(frozen=True)
class Placement:
    """Where a label goes, and whether it needs a leader line back to its point."""

    box: Box
    leader: bool


def _crosses(p: tuple[float, float], q: tuple[float, float], box: Box) -> bool:
    """Whether the segment p-q meets ``box`` (Liang-Barsky clipping)."""
    t0, t1 = 0.0, 1.0
    dx, dy = q[0] - p[0], q[1] - p[1]
    for edge_p, edge_q in (
        (-dx, p[0] - box.x0),
        (dx, box.x1 - p[0]),
        (-dy, p[1] - box.y0),
        (dy, box.y1 - p[1]),
    ):
        if edge_p == 0:
            if edge_q < 0:
                return False
            continue
        t = edge_q / edge_p
        if edge_p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    bounds: Box,
    obstacles: Sequence[Box] = (),
    radii: Sequence[float] | None = None,
    gap: float = 3.0,
    pad: float = 1.5,
) -> list[Placement]:
    """Deterministic label placement: each label in turn takes the first free spot.

    Label ``i`` (width, height ``sizes[i]``) belongs to the point ``anchors[i]``, drawn with
    radius ``radii[i]`` (default 0). Candidate spots lie on rings around the anchor (radius
    ``radii[i] + gap + ring * height``; 8 directions on
    the first rings, 16 further out, starting to the right and turning counter-clockwise).
    A spot is free when the label, grown by ``pad``, lies inside ``bounds`` and overlaps
    neither an obstacle nor a label placed before it, and - beyond the first ring, where a
    leader line joins label and point - when that line crosses no placed label and the label
    crosses no placed leader line. When no ring up to the size of ``bounds`` has a free spot,
    the spot with the least overlap is used (the only case in which labels can overlap).
    Returns one placement per label, in input order.
    """
    placed: list[Placement] = []
    leaders: list[tuple[tuple[float, float], tuple[float, float]]] = []
    reach = math.hypot(bounds.x1 - bounds.x0, bounds.y1 - bounds.y0)
    radii = radii if radii is not None else [0.0] * len(anchors)
    for (ax, ay), (w, h), own in zip(anchors, sizes, radii, strict=True):
        step = max(h, 1.0)
        best: tuple[float, Box] | None = None
        chosen: Placement | None = None
        ring = 0
        while chosen is None and gap + ring * step <= reach:
            radius = own + gap + ring * step
            directions = 8 if ring < 3 else 16
            for j in range(directions):
                theta = 2 * math.pi * j / directions
                cx = ax + math.cos(theta) * (radius + w / 2)
                cy = ay + math.sin(theta) * (radius + h / 2)
                box = Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                padded = box.grown(pad)
                others = (*obstacles, *(p.box for p in placed))
                clash = sum(padded.overlap(o) for o in others)
                free = padded.inside(bounds) and clash == 0
                if free and ring > 0:
                    segment = ((ax, ay), (cx, cy))
                    free = not any(_crosses(*segment, p.box.grown(pad)) for p in placed)
                    free = free and not any(_crosses(a, b, padded) for a, b in leaders)
                if free:
                    chosen = Placement(box, ring > 0)
                    break
                outside = (w + 2 * pad) * (h + 2 * pad) - padded.overlap(bounds)
                cost = clash + max(outside, 0.0)
                if best is None or cost < best[0]:
                    best = (cost, box)
            ring += 1
        if chosen is None:
            assert best is not None
            chosen = Placement(best[1], True)
        if chosen.leader:
            b = chosen.box
            leaders.append(((ax, ay), ((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2)))
        placed.append(chosen)
    return placed
