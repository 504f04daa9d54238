"""Faces in photos: EXIF orientation, detection, 5-point alignment and annotation drawing.

Detection is dlib's frontal face detector (HOG + linear SVM, with a score per face) and the
landmarks are dlib's 5-point shape predictor, whose model file ships in the
`face-recognition-models` package; both install from the package registry with
`pip install -r requirements-faces.txt`, nothing is downloaded at run time.

Alignment maps the five landmarks onto `TEMPLATE` with the least-squares similarity transform
(rotation, uniform scale, shift), so every face comes out upright and framed the same way. The
template is the median position of the five landmarks on the FER2013 test faces (detected on
faces upscaled ×4, left/right mirrored and pooled): eye centres at 0.40 of the crop height and
0.37 of its width apart, the nose bottom at 0.67: the whole face with a little margin, as
FER2013/FERPlus crops show it, and within the eye height (about 0.35–0.4) of RAF-DB's aligned
faces and AffectNet's crops, which are not here to be measured.
"""
import functools
import importlib.util
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from data_preprocessing import clamp_box

from . import ToolError

EXIF_ORIENTATION = 0x0112
EXTRA_HINT = "pip install -r requirements-faces.txt"
PREDICTOR_FILE = os.path.join("models", "shape_predictor_5_face_landmarks.dat")
MAX_UPSAMPLE = 3  # 8× the side: a 12-megapixel photo becomes 770 megapixels
# The score threshold (dlib's own is 0). Measured on fer2013-mini test faces upscaled to 160-420 px
# and pasted on 1600×1200 canvases with skin-coloured round patches, plain and EXIF-rotated (300
# canvases at --upsample 0, 80 at 1): the faces dlib finds score 0.002-2.4 (7% below 0.1), the
# tests' photos 1.2-2.9, detections off the faces at most -0.10; but a skin-coloured oval with two
# dark spots, larger than the face, scores 0.005-0.05 (and up to 1.0 as it looks more like a
# face). 0.1 drops such near-zero detections and keeps 93% of those weak 48-px faces and every
# clearer one.
DEFAULT_MIN_SCORE = 0.1
# `largest` compares the sizes of the faces scoring at least this share of the best score, so a
# large near-threshold detection (score ~0) never wins over a clear face.
LARGEST_SCORE_SHARE = 0.5
DETECTOR_WINDOW = 80  # px: the HOG detector's window, the smallest face it finds without upsampling
# The pixels dlib searches (after upsampling): 12000×12000 px took 2.4 GB at --upsample 0. Larger
# images are shrunk for detection (boxes and landmarks are mapped back to the full image).
MAX_DETECTION_PIXELS = 24_000_000

# dlib's five points, left and right as seen in the image: the outer and inner corner of the eye on
# the right, of the eye on the left, and the bottom of the nose.
LANDMARK_NAMES = ("right_eye_outer", "right_eye_inner", "left_eye_outer", "left_eye_inner", "nose")
TEMPLATE = np.array([(0.760, 0.391), (0.609, 0.401), (0.240, 0.391), (0.391, 0.401), (0.500, 0.667)])

PALETTE = ((0, 200, 80), (255, 90, 40), (40, 140, 255), (230, 200, 0), (200, 60, 220), (0, 200, 210),
           (250, 250, 250), (255, 40, 120))


class MissingExtra(ToolError):
    """The optional face-detection packages are not installed."""


@dataclass
class Face:
    """One detected face: box `(x, y, w, h)` clipped to the image, the detector's score, the five
    landmarks `(x, y)` in image pixels (LANDMARK_NAMES order) and the aligned crop."""
    box: tuple
    score: float
    landmarks: tuple
    crop: Image.Image


# ------------------------------------------------------------------------------ the extra

def available():
    """Whether the face-detection extra is installed (tries the import every time, so it can be switched off)."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return _predictor_path() is not None


def _predictor_path():
    # Located without importing the package: its __init__ needs pkg_resources, gone from recent setuptools.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], PREDICTOR_FILE)
    return path if os.path.isfile(path) else None


@functools.cache
def _dlib_models(predictor_path):
    """dlib's detector and the shape predictor at `predictor_path`, read once a process (seconds each)."""
    import dlib
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path)


