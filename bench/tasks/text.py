"""Deterministic text: random printed lines and pages, rendered with Pillow.

Lines mix English words, numbers, dates, prices and codes, the kind of text a document OCR sees.
Calibration and evaluation sets come from one seeded stream of *unique* strings, so they are
disjoint by construction. Fonts are the DejaVu family (Debian's fonts-dejavu-core, on most systems);
without it, Pillow's built-in scalable font keeps the harness usable, with a warning since scores
then differ.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansCondensed.ttf",
)

WORDS = (
    "account address amount apple april area august balance bank before black blue board book box "
    "bridge brown budget building call card carbon center change check city clear client code cold "
    "college color company contact copy corner count country credit daily data date december "
    "delivery design desk device direct doctor dollar door east energy engine entry euro event "
    "exit express factory february field figure file final first floor flower forest form friday "
    "garden general glass global gold green group guide harbor health heavy high hotel house index "
    "invoice island january july june kitchen label large letter level light limit line local "
    "london march market master medium meeting metal model monday money month morning motor "
    "mountain music national network night north notice november number ocean october office order "
    "orange paper park party payment people phone plan plant point police power price print "
    "private product project public quality radio receipt record region report river road room "
    "route safety sales saturday school screen second section service session share ship silver "
    "single small south space speed spring square station steel stock store street summer sunday "
    "supply system table tax team thursday ticket time total tower trade train transfer travel "
    "tuesday union unit valley value video village water wednesday week west white window winter "
    "world yellow zone"
).split()
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
ALNUM = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"


def _word(rng: np.random.Generator) -> str:
    word = str(rng.choice(WORDS))
    style = rng.random()
    if style < 0.35:
        return word.capitalize()
    if style < 0.45:
        return word.upper()
    return word


def _number(rng: np.random.Generator) -> str:
    kind = int(rng.integers(5))
    if kind == 0:
        return str(int(rng.integers(1, 100000)))
    if kind == 1:
        return f"{int(rng.integers(1, 10000))}.{int(rng.integers(0, 100)):02d}"
    if kind == 2:
        return (
            f"{int(rng.integers(1990, 2031))}-{int(rng.integers(1, 13)):02d}-"
            f"{int(rng.integers(1, 29)):02d}"
        )
    if kind == 3:
        return (
            f"{int(rng.integers(1, 29))} {MONTHS[int(rng.integers(12))]} "
            f"{int(rng.integers(1990, 2031))}"
        )
    return "No." + str(int(rng.integers(1, 1000)))


def random_line(rng: np.random.Generator) -> str:
    """One printed line of 2–5 tokens: words, numbers, dates; sometimes a trailing colon or
    comma."""
    tokens = [
        _number(rng) if rng.random() < 0.3 else _word(rng) for _ in range(int(rng.integers(2, 6)))
    ]
    if rng.random() < 0.2:
        tokens[0] += ":" if rng.random() < 0.5 else ","
    return " ".join(tokens)


def random_code(rng: np.random.Generator, min_len: int = 4, max_len: int = 6) -> str:
    """A captcha-like code of unambiguous letters and digits (no 0/O, 1/l/I)."""
    length = int(rng.integers(min_len, max_len + 1))
    return "".join(ALNUM[int(i)] for i in rng.integers(len(ALNUM), size=length))


def unique_strings(make: Callable[[np.random.Generator], str], count: int, seed: int) -> list[str]:
    """``count`` distinct strings from one seeded stream, in the order first drawn."""
    rng = np.random.default_rng(seed)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < count:
        seen.setdefault(make(rng), None)
        attempts += 1
        if attempts > 100 * count:
            raise ValueError(f"generator cannot produce {count} distinct strings")
    return list(seen)


def split_disjoint(strings: list[str], n_calib: int) -> tuple[list[str], list[str]]:
    """Calibration first, evaluation after: the strings are unique, so the sets share nothing."""
    return strings[:n_calib], strings[n_calib:]


@cache
def font_paths() -> tuple[Path, ...]:
    """The DejaVu fonts found on this system, in a fixed order (empty when none is installed)."""
    found = []
    for name in FONT_FILES:
        for folder in FONT_DIRS:
            if (folder / name).exists():
                found.append(folder / name)
                break
    if not found:
        warnings.warn(
            "DejaVu fonts not found (Debian: apt-get install fonts-dejavu-core); "
            "rendering with Pillow's built-in font, scores are not comparable",
            stacklevel=2,
        )
    return tuple(found)


@lru_cache(maxsize=256)
def load_font(index: int, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Font number ``index`` (modulo the fonts available) at ``size`` pixels."""
    paths = font_paths()
    if not paths:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(paths[index % len(paths)]), size=size)


