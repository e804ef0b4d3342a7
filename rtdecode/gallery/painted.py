"""The painter of the built-in images: one scene of a kind, drawn from a random generator.

A scene kind (landscape, seascape, city, still life, flower, face, house, night, forest, desert) has
its own palette, layout and objects, painted with anti-aliased shapes and soft texture. They are
cartoons, not photographs, but they differ in colour, layout and content enough that a person can
tell by eye whether a reconstruction resembles its stimulus, which is what the demo and the reports
need. :mod:`rtdecode.gallery.builtin` names them and fixes each one's seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

KINDS = ("landscape", "seascape", "city", "still_life", "flower", "face", "house", "night", "forest", "desert")
SUPERSAMPLE = 2


class Canvas:
    """A float RGB canvas with anti-aliasing by supersampling; coordinates are in [0, 1]."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.n = size * SUPERSAMPLE
        self.size = size
        self.rng = rng
        self.px = np.zeros((self.n, self.n, 3), np.float32)
        self.y, self.x = np.mgrid[0:self.n, 0:self.n].astype(np.float32) / self.n

    def fill(self, region, colour, alpha: float = 1.0) -> None:
        """Paint ``region``: a full-size mask, or a (window, mask) pair from the shape helpers."""
        window, mask = region if isinstance(region, tuple) else ((slice(None), slice(None)), region)
        a = (mask.astype(np.float32) * alpha)[..., None]
        self.px[window] = self.px[window] * (1 - a) + np.asarray(colour, np.float32) * a

    def vgradient(self, top, bottom, y0: float = 0.0, y1: float = 1.0) -> None:
        t = np.clip((self.y - y0) / max(y1 - y0, 1e-6), 0, 1)[..., None]
        band = (self.y >= y0) & (self.y < y1)
        grad = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
        self.px = np.where(band[..., None], grad, self.px)

    def _window(self, x0, y0, x1, y1):
        """Pixel window covering [x0, x1] x [y0, y1] (shapes are evaluated only there: speed)."""
        i0, i1 = max(int(y0 * self.n) - 1, 0), min(int(np.ceil(y1 * self.n)) + 1, self.n)
        j0, j1 = max(int(x0 * self.n) - 1, 0), min(int(np.ceil(x1 * self.n)) + 1, self.n)
        w = (slice(i0, max(i1, i0)), slice(j0, max(j1, j0)))
        return w, self.x[w], self.y[w]

    def disk(self, cx, cy, r):
        w, x, y = self._window(cx - r, cy - r, cx + r, cy + r)
        return w, (x - cx) ** 2 + (y - cy) ** 2 <= r * r

    def ellipse(self, cx, cy, rx, ry, angle: float = 0.0):
        m = max(rx, ry)
        w, x, y = self._window(cx - m, cy - m, cx + m, cy + m)
        c, s = np.cos(angle), np.sin(angle)
        u, v = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
        return w, (u / rx) ** 2 + (v / ry) ** 2 <= 1

    def rect(self, x0, y0, x1, y1):
        w, x, y = self._window(x0, y0, x1, y1)
        return w, (x >= x0) & (x < x1) & (y >= y0) & (y < y1)

    def triangle(self, p0, p1, p2):
        xs, ys = (p0[0], p1[0], p2[0]), (p0[1], p1[1], p2[1])
        w, x, y = self._window(min(xs), min(ys), max(xs), max(ys))

        def side(a, b):
            return (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])

        s0, s1, s2 = side(p0, p1), side(p1, p2), side(p2, p0)
        return w, ((s0 >= 0) & (s1 >= 0) & (s2 >= 0)) | ((s0 <= 0) & (s1 <= 0) & (s2 <= 0))

    def ridge(self, base: float, rough: float, smooth: int = 40):
        """The region below a random skyline whose mean height is ``base``."""
        steps = self.rng.normal(0, rough, self.n)
        line = np.convolve(np.cumsum(steps), np.ones(smooth) / smooth, mode="same")
        line = base + line - line.mean()
        return self.y >= line[None, :]

    def texture(self, strength: float, scale: int = 16) -> None:
        """Soft low-frequency shading so flat areas look less like a diagram."""
        coarse = self.rng.normal(0, 1, (scale, scale))
        field = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((self.n, self.n), Image.BICUBIC))
        self.px = self.px * (1 + strength * field[..., None])

    def result(self) -> np.ndarray:
        img = self.px.reshape(self.size, SUPERSAMPLE, self.size, SUPERSAMPLE, 3).mean(axis=(1, 3))
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _jitter(rng: np.random.Generator, colour, amount: float = 0.08) -> np.ndarray:
    return np.clip(np.asarray(colour, float) + rng.normal(0, amount, 3), 0, 1)