# ------------------------------------------------------------------------------ images

def upright(image):
    """The image as it is meant to be seen: its EXIF orientation applied (a no-op without one).

    A malformed EXIF block leaves the image as stored rather than failing the file.
    """
    try:
        if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
            return image  # upright already: no copy (a 12000×12000 image is 430 MB as RGB)
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):
        return image


# ------------------------------------------------------------------------------ detection

class FaceFinder:
    """Finds, landmarks and aligns the faces of RGB images.

    `min_score`: the detector's score threshold (DEFAULT_MIN_SCORE; lower admits weaker faces);
    `largest`: keep only the largest face (of those scoring at least LARGEST_SCORE_SHARE of the
    best); `upsample`: times the image is doubled before detection (each finds faces half as
    large, 80 px at 0, at about 4× the time); `side`: the aligned crop's side in pixels. Images
    over `max_pixels` (after upsampling; default MAX_DETECTION_PIXELS) are searched shrunk by a whole
    factor (the alignment still samples the full image).
    """

    def __init__(self, min_score=DEFAULT_MIN_SCORE, largest=False, upsample=0, side=112,
                 max_pixels=None):
        if not 0 <= upsample <= MAX_UPSAMPLE:
            raise ToolError(f"--upsample must be 0..{MAX_UPSAMPLE} (each step doubles the image), got {upsample}")
        if not available():
            raise MissingExtra(f"face detection needs the optional packages dlib-bin and face-recognition-models, "
                               f"which are not installed; install them with: {EXTRA_HINT}")
        self.detector, self.predictor = _dlib_models(_predictor_path())
        self.min_score, self.largest, self.upsample, self.side = min_score, largest, upsample, side
        self.max_pixels = max_pixels or MAX_DETECTION_PIXELS

    def too_small(self, image):
        """Why `image` is too small to hold a face the detector can find, or None."""
        smallest = DETECTOR_WINDOW / 2 ** self.upsample  # the smallest face the detector finds
        if min(image.size) >= smallest:
            return None
        hint = f"; --upsample {self.upsample + 1} finds {smallest / 2:g} px" if self.upsample < MAX_UPSAMPLE else ""
        return (f"{image.width}×{image.height} px is too small for the face detector, which finds faces of "
                f"{smallest:g} px and larger at --upsample {self.upsample}{hint} (--no-detect takes it as a face crop)")

    def shrink_factor(self, size):
        """The whole factor by which an image of `size` is reduced for detection (1: not at all)."""
        searched = size[0] * size[1] * 4 ** self.upsample
        return max(1, math.ceil(math.sqrt(searched / self.max_pixels)))

    def find(self, image):
        """The faces of an RGB PIL image, left to right (the largest only with `largest`)."""
        factor = self.shrink_factor(image.size)
        searched = image.reduce(factor) if factor > 1 else image
        gray = np.ascontiguousarray(np.asarray(searched.convert("L")))
        found = self.boxes(gray)
        if self.largest and found:
            found = [largest_confident(found)]
        faces = []
        for box, score, rect in sorted(found, key=lambda item: (item[0][0], item[0][1])):
            points = tuple((x * factor, y * factor) for x, y in self.landmarks(gray, rect))
            box = clamp_box(tuple(value * factor for value in box), image.width, image.height)
            box = (box[0], box[1], box[2] - box[0], box[3] - box[1])
            faces.append(Face(box, score, points, align(image, points, self.side)))
        return faces

    def boxes(self, gray):
        """`[(box, score, dlib rectangle)]` of the faces scoring above `min_score`, boxes clipped to the image."""
        rects, scores, _ = self.detector.run(gray, self.upsample, self.min_score)
        height, width = gray.shape
        found = []
        for rect, score in zip(rects, scores):
            corners = clamp_box((rect.left(), rect.top(), rect.width(), rect.height()), width, height)
            if corners is not None:
                left, top, right, bottom = corners
                found.append(((left, top, right - left, bottom - top), float(score), rect))
        return found

    def landmarks(self, gray, rect):
        """The five landmarks in continuous image coordinates (dlib's pixel indices + 0.5)."""
        shape = self.predictor(gray, rect)
        return tuple((shape.part(i).x + 0.5, shape.part(i).y + 0.5) for i in range(shape.num_parts))