def font_count() -> int:
    """How many distinct fonts renders draw from."""
    return max(1, len(font_paths()))


def render_line(
    text: str, rng: np.random.Generator, height_range: tuple[int, int] = (28, 44)
) -> Image.Image:
    """Dark text on a light background, tightly cropped like a detector's box, as an RGB image.

    Font, size, margins and gray levels vary per line so that the set covers some of what real crops
    look like; all randomness comes from ``rng``.
    """
    size = int(rng.integers(*height_range))
    font = load_font(int(rng.integers(font_count())), size)
    left, top, right, bottom = font.getbbox(text)
    pad_x = int(rng.integers(2, 10))
    pad_y = int(rng.integers(2, 8))
    background = int(rng.integers(215, 256))
    ink = int(rng.integers(0, 70))
    image = Image.new(
        "RGB", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), (background,) * 3
    )
    ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, font=font, fill=(ink,) * 3)
    return image


def render_page(
    lines: list[str], rng: np.random.Generator, size: tuple[int, int] = (480, 640)
) -> Image.Image:
    """A document page: left-aligned lines of text top to bottom on white, as an RGB image."""
    width, height = size
    font_size = int(rng.integers(16, 26))
    font = load_font(int(rng.integers(font_count())), font_size)
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    margin = int(rng.integers(20, 50))
    y = margin
    for text in lines:
        if y + font_size > height - margin:
            break
        draw.text((margin, y), text, font=font, fill=(0, 0, 0))
        y += int(font_size * rng.uniform(1.3, 1.8))
    return image


def render_captcha(text: str, rng: np.random.Generator) -> Image.Image:
    """A captcha: each character in its own color, size, tilt and height, over noise lines and
    dots."""
    background = tuple(int(v) for v in rng.integers(200, 256, size=3))
    glyphs = []
    for char in text:
        font = load_font(int(rng.integers(font_count())), int(rng.integers(30, 44)))
        left, top, right, bottom = font.getbbox(char)
        glyph = Image.new("RGBA", (right - left + 8, bottom - top + 8), (0, 0, 0, 0))
        color = tuple(int(v) for v in rng.integers(0, 140, size=3))
        ImageDraw.Draw(glyph).text((4 - left, 4 - top), char, font=font, fill=(*color, 255))
        glyphs.append(
            glyph.rotate(float(rng.uniform(-25, 25)), expand=True, resample=Image.BICUBIC)
        )
    width = sum(g.width for g in glyphs) + 20
    height = max(g.height for g in glyphs) + 16
    image = Image.new("RGB", (width, height), background)
    x = 10
    for glyph in glyphs:
        image.paste(glyph, (x, int(rng.integers(0, height - glyph.height + 1))), glyph)
        x += glyph.width - int(rng.integers(0, 6))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        points = [(int(rng.integers(width)), int(rng.integers(height))) for _ in range(2)]
        draw.line(
            points,
            fill=tuple(int(v) for v in rng.integers(0, 200, size=3)),
            width=int(rng.integers(1, 3)),
        )
    for _ in range(int(rng.integers(50, 200))):
        draw.point(
            (int(rng.integers(width)), int(rng.integers(height))),
            fill=tuple(int(v) for v in rng.integers(0, 256, size=3)),
        )
    return image