SKIES = ("blue", "sunset", "grey", "deep blue")  # _sky's palettes, in order (for captions)


def _sky(c: Canvas, horizon: float) -> str:
    r = c.rng
    palettes = [((0.35, 0.6, 0.95), (0.75, 0.88, 1.0)), ((0.95, 0.55, 0.35), (1.0, 0.85, 0.55)),
                ((0.55, 0.65, 0.8), (0.85, 0.85, 0.88)), ((0.2, 0.35, 0.75), (0.6, 0.75, 0.95))]
    top, bottom = palettes[r.integers(len(palettes))]
    c.vgradient(_jitter(r, top), _jitter(r, bottom), 0.0, horizon + 0.02)
    for _ in range(r.integers(0, 4)):
        cx, cy, w = r.uniform(0, 1), r.uniform(0.05, horizon * 0.7), r.uniform(0.08, 0.2)
        for k in range(4):
            c.fill(c.ellipse(cx + (k - 1.5) * w * 0.5, cy + r.normal(0, 0.01), w * 0.5, w * 0.25), (1, 1, 1), 0.8)
    return SKIES[int(np.flatnonzero([top is p[0] for p in palettes])[0])]


def _tree(c: Canvas, x: float, ground: float, h: float, conifer: bool) -> None:
    r = c.rng
    c.fill(c.rect(x - h * 0.04, ground - h * 0.35, x + h * 0.04, ground), _jitter(r, (0.4, 0.25, 0.12), 0.04))
    green = _jitter(r, (0.15, 0.45, 0.15), 0.08)
    if conifer:
        c.fill(c.triangle((x - h * 0.25, ground - h * 0.25), (x + h * 0.25, ground - h * 0.25), (x, ground - h)), green)
    else:
        c.fill(c.disk(x, ground - h * 0.6, h * 0.3), green)


PETALS = ("pink", "yellow", "purple", "white", "orange")
HAIR = ("dark", "brown", "blond")


def paint(kind: str, rng: np.random.Generator, size: int = 128, facts: dict | None = None) -> np.ndarray:
    """Paint one scene of ``kind`` with random choices drawn from ``rng``. ``facts``, when given, receives
    what was painted (sky, counts, colours: rtdecode.gallery.captions makes a caption of them); recording
    them draws nothing from ``rng``, so an image is the same with or without."""
    c = Canvas(size, rng)
    r = rng
    f = facts if facts is not None else {}
    f["kind"] = kind
    if kind in ("landscape", "forest", "desert"):
        _landscape(c, r, f, kind)
    else:
        _PAINTERS.get(kind, _night)(c, r, f)  # any other kind: a night scene, as before
    c.texture(0.06)
    return c.result()


def _landscape(c: Canvas, r: np.random.Generator, f: dict, kind: str) -> None:
    """A horizon, far ridges and ground; trees (landscape, forest) or cacti (desert); maybe the sun."""
    horizon = r.uniform(0.35, 0.6)
    f["sky"] = _sky(c, horizon)
    f["extra"] = bool(r.random() < 0.6)  # the sun
    if f["extra"]:
        c.fill(c.disk(r.uniform(0.1, 0.9), r.uniform(0.08, horizon * 0.6), r.uniform(0.04, 0.09)), _jitter(r, (1, 0.9, 0.5)))
    far = (0.45, 0.5, 0.65) if kind != "desert" else (0.8, 0.6, 0.45)
    for k in range(r.integers(1, 4)):
        c.fill(c.ridge(horizon - 0.12 + 0.05 * k, 0.004 + 0.004 * r.random()), _jitter(r, np.asarray(far) * (1 - 0.15 * k)))
    ground = {"landscape": (0.35, 0.6, 0.25), "forest": (0.2, 0.4, 0.15), "desert": (0.9, 0.75, 0.45)}[kind]
    c.fill(c.ridge(horizon + 0.05, 0.002), _jitter(r, ground))
    if kind == "desert":
        f["count"] = int(r.integers(0, 3))  # cacti
        for _ in range(f["count"]):
            x = r.uniform(0.1, 0.9)
            c.fill(c.rect(x - 0.02, horizon + 0.05, x + 0.02, horizon + 0.3), _jitter(r, (0.3, 0.55, 0.25)))
    else:
        n = r.integers(1, 4) if kind == "landscape" else r.integers(6, 14)
        f["count"] = int(n)  # trees
        for x in np.sort(r.uniform(0.05, 0.95, n)):
            _tree(c, x, r.uniform(horizon + 0.15, 0.98), r.uniform(0.2, 0.45), bool(r.random() < 0.5))


def _seascape(c: Canvas, r: np.random.Generator, f: dict) -> None:
    """Sky, a sea with waves and a sailing boat; maybe a beach."""
    horizon = r.uniform(0.35, 0.55)
    f["sky"] = _sky(c, horizon)
    sea = _jitter(r, (0.1, 0.35, 0.6))
    c.vgradient(sea, sea * 0.6, horizon, 1.0)
    for k in range(12):
        y = horizon + (k + 1) * (1 - horizon) / 13
        window, _ = c.rect(0, y - 0.02, 1, y + 0.02)
        wave = np.abs(c.y[window] - y - 0.01 * np.sin(c.x[window] * 40 + k)) < 0.004
        c.fill((window, wave), (0.8, 0.9, 1.0), 0.5)
    f["extra"] = bool(r.random() < 0.5)  # a beach
    if f["extra"]:
        c.fill(c.ridge(r.uniform(0.82, 0.92), 0.002), _jitter(r, (0.9, 0.8, 0.55)))
    x, y, s = r.uniform(0.2, 0.8), horizon + r.uniform(0.05, 0.2), r.uniform(0.08, 0.2)
    c.fill(c.rect(x - s, y, x + s, y + s * 0.3), _jitter(r, (0.5, 0.25, 0.15)))
    c.fill(c.triangle((x, y - s * 1.5), (x, y - 0.005), (x + s * 0.9, y - 0.005)), _jitter(r, (0.95, 0.95, 0.9), 0.03))


def _city(c: Canvas, r: np.random.Generator, f: dict) -> None:
    """A row of buildings with lit windows, a road with its centre line."""
    horizon = r.uniform(0.5, 0.75)
    f["sky"] = _sky(c, horizon)
    f["count"] = 0  # buildings
    x = -0.05
    while x < 1.0:
        w, h = r.uniform(0.08, 0.2), r.uniform(0.2, 0.6)
        col = _jitter(r, r.choice([(0.6, 0.6, 0.65), (0.7, 0.55, 0.45), (0.35, 0.4, 0.5), (0.85, 0.8, 0.7)]), 0.05)
        c.fill(c.rect(x, horizon - h, x + w, 1.0), col)
        window, inside = c.rect(x + 0.01, horizon - h + 0.02, x + w - 0.01, horizon)
        lit = inside & ((c.x[window] - x) * 40 % 1 < 0.5) & ((c.y[window] * 30) % 1 < 0.5)
        c.fill((window, lit), _jitter(r, (0.95, 0.9, 0.5), 0.05), 0.8)
        x += w + r.uniform(0.0, 0.04)
        f["count"] += 1
    c.fill(c.rect(0, horizon, 1, 1), (0.25, 0.25, 0.27))
    window, line = c.rect(0, horizon + 0.12, 1, horizon + 0.13)
    c.fill((window, line & ((c.x[window] * 10) % 1 < 0.5)), (0.95, 0.95, 0.8))