def largest_confident(found):
    """The largest of the `(box, score, ...)` detections scoring at least LARGEST_SCORE_SHARE of the best one."""
    best = max(score for _, score, *_ in found)
    confident = [item for item in found if item[1] >= best * LARGEST_SCORE_SHARE] if best > 0 else found
    return max(confident, key=lambda item: item[0][2] * item[0][3])


# ------------------------------------------------------------------------------ alignment

def fit_similarity(source, target):
    """`(a, b, tx, ty)` of the similarity `target ≈ [[a, -b], [b, a]] · source + t`, least squares.

    Closed form: as complex numbers, target = z·source + t with z = a + ib.
    """
    source, target = np.asarray(source, float), np.asarray(target, float)
    s = source - source.mean(0)
    t = target - target.mean(0)
    norm = (s ** 2).sum()
    a = (s * t).sum() / norm
    b = (s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum() / norm
    shift = target.mean(0) - np.array([[a, -b], [b, a]]) @ source.mean(0)
    return a, b, shift[0], shift[1]


def align(image, landmarks, side):
    """A side×side crop in which the landmarks lie on TEMPLATE (bilinear; black outside the image)."""
    # The transform maps crop pixels to image pixels, which is what PIL's AFFINE takes.
    a, b, tx, ty = fit_similarity(TEMPLATE * side, landmarks)
    corners = np.array([[0, 0], [side, 0], [0, side], [side, side]], float)
    mapped = corners @ np.array([[a, b], [-b, a]]) + (tx, ty)
    left, top = np.floor(mapped.min(0)).astype(int) - 1
    right, bottom = np.ceil(mapped.max(0)).astype(int) + 1
    region = image.crop((left, top, right, bottom))
    # A face much larger than the crop is first shrunk with a box filter: the affine resampling alone would alias.
    factor = max(1, int(math.hypot(a, b)))
    if factor > 1:  # reduce(1) would only copy the region, once per face
        region = region.reduce(factor)
    coefficients = (a / factor, -b / factor, (tx - left) / factor, b / factor, a / factor, (ty - top) / factor)
    return region.transform((side, side), Image.AFFINE, coefficients, resample=Image.BILINEAR)


# ------------------------------------------------------------------------------ drawing

def draw_faces(image, faces):
    """A copy of `image` with each face's box, landmarks and caption drawn on it.

    `faces`: `(box, landmarks, caption, colour index)` tuples; landmarks may be None.
    """
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 400))
    font = _font(max(12, round(max(out.size) / 60)))
    for box, landmarks, caption, colour in faces:
        colour = PALETTE[colour % len(PALETTE)]
        x, y, w, h = box
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=colour, width=width)
        for px, py in landmarks or ():
            draw.ellipse((px - width, py - width, px + width, py + width), fill=colour)
        _label(draw, (x, y), caption, colour, font)
    return out


def draw_note(image, text):
    """A copy of `image` with `text` in its top-left corner (e.g. that no face was found)."""
    out = image.convert("RGB")
    _label(ImageDraw.Draw(out), (0, 0), text, (255, 255, 255), _font(max(12, round(max(out.size) / 60))),
           below=True)
    return out


def _label(draw, corner, text, colour, font, below=False):
    """`text` on a dark band above the corner (below it when there is no room above)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 3
    height = bottom - top + 2 * pad
    x, y = corner
    y = y if below or y < height else y - height
    draw.rectangle((x, y, x + right - left + 2 * pad, y + height), fill=(0, 0, 0))
    draw.text((x + pad - left, y + pad - top), text, fill=colour, font=font)


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()
