"""Procedural images of shapes and patterns, shared by the demo dataset and the demo hub module.

Two disjoint families are drawn here:

* ``TARGET_CLASSES``: filled shapes that the demo dataset labels and the pipeline learns to classify.
* ``PRETEXT_CLASSES``: other filled shapes, outlines, stripes and textures that the demo hub module is pre-trained
  on. None of them is a target class, so fine-tuning on the target classes is transfer learning: the module brings edge,
  corner, curvature and orientation features, not the answer.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TARGET_CLASSES = ("circle", "square", "triangle", "cross")
PRETEXT_CLASSES = (
    "ring",
    "hollow_square",
    "hollow_triangle",
    "hollow_cross",
    "pentagon",
    "hexagon",
    "star",
    "ellipse",
    "bar",
    "stripes",
)


def _random_colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background and a foreground colour far enough apart to be told apart by eye."""
    while True:
        bg = rng.integers(0, 256, size=3)
        fg = rng.integers(0, 256, size=3)
        if np.abs(bg.astype(int) - fg.astype(int)).sum() > 200:
            return tuple(int(c) for c in bg), tuple(int(c) for c in fg)


def _rotated_polygon(cx: float, cy: float, r: float, sides: int, angle: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(angle + 2 * math.pi * k / sides), cy + r * math.sin(angle + 2 * math.pi * k / sides))
        for k in range(sides)
    ]


def _cross(cx: float, cy: float, r: float, angle: float, arm: float) -> list[tuple[float, float]]:
    """A plus sign of half-width ``arm`` (relative to ``r``) rotated by ``angle``."""
    a = arm * r
    pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def draw(kind: str, rng: np.random.Generator, size: int) -> Image.Image:
    """Draws one RGB image of ``kind`` with random colours, scale, position, rotation and noise.

    Args:
        kind: one of ``TARGET_CLASSES`` or ``PRETEXT_CLASSES``.
        rng: the source of randomness; the same seed draws the same image.
        size: width and height in pixels.

    Returns:
        A ``size`` x ``size`` RGB PIL image.
    """
    bg, fg = _random_colours(rng)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = size * rng.uniform(0.18, 0.38)
    cx = size / 2 + rng.uniform(-1, 1) * (size / 2 - r - 1) * 0.8
    cy = size / 2 + rng.uniform(-1, 1) * (size / 2 - r - 1) * 0.8
    angle = rng.uniform(0, 2 * math.pi)
    width = max(1, int(size * rng.uniform(0.03, 0.07)))

    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "square":
        d.polygon(_rotated_polygon(cx, cy, r * 1.15, 4, angle), fill=fg)
    elif kind == "triangle":
        d.polygon(_rotated_polygon(cx, cy, r * 1.2, 3, angle), fill=fg)
    elif kind == "cross":
        d.polygon(_cross(cx, cy, r * 1.1, angle, rng.uniform(0.25, 0.38)), fill=fg)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=width)
    elif kind == "hollow_square":
        d.polygon(_rotated_polygon(cx, cy, r * 1.15, 4, angle), outline=fg, width=width)
    elif kind == "hollow_triangle":
        d.polygon(_rotated_polygon(cx, cy, r * 1.2, 3, angle), outline=fg, width=width)
    elif kind == "hollow_cross":
        d.polygon(_cross(cx, cy, r * 1.1, angle, rng.uniform(0.25, 0.38)), outline=fg, width=width)
    elif kind == "pentagon":
        d.polygon(_rotated_polygon(cx, cy, r * 1.15, 5, angle), fill=fg)
    elif kind == "hexagon":
        d.polygon(_rotated_polygon(cx, cy, r * 1.1, 6, angle), fill=fg)
    elif kind == "star":
        outer = _rotated_polygon(cx, cy, r * 1.2, 5, angle)
        inner = _rotated_polygon(cx, cy, r * 0.5, 5, angle + math.pi / 5)
        d.polygon([p for pair in zip(outer, inner) for p in pair], fill=fg)
    elif kind == "ellipse":
        _paste_ellipse(img, cx, cy, r, angle, fg)
    elif kind == "bar":
        d.polygon(_bar(cx, cy, r, angle), fill=fg)
    elif kind in _TEXTURES:
        _TEXTURES[kind](d, rng, size, fg)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {TARGET_CLASSES + PRETEXT_CLASSES}")
    return _blur_and_noise(img, rng)


def _paste_ellipse(img: Image.Image, cx: float, cy: float, r: float, angle: float, fg) -> None:
    size = img.size[0]
    e = Image.new("L", (size, size), 0)
    ImageDraw.Draw(e).ellipse([cx - r * 1.2, cy - r * 0.55, cx + r * 1.2, cy + r * 0.55], fill=255)
    e = e.rotate(math.degrees(angle), center=(cx, cy))
    img.paste(Image.new("RGB", (size, size), fg), (0, 0), e)


def _bar(cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    c, s_ = math.cos(angle), math.sin(angle)
    hw, hh = r * 1.2, r * 0.22
    return [(cx + x * c - y * s_, cy + x * s_ + y * c) for x, y in ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))]


def _stripes(d: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, fg) -> None:
    orientation = int(rng.integers(0, 3))  # horizontal, vertical, diagonal
    period = int(size * rng.uniform(0.12, 0.25))
    offset = int(rng.integers(0, period))
    sign = 1 if rng.random() < 0.5 else -1
    for k in range(-2 * size, 2 * size, period):
        k += offset
        if orientation == 0:
            d.rectangle([0, k, size, k + period // 2], fill=fg)
        elif orientation == 1:
            d.rectangle([k, 0, k + period // 2, size], fill=fg)
        else:
            d.polygon([(k, 0), (k + period // 2, 0), (k + period // 2 + sign * size, size), (k + sign * size, size)],
                      fill=fg)


def _checkerboard(d: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, fg) -> None:
    cell = int(size * rng.uniform(0.12, 0.25))
    for i in range(0, size, cell):
        for j in range(0, size, cell):
            if (i // cell + j // cell) % 2 == 0:
                d.rectangle([i, j, i + cell - 1, j + cell - 1], fill=fg)


def _dots(d: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, fg) -> None:
    for _ in range(int(rng.integers(6, 14))):
        x, y = rng.uniform(0, size, size=2)
        rr = size * rng.uniform(0.03, 0.07)
        d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=fg)


_TEXTURES = {"stripes": _stripes, "checkerboard": _checkerboard, "dots": _dots}
"""Kinds that cover the image with a pattern rather than draw one shape."""


def _blur_and_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Sometimes a slight blur, always Gaussian pixel noise of a random strength."""
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.2, 1.0))))
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0.0, rng.uniform(3.0, 14.0), size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def draw_array(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """``draw`` as a float32 array in [0, 1], the input convention of TF Hub image modules."""
    return np.asarray(draw(kind, rng, size), dtype=np.float32) / 255.0
