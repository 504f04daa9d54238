"""Drawing the demo faces: the seven expressions and the nuisance attributes of one image.

`sample_attributes` draws an image's nuisance attributes (background hue and texture, skin tone,
accessory, lighting, face size and position, noise), tied to its label or not; `draw_face` draws
the face from them with Pillow. The same generator state always gives the same pixels.
`data_preprocessing.demo` writes the dataset folder from these faces.
"""

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from data_preprocessing.errors import DataError
from data_preprocessing.layouts import DEMO_LAYOUT

DEMO_CLASSES = list(DEMO_LAYOUT.classes)  # RAF-DB's order

LEVELS_PER_ATTRIBUTE = 7  # every categorical nuisance attribute has one level per class
# test_flipped gives each face the nuisance level of the class this many steps on. Not 1: the
# neighbouring hue, 1/7 of the circle away, overlaps the label's own hue once the train colour
# jitter (hue ±0.1) has moved both, so it acts partly as the label's colour; 3 is the farthest.
FLIP_OFFSET = 3
CATEGORICAL_ATTRIBUTES = ("background", "texture", "skin", "accessory", "lighting")

TEXTURE_NAMES = ("plain", "h_stripes", "v_stripes", "diagonal", "dots", "checker", "blotches")
ACCESSORY_NAMES = ("none", "round_glasses", "square_glasses", "hat", "headband", "earrings", "bow_tie")
LIGHTING_DIRECTIONS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1))
BACKGROUND_HUES = tuple(level / LEVELS_PER_ATTRIBUTE for level in range(LEVELS_PER_ATTRIBUTE))
SKIN_TONES = (
    (255, 224, 196), (241, 194, 160), (224, 172, 125), (198, 134, 90),
    (161, 102, 64), (124, 76, 46), (90, 56, 36),
)

# Per class: eye shape, brow heights (inner, outer, arch; in face half-heights,
# negative is up), brow thickness factor, mouth shape.
EXPRESSIONS = {
    0: dict(eyes="wide", brows=(-0.64, -0.58, 0.08), brow_width=1.0, mouth="round_open"),
    1: dict(eyes="wide", brows=(-0.58, -0.44, -0.03), brow_width=1.0, mouth="wide_open"),
    2: dict(eyes="narrow", brows=(-0.34, -0.40, 0.0), brow_width=1.2, mouth="lip_raise"),
    3: dict(eyes="happy", brows=(-0.46, -0.46, 0.05), brow_width=1.0, mouth="smile"),
    4: dict(eyes="sad", brows=(-0.54, -0.34, 0.0), brow_width=1.0, mouth="frown"),
    5: dict(eyes="narrow", brows=(-0.26, -0.50, 0.0), brow_width=1.7, mouth="clench"),
    6: dict(eyes="normal", brows=(-0.44, -0.44, 0.02), brow_width=1.0, mouth="flat"),
}

EYE_SCALE, MOUTH_SCALE = 1.25, 1.4  # enlarge the expression cues so a tiny model sees them at 56 px
SUPERSAMPLE = 2  # draw at twice the size, then box-downsample (cheap anti-aliasing)


class DemoDataError(DataError):
    """Bad demo parameters or an inconsistent demo folder."""


# ----------------------------------------------------------------------------
# attributes


def sample_attributes(rng: np.random.Generator, label: int, spurious: str = "background",
                      spurious_strength: float = 0.8, tie_to_label: bool = True,
                      against_label: bool = False) -> dict:
    """Draw the nuisance attributes of one image.

    With ``tie_to_label`` (train split) the ``spurious`` attribute equals the
    label-tied level (the level index equal to the label) with probability
    ``spurious_strength`` and is one of the other six levels otherwise; without
    it (test split) every attribute is uniform and independent of the label.
    ``against_label`` (test_flipped split) sets the spurious attribute to the
    level tied to another class, (label + FLIP_OFFSET) mod 7: a model that
    follows the shortcut is then wrong.
    """
    attrs = {name: int(rng.integers(LEVELS_PER_ATTRIBUTE)) for name in CATEGORICAL_ATTRIBUTES}
    tie_draw = rng.random()
    other_level = int(rng.integers(LEVELS_PER_ATTRIBUTE - 1))
    if tie_to_label and spurious != "none":  # the other level skips the label's own
        attrs[spurious] = int(label) if tie_draw < spurious_strength else other_level + (other_level >= label)
    if against_label and spurious != "none":
        attrs[spurious] = (int(label) + FLIP_OFFSET) % LEVELS_PER_ATTRIBUTE
    attrs.update(
        face_scale=float(rng.uniform(0.92, 1.04)),
        face_dx=float(rng.uniform(-0.04, 0.04)),
        face_dy=float(rng.uniform(-0.03, 0.03)),
        background_saturation=float(rng.uniform(0.35, 0.6)),
        background_value=float(rng.uniform(0.72, 0.95)),
        light_strength=float(rng.uniform(0.1, 0.35)),
        noise_sigma=float(rng.uniform(1.0, 5.0)),
    )
    return attrs


