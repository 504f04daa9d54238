"""Image-file names and face boxes: the one predicate for "is this an image file" and the one box clamp."""

import os

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "clamp_box"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


def is_image_file(path) -> bool:
    """Whether `path` (a name or a path, str or PathLike) names an image file by its extension;
    hidden files (base name starting with ".") are not."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def clamp_box(box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of an (x, y, w, h) box clipped to a width x height image, or None
    when nothing of it is inside. The result is what `PIL.Image.crop` takes."""
    x, y, w, h = box
    left, top = max(0, x), max(0, y)
    right, bottom = min(width, x + w), min(height, y + h)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom
