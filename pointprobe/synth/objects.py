"""Furniture and fixtures for the synthetic scenes, built from primitives at random sizes.

Every ``make_*`` function builds in a local frame: width along x centred on 0, depth along +y from
the back (y=0, the side that goes against a wall) to the front (y=d), z up from the floor, and
returns an ``Item`` (the objects and the footprint w x d, height h). Colours come from palettes that
several classes share, so that a class cannot be read from its colour alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pointprobe.synth.geometry import Obj, basin, box, cylinder, merge, rect, wavy_sheet

# fmt: off
PALETTES: dict[str, list[tuple[int, int, int]]] = {
    "paint": [(236, 233, 226), (222, 210, 188), (200, 200, 198), (192, 205, 218), (203, 214, 192),
              (238, 228, 204), (215, 190, 175)],
    "wood": [(152, 112, 72), (122, 86, 56), (188, 150, 102), (92, 62, 42), (206, 176, 132), (168, 128, 90)],
    "white": [(240, 240, 236), (226, 226, 222), (246, 244, 238)],
    "dark": [(52, 52, 56), (72, 66, 60), (38, 38, 42), (90, 90, 95)],
    "fabric": [(72, 92, 142), (142, 62, 62), (92, 122, 82), (182, 170, 150), (112, 112, 118), (202, 192, 172),
               (150, 120, 160), (60, 110, 120)],
    "metal": [(172, 172, 178), (132, 132, 138), (202, 202, 208), (110, 112, 118)],
    "glass": [(162, 190, 212), (200, 212, 222), (122, 142, 152), (180, 200, 215)],
    "tile": [(210, 205, 195), (180, 180, 182), (150, 145, 140), (225, 220, 212)],
}
# fmt: on


def pick(rng: np.random.Generator, *palettes: str) -> np.ndarray:
    """A colour from the union of the named palettes, with brightness and tint jitter."""
    options = [c for p in palettes for c in PALETTES[p]]
    base = np.asarray(options[int(rng.integers(len(options)))], np.float64)
    return np.clip(base * rng.uniform(0.88, 1.12) + rng.normal(0.0, 6.0, 3), 0, 255)


@dataclasses.dataclass
class Item:
    """Objects in a shared local frame plus their footprint (w along x, d along y) and height."""

    objs: list[Obj]
    w: float
    d: float
    h: float


def _legs(
    x0: float, x1: float, y0: float, y1: float, h: float, t: float, S: float, round_: bool, z0: float = 0.0
):
    """Four legs at the corners of [x0,x1]x[y0,y1] (leg centres), height h, thickness t."""
    parts = []
    for x in (x0, x1):
        for y in (y0, y1):
            if round_:
                parts.append(cylinder((x, y, z0), t / 2, h, S, caps=(False, False)))
            else:
                parts.append(
                    box(
                        (x - t / 2, y - t / 2, z0), (x + t / 2, y + t / 2, z0 + h), S, bottom=False, top=False
                    )
                )
    return merge(*parts)


# ------------------------------------------------------------------------------------------ seating
def make_chair(rng: np.random.Generator, S: float, kind: str = "chair") -> Item:
    """A chair (legs, seat, back), an office chair (star base, pole) or an upholstered armchair."""
    if kind == "armchair":
        w, d = rng.uniform(0.7, 0.9), rng.uniform(0.7, 0.85)
        c = pick(rng, "fabric", "dark", "white")
        o = Obj("armchair")
        arm = rng.uniform(0.12, 0.18)
        o.add(box((-w / 2, 0, 0.1), (w / 2, d, 0.4), S, bottom=False), c)
        o.add(
            _legs(-w / 2 + 0.05, w / 2 - 0.05, 0.05, d - 0.05, 0.1, 0.04, S, bool(rng.random() < 0.5)),
            pick(rng, "wood", "dark", "metal"),
        )
        back_h = rng.uniform(0.8, 0.98)
        o.add(box((-w / 2, 0, 0.4), (w / 2, rng.uniform(0.15, 0.22), back_h), S, bottom=False), c)
        arm_h = rng.uniform(0.55, 0.65)
        for sx in (-1, 1):
            x0 = -w / 2 if sx < 0 else w / 2 - arm
            o.add(box((x0, 0.1, 0.4), (x0 + arm, d, arm_h), S, bottom=False), c)
        o.add(
            box((-w / 2 + arm, 0.2, 0.4), (w / 2 - arm, d - 0.02, 0.47), S, bottom=False),
            np.clip(c * rng.uniform(0.9, 1.1), 0, 255),
        )
        return Item([o], w, d, back_h)
    if kind == "office chair":
        w, d = rng.uniform(0.45, 0.52), rng.uniform(0.45, 0.5)
        sh = rng.uniform(0.45, 0.52)
        o = Obj("office chair")
        frame = pick(rng, "dark", "metal")
        cy = d / 2 + 0.02
        spokes = []
        for k in range(5):
            a = rng.uniform(0, 0.3) + 2 * np.pi * k / 5
            tip = np.array([np.cos(a), np.sin(a)]) * 0.3
            L = np.linalg.norm(tip)
            v, t = box((0, -0.02, 0.05), (L, 0.02, 0.09), S, bottom=False)
            ca, sa = np.cos(a), np.sin(a)
            v = v @ np.array([[ca, sa, 0], [-sa, ca, 0], [0, 0, 1.0]]) + [0, cy, 0]
            spokes.append((v, t))
            spokes.append(cylinder((tip[0], cy + tip[1], 0.0), 0.025, 0.05, S))
        o.add(merge(*spokes), frame)
        o.add(cylinder((0, cy, 0.09), 0.025, sh - 0.16, S, caps=(False, False)), frame)
        seat = pick(rng, "fabric", "dark")
        o.add(box((-w / 2, 0.02, sh - 0.08), (w / 2, d + 0.02, sh), S), seat)
        bh = rng.uniform(0.45, 0.65)
        o.add(box((-w / 2 + 0.02, 0.0, sh + 0.08), (w / 2 - 0.02, 0.07, sh + bh), S), seat)
        o.add(box((-0.03, 0.0, sh - 0.02), (0.03, 0.03, sh + 0.1), S, bottom=False, top=False), frame)
        if rng.random() < 0.6:
            for sx in (-1, 1):
                x = sx * (w / 2 + 0.02)
                o.add(box((x - 0.025, 0.12, sh + 0.18), (x + 0.025, d - 0.05, sh + 0.22), S), frame)
                o.add(
                    box(
                        (x - 0.015, d / 2 - 0.02, sh),
                        (x + 0.015, d / 2 + 0.02, sh + 0.18),
                        S,
                        top=False,
                        bottom=False,
                    ),
                    frame,
                )
        return Item([o], max(w + 0.1, 0.6), max(d + 0.1, 0.6), sh + bh)
    w, d = rng.uniform(0.4, 0.5), rng.uniform(0.4, 0.5)
    sh, st = rng.uniform(0.42, 0.48), rng.uniform(0.03, 0.07)
    c = pick(rng, "wood", "dark", "white", "metal")
    seat_c = c if rng.random() < 0.5 else pick(rng, "fabric", "dark", "wood")
    o = Obj("chair")
    lt = rng.uniform(0.025, 0.045)
    o.add(_legs(-w / 2 + lt, w / 2 - lt, lt, d - lt, sh - st, lt, S, bool(rng.random() < 0.4)), c)
    o.add(box((-w / 2, 0, sh - st), (w / 2, d, sh), S), seat_c)
    bh = rng.uniform(0.35, 0.5)
    if rng.random() < 0.5:
        o.add(box((-w / 2, 0, sh), (w / 2, 0.035, sh + bh), S, bottom=False), c)
    else:  # two posts and slats
        for x in (-w / 2 + lt / 2, w / 2 - lt / 2):
            o.add(box((x - lt / 2, 0, sh), (x + lt / 2, lt, sh + bh), S, bottom=False), c)
        for k in range(int(rng.integers(2, 4))):
            z = sh + bh * (0.45 + 0.5 * k / 3)
            o.add(box((-w / 2, 0, z - 0.03), (w / 2, 0.025, z + 0.03), S), c)
    return Item([o], w, d, sh + bh)


def make_sofa(rng: np.random.Generator, S: float) -> Item:
    """A couch: base on short legs, seat cushions, back, two arms, sometimes pillows."""
    w, d = rng.uniform(1.5, 2.4), rng.uniform(0.8, 1.0)
    c = pick(rng, "fabric", "dark", "white")
    o = Obj("couch")
    arm = rng.uniform(0.12, 0.22)
    base_z = rng.uniform(0.06, 0.14)
    o.add(
        _legs(-w / 2 + 0.06, w / 2 - 0.06, 0.06, d - 0.06, base_z, 0.04, S, bool(rng.random() < 0.5)),
        pick(rng, "wood", "dark", "metal"),
    )
    o.add(box((-w / 2, 0, base_z), (w / 2, d, 0.38), S), c)
    back_d = rng.uniform(0.18, 0.25)
    back_h = rng.uniform(0.72, 0.92)
    o.add(box((-w / 2, 0, 0.38), (w / 2, back_d, back_h), S, bottom=False), c)
    arm_h = rng.uniform(0.52, 0.65)
    for sx in (-1, 1):
        x0 = -w / 2 if sx < 0 else w / 2 - arm
        o.add(box((x0, back_d, 0.38), (x0 + arm, d, arm_h), S, bottom=False), c)
    n = int(rng.integers(2, 4))
    cw = (w - 2 * arm) / n
    cc = np.clip(c * rng.uniform(0.9, 1.1), 0, 255)
    for k in range(n):
        x0 = -w / 2 + arm + k * cw
        o.add(
            box(
                (x0 + 0.01, back_d, 0.38), (x0 + cw - 0.01, d - 0.01, rng.uniform(0.45, 0.5)), S, bottom=False
            ),
            cc,
        )
    objs = [o]
    for _ in range(int(rng.integers(0, 3))):
        p = Obj("pillow")
        x = rng.uniform(-w / 2 + arm + 0.25, w / 2 - arm - 0.25)
        p.add(box((x - 0.22, back_d, 0.47), (x + 0.22, back_d + 0.12, 0.85), S), pick(rng, "fabric", "white"))
        objs.append(p)
    return Item(objs, w, d, back_h)


def make_bed(rng: np.random.Generator, S: float) -> Item:
    """Bed frame, mattress, headboard (and sometimes footboard), pillows (separate objects)."""
    w = float(rng.choice([0.95, 1.4, 1.6, 1.8])) + rng.uniform(-0.05, 0.05)
    L = rng.uniform(1.95, 2.2)
    fh, mh = rng.uniform(0.2, 0.35), rng.uniform(0.18, 0.28)
    frame, matt = pick(rng, "wood", "white", "dark"), pick(rng, "white", "fabric")
    o = Obj("bed")
    o.add(box((-w / 2, 0.05, 0), (w / 2, L, fh), S, bottom=False), frame)
    o.add(box((-w / 2 + 0.02, 0.07, fh), (w / 2 - 0.02, L - 0.02, fh + mh), S, bottom=False), matt)
    hb = rng.uniform(0.8, 1.25)
    o.add(box((-w / 2 - 0.02, 0, 0), (w / 2 + 0.02, 0.06, hb), S, bottom=False), frame)
    if rng.random() < 0.35:
        o.add(
            box(
                (-w / 2 - 0.02, L, 0),
                (w / 2 + 0.02, L + 0.05, fh + mh + rng.uniform(0.1, 0.25)),
                S,
                bottom=False,
            ),
            frame,
        )
    if rng.random() < 0.6:  # blanket over the lower part, part of the bed as in most annotations
        o.add(
            box(
                (-w / 2 - 0.01, L * rng.uniform(0.35, 0.5), fh + mh),
                (w / 2 + 0.01, L, fh + mh + 0.04),
                S,
                bottom=False,
            ),
            pick(rng, "fabric", "white"),
        )
    objs = [o]
    n = 1 if w < 1.2 else 2
    for k in range(n):
        p = Obj("pillow")
        pw = min(0.6, (w - 0.1) / n)
        x = -w / 2 + 0.05 + (k + 0.5) * (w - 0.1) / n
        p.add(
            box(
                (x - pw / 2 + 0.02, 0.1, fh + mh),
                (x + pw / 2 - 0.02, 0.45, fh + mh + rng.uniform(0.1, 0.16)),
                S,
                bottom=False,
            ),
            pick(rng, "white", "fabric"),
        )
        objs.append(p)
    return Item(objs, w + 0.04, L + 0.05, hb)


# ------------------------------------------------------------------------------------------- tables
def make_table(rng: np.random.Generator, S: float, kind: str = "table") -> Item:
    """Rectangular or round table on legs / a pedestal; coffee and end tables are low."""
    low = kind in ("coffee table", "end table")
    h = rng.uniform(0.4, 0.5) if low else rng.uniform(0.71, 0.77)
    t = rng.uniform(0.025, 0.05)
    top_c = pick(rng, "wood", "white", "dark", "glass" if low else "wood")
    leg_c = top_c if rng.random() < 0.5 else pick(rng, "metal", "dark", "wood")
    o = Obj(kind)
    if kind == "end table":
        w = d = rng.uniform(0.4, 0.6)
    elif low:
        w, d = rng.uniform(0.8, 1.3), rng.uniform(0.5, 0.7)
    else:
        w, d = rng.uniform(0.8, 1.8), rng.uniform(0.7, 1.0)
    if not low and rng.random() < 0.25:  # round table on a pedestal
        r = rng.uniform(0.4, 0.6)
        o.add(cylinder((0, r, h - t), r, t, S), top_c)
        o.add(cylinder((0, r, 0.03), 0.05, h - t - 0.03, S, caps=(False, False)), leg_c)
        o.add(cylinder((0, r, 0), 0.25, 0.03, S, caps=(False, True)), leg_c)
        return Item([o], 2 * r, 2 * r, h)
    o.add(box((-w / 2, 0, h - t), (w / 2, d, h), S), top_c)
    lt = rng.uniform(0.035, 0.06)
    inset = rng.uniform(0.03, 0.08)
    if rng.random() < 0.2 and not low:  # trestle: two side panels
        for sx in (-1, 1):
            x = sx * (w / 2 - inset)
            o.add(
                box((x - lt / 2, 0.08, 0), (x + lt / 2, d - 0.08, h - t), S, bottom=False, top=False), leg_c
            )
    else:
        o.add(
            _legs(-w / 2 + inset, w / 2 - inset, inset, d - inset, h - t, lt, S, bool(rng.random() < 0.4)),
            leg_c,
        )
    if low and rng.random() < 0.5:  # lower shelf
        o.add(box((-w / 2 + inset, inset, 0.1), (w / 2 - inset, d - inset, 0.12), S), top_c)
    return Item([o], w, d, h)


def make_desk(rng: np.random.Generator, S: float) -> Item:
    """Desk: top on side panels or a drawer pedestal, modesty panel; often a monitor and keyboard."""
    w, d, h = rng.uniform(1.0, 1.6), rng.uniform(0.6, 0.8), rng.uniform(0.72, 0.77)
    t = rng.uniform(0.025, 0.04)
    c = pick(rng, "wood", "white", "dark")
    o = Obj("desk")
    o.add(box((-w / 2, 0, h - t), (w / 2, d, h), S), c)
    pt = 0.025
    if rng.random() < 0.5:
        for sx in (-1, 1):
            x = sx * (w / 2 - pt / 2)
            o.add(box((x - pt / 2, 0.0, 0), (x + pt / 2, d, h - t), S, bottom=False, top=False), c)
    else:
        pw = rng.uniform(0.35, 0.45)
        sx = float(rng.choice([-1.0, 1.0]))
        x0 = w / 2 - pw if sx > 0 else -w / 2
        o.add(box((x0, 0.0, 0), (x0 + pw, d - 0.02, h - t), S, bottom=False), c)
        for k in range(3):
            z = 0.05 + k * (h - t - 0.05) / 3
            o.add(
                box(
                    (x0 + 0.02, d - 0.02, z + 0.01),
                    (x0 + pw - 0.02, d - 0.005, z + (h - t - 0.05) / 3 - 0.01),
                    S,
                    bottom=False,
                    top=False,
                ),
                np.clip(c * 0.95, 0, 255),
            )
        xo = -w / 2 + pt / 2 if sx > 0 else w / 2 - pt / 2
        o.add(box((xo - pt / 2, 0.0, 0), (xo + pt / 2, d, h - t), S, bottom=False, top=False), c)
    o.add(box((-w / 2 + pt, 0.02, 0.3), (w / 2 - pt, 0.04, h - t), S, bottom=False, top=False), c)
    objs = [o]
    if rng.random() < 0.7:
        m = Obj("monitor")
        mw, mh = rng.uniform(0.45, 0.65), rng.uniform(0.28, 0.4)
        dark = pick(rng, "dark")
        m.add(box((-mw / 2, 0.12, h + 0.12), (mw / 2, 0.15, h + 0.12 + mh), S), dark)
        m.add(box((-0.03, 0.15, h), (0.03, 0.18, h + 0.14), S, bottom=False), dark)
        m.add(box((-0.1, 0.1, h), (0.1, 0.25, h + 0.01), S, bottom=False), dark)
        objs.append(m)
        if rng.random() < 0.7:
            k = Obj("keyboard")
            k.add(box((-0.22, 0.32, h), (0.22, 0.47, h + 0.025), S, bottom=False), pick(rng, "dark", "white"))
            objs.append(k)
    return Item(objs, w, d, h)


# ---------------------------------------------------------------------------------------- storage
def make_cabinet(
    rng: np.random.Generator,
    S: float,
    kind: str = "cabinet",
    w: float | None = None,
    d: float | None = None,
    h: float | None = None,
    color=None,
    z0: float = 0.0,
) -> Item:
    """Cabinet body with door or drawer fronts and handles (file cabinets: drawers only)."""
    tall = rng.random() < 0.4
    w = w if w is not None else rng.uniform(0.4, 1.2)
    d = d if d is not None else rng.uniform(0.35, 0.6)
    h = h if h is not None else (rng.uniform(1.6, 2.1) if tall else rng.uniform(0.6, 1.1))
    c = color if color is not None else pick(rng, "wood", "white", "dark", "paint")
    o = Obj(kind)
    o.add(box((-w / 2, 0, z0), (w / 2, d, z0 + h), S, bottom=z0 > 0), c)
    handle = pick(rng, "metal", "dark")
    ft, gap = 0.018, 0.004
    fc = np.clip(c * rng.uniform(0.93, 1.05), 0, 255)
    if kind == "file cabinet" or (rng.random() < 0.25 and h < 1.2):
        n = max(2, round(h / 0.3))
        for k in range(n):
            za, zb = z0 + k * h / n + gap, z0 + (k + 1) * h / n - gap
            o.add(box((-w / 2 + gap, d, za), (w / 2 - gap, d + ft, zb), S, bottom=False, top=False), fc)
            zm = 0.5 * (za + zb)
            o.add(box((-0.06, d + ft, zm - 0.01), (0.06, d + ft + 0.025, zm + 0.01), S, bottom=False), handle)
    else:
        n = 1 if w < 0.6 else 2
        for k in range(n):
            xa = -w / 2 + k * w / n + gap
            xb = -w / 2 + (k + 1) * w / n - gap
            o.add(box((xa, d, z0 + gap), (xb, d + ft, z0 + h - gap), S, bottom=False, top=False), fc)
            hx = xb - 0.05 if (k == 0 and n == 2) or n == 1 else xa + 0.05
            hz = z0 + (h * 0.55 if z0 == 0 and h > 1.2 else (h - 0.12 if z0 == 0 else 0.1))
            o.add(
                box((hx - 0.01, d + ft, hz - 0.08), (hx + 0.01, d + ft + 0.025, hz + 0.08), S, bottom=False),
                handle,
            )
    return Item([o], w, d + ft + 0.025, z0 + h)


def make_bookshelf(rng: np.random.Generator, S: float) -> Item:
    """Open shelving: sides, top, bottom, back, 3-6 shelves, rows of books (label 'book')."""
    w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.25, 0.4), rng.uniform(1.1, 2.2)
    t = rng.uniform(0.018, 0.03)
    c = pick(rng, "wood", "white", "dark")
    o = Obj("bookshelf")
    o.add(box((-w / 2, 0, 0), (-w / 2 + t, d, h), S, bottom=False), c)
    o.add(box((w / 2 - t, 0, 0), (w / 2, d, h), S, bottom=False), c)
    o.add(rect((-w / 2 + t, 0.005, 0), (w - 2 * t, 0, 0), (0, 0, h), S, flip=True), c)  # back, facing +y
    n = int(rng.integers(3, 7))
    levels = np.linspace(0.05, h - t, n + 1)
    for z in levels:
        o.add(box((-w / 2 + t, 0.005, z), (w / 2 - t, d, z + t), S, bottom=z > 0.05), c)
    objs = [o]
    for z0, z1 in zip(levels[:-1], levels[1:]):
        if rng.random() < 0.3:
            continue
        b = Obj("book")
        x = -w / 2 + t + rng.uniform(0.0, 0.1)
        x_end = w / 2 - t - rng.uniform(0.0, 0.3)
        gap = z1 - z0 - t
        while x < x_end - 0.02:
            bw = rng.uniform(0.015, 0.05)
            bh = min(gap - 0.02, rng.uniform(0.15, 0.3))
            bd = min(d - 0.02, rng.uniform(0.14, 0.24))
            if bh > 0.05:
                b.add(
                    box((x, 0.01, z0 + t), (x + bw, 0.01 + bd, z0 + t + bh), S, bottom=False),
                    pick(rng, "fabric", "white", "dark", "wood"),
                )
            x += bw + (0.0 if rng.random() < 0.85 else rng.uniform(0.05, 0.2))
        if b.parts:
            objs.append(b)
    return Item(objs, w, d, h)


def make_refrigerator(rng: np.random.Generator, S: float) -> Item:
    """Tall box with two door panels (stacked or side by side) and long handles."""
    w, d, h = rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.75), rng.uniform(1.5, 1.95)
    c = pick(rng, "white", "metal", "dark")
    o = Obj("refrigerator")
    o.add(box((-w / 2, 0, 0), (w / 2, d, h), S, bottom=False), c)
    handle = pick(rng, "metal", "dark")
    ft = 0.03
    if w > 0.8 and rng.random() < 0.5:
        for sx in (-1, 1):
            xa, xb = (-w / 2 + 0.005, -0.004) if sx < 0 else (0.004, w / 2 - 0.005)
            o.add(box((xa, d, 0.05), (xb, d + ft, h - 0.01), S, bottom=False, top=False), c)
            hx = -0.04 if sx < 0 else 0.04
            o.add(box((hx - 0.012, d + ft, 0.7), (hx + 0.012, d + ft + 0.04, 1.3), S), handle)
    else:
        split = h * rng.uniform(0.28, 0.38)
        for za, zb in ((0.05, h - split - 0.004), (h - split + 0.004, h - 0.01)):
            o.add(box((-w / 2 + 0.005, d, za), (w / 2 - 0.005, d + ft, zb), S, bottom=False, top=False), c)
        hx = w / 2 - 0.06
        o.add(
            box((hx - 0.012, d + ft, h - split - 0.35), (hx + 0.012, d + ft + 0.04, h - split - 0.05), S),
            handle,
        )
        o.add(
            box((hx - 0.012, d + ft, h - split + 0.05), (hx + 0.012, d + ft + 0.04, h - split + 0.3), S),
            handle,
        )
    return Item([o], w, d + ft + 0.04, h)


# ------------------------------------------------------------------------------------- bathroom
def make_toilet(rng: np.random.Generator, S: float) -> Item:
    """Tank, pedestal, elliptic bowl with seat and (sometimes raised) lid."""
    c = pick(rng, "white", "white", "tile")
    o = Obj("toilet")
    tw, td = rng.uniform(0.36, 0.48), rng.uniform(0.16, 0.22)
    th = rng.uniform(0.75, 0.85)
    o.add(box((-tw / 2, 0.0, 0.38), (tw / 2, td, th), S), c)
    r = rng.uniform(0.17, 0.2)
    cy = td + r * 1.25
    o.add(cylinder((0, cy - 0.03, 0), r * 0.6, 0.3, S, scale_y=1.3, caps=(False, False)), c)
    o.add(basin((-r, cy - 1.25 * r, 0.3), (r, cy + 1.25 * r, 0.4), 0.03, 0.05, S), c)
    o.add(box((-0.08, td - 0.02, 0.3), (0.08, cy, 0.4), S, bottom=False), c)
    seat = c if rng.random() < 0.7 else pick(rng, "wood", "dark")
    o.add(cylinder((0, cy, 0.4), r, 0.02, S, scale_y=1.25, caps=(False, True)), seat)
    if rng.random() < 0.4:
        o.add(box((-r, td + 0.01, 0.42), (r, td + 0.04, 0.42 + 2.2 * r), S), seat)
    return Item([o], max(tw, 2 * r), cy + 1.25 * r, th)


def make_bathtub(rng: np.random.Generator, S: float) -> Item:
    """Tub (hollow box) with a shower curtain on a rod along its open side."""
    L, W, h = rng.uniform(1.5, 1.8), rng.uniform(0.7, 0.82), rng.uniform(0.5, 0.6)
    o = Obj("bathtub")
    o.add(
        basin((-L / 2, 0, 0), (L / 2, W, h), rng.uniform(0.06, 0.1), 0.06, S),
        pick(rng, "white", "white", "tile"),
    )
    objs = [o]
    if rng.random() < 0.85:
        sc = Obj("shower curtain")
        frac = rng.uniform(0.3, 1.0)
        top = rng.uniform(1.9, 2.05)
        y = W - 0.03
        start = -L / 2 if rng.random() < 0.5 else L / 2 - frac * L
        z0 = rng.uniform(0.35, h + 0.1)
        sc.add(
            wavy_sheet(
                (start, y, z0),
                (frac * L, 0, 0),
                (0, 0, top - z0),
                S,
                0.04,
                rng.uniform(0.18, 0.3),
                rng.uniform(0, 6.28),
            ),
            pick(rng, "white", "fabric", "paint"),
        )
        sc.add(cylinder((-L / 2, y, top + 0.02), 0.012, L, S, axis=(1, 0, 0)), pick(rng, "metal"))
        objs.append(sc)
    return Item(objs, L, W, h if len(objs) == 1 else 2.05)


def make_sink(rng: np.random.Generator, S: float) -> Item:
    """Pedestal sink: column and a basin with a faucet."""
    c = pick(rng, "white", "white", "metal")
    o = Obj("sink")
    w, d = rng.uniform(0.45, 0.6), rng.uniform(0.38, 0.48)
    top = rng.uniform(0.8, 0.9)
    o.add(cylinder((0, d * 0.4, 0), rng.uniform(0.08, 0.12), top - 0.15, S, caps=(False, False)), c)
    o.add(box((-w / 2, 0, top - 0.15), (w / 2, d, top - 0.14), S, top=False), c)
    o.add(basin((-w / 2, 0, top - 0.15), (w / 2, d, top), 0.04, 0.04, S), c)
    o.add(_faucet(0.0, 0.06, top, S), pick(rng, "metal"))
    return Item([o], w, d, top + 0.25)


def _faucet(x: float, y: float, z: float, S: float):
    return merge(
        cylinder((x, y, z), 0.015, 0.2, S), cylinder((x, y, z + 0.18), 0.012, 0.14, S, axis=(0, 1, 0))
    )


def make_counter_run(
    rng: np.random.Generator, S: float, length: float, sink: bool, upper: bool, bathroom: bool = False
) -> Item:
    """Kitchen/bathroom counter: base cabinets, counter top (with an inset sink), wall cabinets."""
    d = rng.uniform(0.5, 0.56) if bathroom else rng.uniform(0.58, 0.65)
    h = rng.uniform(0.82, 0.88) if bathroom else rng.uniform(0.88, 0.94)
    t = rng.uniform(0.03, 0.05)
    cab_c = pick(rng, "wood", "white", "dark", "paint")
    top_c = pick(rng, "white", "dark", "wood", "tile", "metal")
    objs = []
    n = max(1, round(length / rng.uniform(0.45, 0.8)))
    cw = length / n
    cab_kind = "cabinet" if bathroom else "kitchen cabinet"
    for k in range(n):
        it = make_cabinet(rng, S, cab_kind, w=cw - 0.004, d=d - 0.05, h=h - t - 0.08, color=cab_c)
        for o in it.objs:
            for p in o.parts:
                p.verts[:, 0] += -length / 2 + (k + 0.5) * cw
                p.verts[:, 2] += 0.08
            o.add(
                box(
                    (-length / 2 + k * cw, 0, 0),
                    (-length / 2 + (k + 1) * cw, d - 0.08, 0.08),
                    S,
                    bottom=False,
                    top=False,
                ),
                np.clip(cab_c * 0.8, 0, 255),
            )
        objs += it.objs
    counter = Obj("counter" if bathroom or rng.random() < 0.5 else "kitchen counter")
    holes = None
    sink_obj = None
    if sink:
        sw, sd = (
            (rng.uniform(0.4, 0.5), rng.uniform(0.3, 0.38))
            if bathroom
            else (rng.uniform(0.5, 0.8), rng.uniform(0.38, 0.45))
        )
        sx = rng.uniform(-length / 2 + sw / 2 + 0.1, length / 2 - sw / 2 - 0.1) if length > sw + 0.3 else 0.0
        sy = 0.08 + (d - 0.08 - sd) / 2
        holes = [(sx - sw / 2 + length / 2, sx + sw / 2 + length / 2, sy, sy + sd)]
        sink_obj = Obj("sink")
        sink_obj.add(
            basin(
                (sx - sw / 2, sy, h - rng.uniform(0.16, 0.22)),
                (sx + sw / 2, sy + sd, h),
                0.0,
                0.0,
                S,
                rim=False,
                outer=False,
            ),
            pick(rng, "metal", "white"),
        )
        sink_obj.add(_faucet(sx, 0.05, h, S), pick(rng, "metal"))
    counter.add(box((-length / 2, 0, h - t), (length / 2, d + 0.02, h), S, top_holes=holes), top_c)
    objs.append(counter)
    if sink_obj is not None:
        objs.append(sink_obj)
    top_h = h
    if upper:
        ud, z0 = rng.uniform(0.3, 0.36), rng.uniform(1.4, 1.55)
        uh = rng.uniform(0.6, 0.75)
        m = max(1, round(length / rng.uniform(0.5, 0.8)))
        uw = length / m
        for k in range(m):
            it = make_cabinet(rng, S, cab_kind, w=uw - 0.004, d=ud, h=uh, color=cab_c, z0=z0)
            for o in it.objs:
                for p in o.parts:
                    p.verts[:, 0] += -length / 2 + (k + 0.5) * uw
            objs += it.objs
        top_h = z0 + uh
    return Item(objs, length, d + 0.02, top_h)


# -------------------------------------------------------------------------------- other furniture
def make_otherfurniture(rng: np.random.Generator, S: float, kind: str | None = None) -> Item:
    """Ottoman, bench, trash can or tv stand (with a tv on it): nyu40 'otherfurniture'."""
    kind = kind or str(rng.choice(["ottoman", "bench", "trash can", "tv stand"]))
    o = Obj(kind)
    if kind == "ottoman":
        c = pick(rng, "fabric", "dark", "white")
        if rng.random() < 0.5:
            r, h = rng.uniform(0.22, 0.3), rng.uniform(0.38, 0.45)
            o.add(cylinder((0, r, 0), r, h, S, caps=(False, True)), c)
            return Item([o], 2 * r, 2 * r, h)
        w, d, h = rng.uniform(0.45, 0.8), rng.uniform(0.45, 0.6), rng.uniform(0.38, 0.45)
        o.add(box((-w / 2, 0, 0.05), (w / 2, d, h), S), c)
        o.add(
            _legs(-w / 2 + 0.04, w / 2 - 0.04, 0.04, d - 0.04, 0.05, 0.03, S, True), pick(rng, "wood", "dark")
        )
        return Item([o], w, d, h)
    if kind == "bench":
        w, d, h = rng.uniform(1.0, 1.6), rng.uniform(0.3, 0.42), rng.uniform(0.42, 0.48)
        c = pick(rng, "wood", "dark", "white", "metal")
        o.add(box((-w / 2, 0, h - 0.04), (w / 2, d, h), S), c)
        for sx in (-1, 1):
            x = sx * (w / 2 - 0.08)
            o.add(box((x - 0.02, 0.02, 0), (x + 0.02, d - 0.02, h - 0.04), S, bottom=False, top=False), c)
        return Item([o], w, d, h)
    if kind == "trash can":
        c = pick(rng, "metal", "dark", "white", "fabric")
        if rng.random() < 0.6:
            r, h = rng.uniform(0.12, 0.2), rng.uniform(0.3, 0.6)
            o.add(cylinder((0, r, 0), r, h, S, caps=(False, False)), c)
            o.add(
                cylinder((0, r, 0.02), r - 0.01, h - 0.04, S, caps=(True, False), inward=True),
                np.clip(c * 0.6, 0, 255),
            )
            return Item([o], 2 * r, 2 * r, h)
        w, d, h = rng.uniform(0.25, 0.4), rng.uniform(0.2, 0.3), rng.uniform(0.35, 0.6)
        o.add(basin((-w / 2, 0, 0), (w / 2, d, h), 0.01, 0.03, S), c)
        return Item([o], w, d, h)
    # tv stand with a tv
    w, d, h = rng.uniform(1.0, 1.8), rng.uniform(0.35, 0.5), rng.uniform(0.4, 0.6)
    c = pick(rng, "wood", "dark", "white")
    o.add(box((-w / 2, 0, 0.04), (w / 2, d, h), S), c)
    o.add(box((-w / 2 + 0.05, 0, 0), (w / 2 - 0.05, d - 0.03, 0.04), S, bottom=False, top=False), c)
    o.add(
        rect((-w / 2 + 0.03, d + 0.001, 0.08), (w * 0.45, 0, 0), (0, 0, h - 0.14), S),
        np.clip(c * 0.7, 0, 255),
    )
    tv = Obj("tv")
    tw = min(w - 0.1, rng.uniform(0.9, 1.4))
    th = tw * 0.58
    dark = pick(rng, "dark")
    tv.add(box((-tw / 2, d / 2 - 0.03, h + 0.1), (tw / 2, d / 2 + 0.02, h + 0.1 + th), S), dark)
    tv.add(box((-0.04, d / 2 - 0.02, h), (0.04, d / 2 + 0.01, h + 0.12), S, bottom=False), dark)
    tv.add(box((-0.2, d / 2 - 0.1, h), (0.2, d / 2 + 0.1, h + 0.015), S, bottom=False), dark)
    return Item([o, tv], w, d, h + 0.1 + th)


def make_nightstand(rng: np.random.Generator, S: float) -> Item:
    """Small drawer cabinet (nyu40 'night stand', not one of the 20 classes)."""
    w, d, h = rng.uniform(0.4, 0.55), rng.uniform(0.35, 0.45), rng.uniform(0.45, 0.65)
    it = make_cabinet(rng, S, "nightstand", w=w, d=d, h=h)
    return it


def make_lamp(rng: np.random.Generator, S: float) -> Item:
    """Floor lamp: base, pole, shade (not one of the 20 classes)."""
    o = Obj("lamp")
    h = rng.uniform(1.3, 1.7)
    c = pick(rng, "metal", "dark", "white")
    o.add(cylinder((0, 0.17, 0), 0.14, 0.03, S, caps=(False, True)), c)
    o.add(cylinder((0, 0.17, 0.03), 0.012, h - 0.25, S, caps=(False, False)), c)
    o.add(
        cylinder((0, 0.17, h - 0.3), rng.uniform(0.15, 0.22), 0.3, S, caps=(False, False)),
        pick(rng, "white", "fabric", "paint"),
    )
    return Item([o], 0.34, 0.34, h)


def make_box(rng: np.random.Generator, S: float) -> Item:
    """A cardboard/storage box on the floor (nyu40 'box')."""
    o = Obj("box")
    w, d, h = rng.uniform(0.25, 0.6), rng.uniform(0.25, 0.5), rng.uniform(0.2, 0.5)
    o.add(box((-w / 2, 0, 0), (w / 2, d, h), S, bottom=False), pick(rng, "wood", "white", "fabric"))
    return Item([o], w, d, h)