def face_geometry(attrs: dict, image_size: int) -> tuple[float, float, float, float]:
    """Face ellipse (cx, cy, rx, ry) in pixels of an ``image_size`` x ``image_size`` image."""
    rx = image_size * 0.36 * attrs["face_scale"]
    return (image_size * (0.5 + attrs["face_dx"]), image_size * (0.52 + attrs["face_dy"]), rx, rx * 1.12)


# ----------------------------------------------------------------------------
# drawing


def _shade(colour, factor: float) -> tuple[int, int, int]:
    return tuple(min(255, max(0, round(c * factor))) for c in colour)


def _draw_texture(draw: ImageDraw.ImageDraw, rng: np.random.Generator, kind: str,
                  colour, canvas: int) -> None:
    period = canvas / 8
    phase = rng.uniform(0, period)
    if kind in ("h_stripes", "v_stripes"):
        for start in np.arange(phase - period, canvas, period):
            x0, y0, x1, y1 = 0, start, canvas, start + period / 2  # a horizontal stripe; v_stripes transpose it
            draw.rectangle((x0, y0, x1, y1) if kind == "h_stripes" else (y0, x0, y1, x1), fill=colour)
    elif kind == "diagonal":
        for x in np.arange(phase - canvas, canvas, period):
            draw.line((x, 0, x + canvas, canvas), fill=colour, width=max(1, int(period / 3)))
    elif kind == "dots":
        for y in np.arange(phase - period, canvas, period):
            for x in np.arange(phase - period, canvas, period):
                draw.ellipse((x, y, x + period / 3, y + period / 3), fill=colour)
    elif kind == "checker":
        cells = int(canvas // period) + 2
        for row in range(cells):
            for col in range(row % 2, cells, 2):
                x, y = col * period - phase, row * period - phase
                draw.rectangle((x, y, x + period, y + period), fill=colour)
    elif kind == "blotches":
        for _ in range(8):
            x, y = rng.uniform(0, canvas, size=2)
            r = rng.uniform(0.05, 0.15) * canvas
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


class _FaceFrame:
    """Maps face coordinates (u, v in face half-widths/heights) to canvas pixels."""

    def __init__(self, cx: float, cy: float, rx: float, ry: float):
        self.cx, self.cy, self.rx, self.ry = cx, cy, rx, ry

    def point(self, u: float, v: float) -> tuple[float, float]:
        return (self.cx + u * self.rx, self.cy + v * self.ry)

    def box(self, u: float, v: float, half_w: float, half_h: float) -> tuple[float, ...]:
        """Box centred at (u, v); half sizes in units of rx (keeps shapes round)."""
        x, y = self.point(u, v)
        return (x - half_w * self.rx, y - half_h * self.rx, x + half_w * self.rx, y + half_h * self.rx)


def _draw_eyes(draw, face: _FaceFrame, kind: str, line_w: int, ink, skin, jitter: float) -> None:
    white, pupil_colour = (250, 250, 250), (30, 25, 20)
    half_w = 0.16 * jitter
    for u in (-0.38, 0.38):
        v = -0.12
        if kind == "happy":
            draw.arc(face.box(u, v + 0.04, half_w, 0.1), 180, 360, fill=ink, width=line_w)
            continue
        half_h = {"normal": 0.09, "wide": 0.15, "narrow": 0.045, "sad": 0.085}[kind] * jitter
        draw.ellipse(face.box(u, v, half_w, half_h), fill=white, outline=ink, width=max(1, line_w // 2))
        pupil_r = min(0.06, half_h * 0.9)
        pupil_dv = 0.04 if kind == "sad" else 0.0
        draw.ellipse(face.box(u, v + pupil_dv, pupil_r, pupil_r), fill=pupil_colour)
        if kind == "sad":  # drooping upper lid: skin triangle over the outer top corner
            x0, y0, x1, y1 = face.box(u, v, half_w, half_h)
            outer_x, inner_x = (x0, x1) if u < 0 else (x1, x0)
            draw.polygon([(outer_x, y0 - 1), (inner_x, y0 - 1), (outer_x, (y0 + y1) / 2)], fill=skin)


def _draw_brows(draw, face: _FaceFrame, brows, width_factor: float, line_w: int, ink) -> None:
    inner_v, outer_v, arch = brows
    for side in (-1, 1):
        points = [face.point(side * 0.18, inner_v),
                  face.point(side * 0.38, (inner_v + outer_v) / 2 - arch),
                  face.point(side * 0.60, outer_v)]
        draw.line(points, fill=ink, width=max(1, round(line_w * 1.4 * width_factor)), joint="curve")


def _fill_rectangle(draw, box, colour) -> None:
    """Filled rectangle that is skipped when too small to exist (tiny images)."""
    x0, y0, x1, y1 = box
    if x1 >= x0 and y1 >= y0:
        draw.rectangle(box, fill=colour)


def _draw_mouth(draw, face: _FaceFrame, kind: str, line_w: int, lip, w: float) -> None:
    """The mouth of expression `kind`, its size scaled by `w`."""
    dark, teeth = (70, 20, 25), (245, 245, 240)
    v = 0.50
    if kind == "round_open":
        draw.ellipse(face.box(0, v, 0.13 * w, 0.21 * w), fill=dark, outline=lip, width=line_w)
    elif kind == "wide_open":
        box = face.box(0, v, 0.34 * w, 0.11 * w)
        draw.rounded_rectangle(box, radius=0.08 * face.rx, fill=dark, outline=lip, width=line_w)
        x0, y0, x1, y1 = box
        _fill_rectangle(draw, (x0 + line_w * 2, y0 + line_w, x1 - line_w * 2, y0 + line_w + (y1 - y0) * 0.25), teeth)
    elif kind == "lip_raise":
        shape = [(-0.27, 0.02), (-0.05, -0.03), (0.12, -0.11), (0.29, -0.15), (0.31, 0.02), (0.0, 0.05)]
        x, y = face.point(0, v)
        points = [(x + du * face.rx * w, y + dv * face.rx * w) for du, dv in shape]
        draw.polygon(points, fill=dark, outline=lip, width=line_w)
        for side in (-1, 1):  # nose wrinkles
            draw.line([face.point(side * 0.10, 0.06), face.point(side * 0.18, 0.12)], fill=lip, width=line_w)
    elif kind == "smile":
        box = face.box(0, v - 0.06, 0.31 * w, 0.17 * w)
        draw.chord(box, 0, 180, fill=dark, outline=lip, width=line_w)
        x0, y0, x1, y1 = box
        mid_y = (y0 + y1) / 2
        teeth_top = mid_y + line_w
        _fill_rectangle(draw, (x0 + (x1 - x0) * 0.2, teeth_top, x1 - (x1 - x0) * 0.2,
                               teeth_top + (y1 - mid_y) * 0.3), teeth)
    elif kind == "frown":
        draw.arc(face.box(0, v + 0.10, 0.26 * w, 0.13 * w), 200, 340, fill=lip, width=round(line_w * 1.5))
    elif kind == "clench":
        box = face.box(0, v, 0.25 * w, 0.065 * w)
        draw.rectangle(box, fill=teeth, outline=lip, width=line_w)
        x0, y0, x1, y1 = box
        draw.line((x0, (y0 + y1) / 2, x1, (y0 + y1) / 2), fill=lip, width=max(1, line_w // 2))
        for x in np.linspace(x0, x1, 7)[1:-1]:
            draw.line((x, y0, x, y1), fill=lip, width=max(1, line_w // 2))
    elif kind == "flat":
        draw.line([face.point(-0.22 * w, v), face.point(0.22 * w, v)], fill=lip, width=round(line_w * 1.3))


def _draw_accessory(draw, face: _FaceFrame, kind: str, colour, line_w: int) -> None:
    if kind in ("round_glasses", "square_glasses"):
        shape = draw.ellipse if kind == "round_glasses" else draw.rectangle
        for u in (-0.38, 0.38):
            shape(face.box(u, -0.12, 0.25, 0.2), outline=colour, width=line_w)
        draw.line([face.point(-0.13, -0.14), face.point(0.13, -0.14)], fill=colour, width=line_w)
    elif kind == "hat":
        draw.rectangle((*face.point(-0.78, -1.55), *face.point(0.78, -0.82)), fill=colour)
        draw.rectangle((*face.point(-1.2, -0.9), *face.point(1.2, -0.78)), fill=_shade(colour, 0.7))
    elif kind == "headband":
        draw.arc((*face.point(-1.0, -1.0), *face.point(1.0, 1.0)), 200, 340, fill=colour, width=line_w * 3)
    elif kind == "earrings":
        for u in (-1.02, 1.02):
            draw.ellipse(face.box(u, 0.25, 0.07, 0.07), fill=colour)
    elif kind == "bow_tie":
        left, centre, right = face.point(-0.35, 1.12), face.point(0, 1.12), face.point(0.35, 1.12)
        half_h = 0.14 * face.rx
        draw.polygon([centre, (left[0], left[1] - half_h), (left[0], left[1] + half_h)], fill=colour)
        draw.polygon([centre, (right[0], right[1] - half_h), (right[0], right[1] + half_h)], fill=colour)


def _apply_lighting_and_noise(image: Image.Image, rng: np.random.Generator, attrs: dict) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    dx, dy = LIGHTING_DIRECTIONS[attrs["lighting"]]
    norm = max(1.0, float(np.hypot(dx, dy)))
    coords = np.linspace(-1.0, 1.0, pixels.shape[0], dtype=np.float32)
    ramp = (dx * coords[None, :] + dy * coords[:, None]) / norm
    pixels *= (1.0 + attrs["light_strength"] * ramp)[:, :, None]
    pixels += rng.normal(0.0, attrs["noise_sigma"], size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def draw_face(rng: np.random.Generator, label: int, attrs: dict, image_size: int = 112) -> Image.Image:
    """Draw one ``image_size`` x ``image_size`` RGB face showing expression ``label`` (index into DEMO_CLASSES).

    ``attrs`` comes from :func:`sample_attributes`; ``rng`` drives the small
    per-image variations (expression intensity, texture phase, noise).
    """
    if label not in EXPRESSIONS:
        raise DemoDataError(f"label must be in 0..{len(DEMO_CLASSES) - 1}, got {label!r}")
    canvas = image_size * SUPERSAMPLE
    rgb = colorsys.hsv_to_rgb(BACKGROUND_HUES[attrs["background"]], attrs["background_saturation"],
                              attrs["background_value"])
    background = tuple(round(c * 255) for c in rgb)
    image = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    _draw_texture(draw, rng, TEXTURE_NAMES[attrs["texture"]], _shade(background, 0.8), canvas)

    cx, cy, rx, ry = (value * SUPERSAMPLE for value in face_geometry(attrs, image_size))
    face = _FaceFrame(cx, cy, rx, ry)
    skin = SKIN_TONES[attrs["skin"]]
    ink = _shade(skin, 0.35)
    line_w = max(1, round(canvas * 0.022))
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=skin, outline=_shade(skin, 0.7), width=line_w)
    draw.line([face.point(0, 0.05), face.point(-0.07, 0.27), face.point(0.05, 0.27)],
              fill=_shade(skin, 0.6), width=line_w)

    expression = EXPRESSIONS[label]
    eye_jitter, brow_jitter, mouth_jitter = rng.uniform(0.9, 1.1, size=3)
    brows = tuple(value * brow_jitter for value in expression["brows"])
    _draw_eyes(draw, face, expression["eyes"], line_w, ink, skin, eye_jitter * EYE_SCALE)
    _draw_brows(draw, face, brows, expression["brow_width"], line_w, ink)
    _draw_mouth(draw, face, expression["mouth"], line_w, _shade(skin, 0.45), mouth_jitter * MOUTH_SCALE)
    accessory_colour = tuple(int(c) for c in rng.integers(20, 230, size=3))
    _draw_accessory(draw, face, ACCESSORY_NAMES[attrs["accessory"]], accessory_colour, line_w)

    return _apply_lighting_and_noise(image.reduce(SUPERSAMPLE), rng, attrs)