def _still_life(c: Canvas, r: np.random.Generator, f: dict) -> None:
    """Fruit on a table before a wall; maybe a vase."""
    wall, table = _jitter(r, (0.75, 0.65, 0.55), 0.15), _jitter(r, (0.45, 0.3, 0.2), 0.08)
    edge = r.uniform(0.55, 0.7)
    c.vgradient(wall, wall * 0.8, 0, edge)
    c.vgradient(table, table * 0.7, edge, 1.0)
    f["extra"] = bool(r.random() < 0.6)  # a vase
    if f["extra"]:
        vx = r.uniform(0.2, 0.8)
        c.fill(c.ellipse(vx, edge - 0.12, 0.1, 0.17), _jitter(r, (0.3, 0.4, 0.7), 0.2))
        c.fill(c.rect(vx - 0.04, edge - 0.4, vx + 0.04, edge - 0.22), _jitter(r, (0.3, 0.4, 0.7), 0.2))
    f["count"] = int(r.integers(1, 5))  # fruit
    for _ in range(f["count"]):
        fx, fr = r.uniform(0.15, 0.85), r.uniform(0.05, 0.11)
        fy = edge + r.uniform(0.0, 0.15)
        col = _jitter(r, r.choice([(0.85, 0.15, 0.1), (0.95, 0.6, 0.1), (0.9, 0.85, 0.2), (0.4, 0.7, 0.2)]), 0.05)
        c.fill(c.disk(fx, fy, fr), col)
        c.fill(c.disk(fx - fr * 0.35, fy - fr * 0.35, fr * 0.25), (1, 1, 1), 0.5)


def _flower(c: Canvas, r: np.random.Generator, f: dict) -> None:
    """One flower of a few petals on a green ground."""
    bg = _jitter(r, (0.4, 0.6, 0.35), 0.15)
    c.vgradient(bg, bg * 0.6)
    cx, cy, R = r.uniform(0.3, 0.7), r.uniform(0.3, 0.55), r.uniform(0.12, 0.25)
    c.fill(c.rect(cx - 0.01, cy, cx + 0.01, 1.0), (0.2, 0.5, 0.15))
    petals = [(0.95, 0.3, 0.5), (0.95, 0.9, 0.2), (0.6, 0.3, 0.9), (1, 1, 1), (0.95, 0.45, 0.1)]
    choice = r.choice(petals)
    f["colour"] = PETALS[[tuple(p) for p in petals].index(tuple(choice))]
    petal = _jitter(r, choice, 0.05)
    n = r.integers(5, 13)
    f["count"] = int(n)  # petals
    for k in range(n):
        a = 2 * np.pi * k / n + r.normal(0, 0.05)
        c.fill(c.ellipse(cx + R * 0.55 * np.cos(a), cy + R * 0.55 * np.sin(a), R * 0.5, R * 0.18, a), petal)
    c.fill(c.disk(cx, cy, R * 0.25), _jitter(r, (0.5, 0.3, 0.05)))


def _face(c: Canvas, r: np.random.Generator, f: dict) -> None:
    """A face with hair, eyes and a smile before a plain ground."""
    bg = _jitter(r, (0.6, 0.7, 0.8), 0.2)
    c.vgradient(bg, bg * 0.7)
    skin = _jitter(r, r.choice([(0.95, 0.8, 0.65), (0.75, 0.55, 0.4), (0.45, 0.3, 0.2)]), 0.04)
    cx, cy, s = r.uniform(0.4, 0.6), r.uniform(0.45, 0.55), r.uniform(0.25, 0.33)
    c.fill(c.rect(cx - s * 0.9, cy + s * 0.8, cx + s * 0.9, 1.0), _jitter(r, (0.3, 0.3, 0.6), 0.2))
    hairs = [(0.1, 0.08, 0.05), (0.5, 0.3, 0.1), (0.85, 0.7, 0.35)]
    choice = r.choice(hairs)
    f["colour"] = HAIR[[tuple(h) for h in hairs].index(tuple(choice))]
    hair = _jitter(r, choice, 0.05)
    c.fill(c.ellipse(cx, cy - s * 0.15, s * 0.82, s * 0.95), hair)
    c.fill(c.ellipse(cx, cy, s * 0.7, s * 0.9), skin)
    for side in (-1, 1):
        c.fill(c.ellipse(cx + side * s * 0.3, cy - s * 0.15, s * 0.12, s * 0.08), (1, 1, 1))
        c.fill(c.disk(cx + side * s * 0.3, cy - s * 0.15, s * 0.05), (0.15, 0.1, 0.05))
    smile = (np.abs((c.y - cy - s * 0.35) + 2.5 * (c.x - cx) ** 2 / s) < s * 0.03) & (np.abs(c.x - cx) < s * 0.3)
    c.fill(smile, (0.6, 0.15, 0.15))


def _house(c: Canvas, r: np.random.Generator, f: dict) -> None:
    """A house with a roof, a door and two windows; maybe a tree."""
    horizon = r.uniform(0.5, 0.65)
    f["sky"] = _sky(c, horizon)
    c.fill(c.rect(0, horizon, 1, 1), _jitter(r, (0.35, 0.6, 0.25)))
    hx, w, h = r.uniform(0.3, 0.7), r.uniform(0.18, 0.3), r.uniform(0.18, 0.28)
    base = horizon + r.uniform(0.1, 0.2)
    c.fill(c.rect(hx - w, base - h, hx + w, base), _jitter(r, (0.9, 0.85, 0.7), 0.12))
    c.fill(c.triangle((hx - w * 1.15, base - h), (hx + w * 1.15, base - h), (hx, base - h - w * 0.8)),
           _jitter(r, (0.6, 0.2, 0.15), 0.08))
    c.fill(c.rect(hx - w * 0.15, base - h * 0.6, hx + w * 0.15, base), _jitter(r, (0.35, 0.2, 0.1)))
    for side in (-1, 1):
        c.fill(c.rect(hx + side * w * 0.6 - 0.04, base - h * 0.75, hx + side * w * 0.6 + 0.04, base - h * 0.45),
               (0.6, 0.8, 0.95))
    f["extra"] = bool(r.random() < 0.7)  # a tree
    if f["extra"]:
        _tree(c, r.choice([0.1, 0.9]), base + 0.05, r.uniform(0.3, 0.45), bool(r.random() < 0.5))


def _night(c: Canvas, r: np.random.Generator, f: dict) -> None:
    """A starry sky over a dark ridge, with the moon (maybe a crescent)."""
    horizon = r.uniform(0.6, 0.8)
    c.vgradient(_jitter(r, (0.02, 0.03, 0.12), 0.03), _jitter(r, (0.1, 0.12, 0.3), 0.05), 0, horizon)
    for _ in range(r.integers(30, 80)):
        c.fill(c.disk(r.uniform(0, 1), r.uniform(0, horizon), r.uniform(0.002, 0.006)), (1, 1, 0.9))
    mx, my, mr = r.uniform(0.15, 0.85), r.uniform(0.1, 0.35), r.uniform(0.05, 0.1)
    c.fill(c.disk(mx, my, mr), (0.95, 0.95, 0.85))
    f["extra"] = bool(r.random() < 0.5)  # a crescent moon
    if f["extra"]:
        c.fill(c.disk(mx + mr * 0.4, my - mr * 0.2, mr * 0.9), c.px[0, 0].copy())
    c.fill(c.ridge(horizon, 0.004), _jitter(r, (0.05, 0.05, 0.08), 0.02))


_PAINTERS = {"seascape": _seascape, "city": _city, "still_life": _still_life, "flower": _flower, "face": _face,
             "house": _house}
