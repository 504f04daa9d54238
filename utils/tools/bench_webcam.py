"""The benchmark's webcam part: the `demo` page's webcam path on a camera-sized JPEG frame, per stage
and in frames/s with one and two frames in flight."""
import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from models import build_model, inference_model

from ..device import fast_path
from ..inference import TrainedModel
from .bench_model import input_side

WEBCAM_FRAME, WEBCAM_FACE_SIDE = (640, 480), 200


def webcam_jpeg(face_path):
    """A 640x480 JPEG, as the page sends a camera frame: gray noise with the face pasted at 200 px in the middle."""
    rng = np.random.default_rng(0)
    frame = Image.fromarray(rng.integers(96, 160, WEBCAM_FRAME[::-1], dtype=np.uint8)).convert("RGB")
    face = Image.open(face_path).convert("RGB").resize((WEBCAM_FACE_SIDE,) * 2, Image.BICUBIC)
    frame.paste(face, ((WEBCAM_FRAME[0] - WEBCAM_FACE_SIDE) // 2, (WEBCAM_FRAME[1] - WEBCAM_FACE_SIDE) // 2))
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def webcam_rows(args):
    """The demo's webcam path (`webdemo.Classifier.frame`): per-stage ms/frame one frame at a time, and
    frames/s with one and with two frames in flight; None without --webcam-face or the face extra."""
    from . import faces
    from .classify import annotate, decode_photo
    from .webdemo import Classifier

    if args.webcam_face is None or not faces.available():
        return None
    torch.manual_seed(0)
    image_size = input_side(args.size)
    model = fast_path(inference_model(build_model("qcs", 7, size=args.size)).eval(), args.device, amp=args.amp,
                      channels_last=args.channels_last, compile=args.compile)
    classes = [f"class {i}" for i in range(7)]
    trained = TrainedModel(model, None, classes, args.size, image_size, {"kind": "A"})
    finder = faces.FaceFinder(side=image_size, max_pixels=args.webcam_detect_pixels)
    classifier = Classifier(trained, args.device, str(args.device), finder, k=3)
    jpeg = webcam_jpeg(args.webcam_face)

    def one_frame():
        start = time.perf_counter()
        image, _ = decode_photo(io.BytesIO(jpeg))
        decoded = time.perf_counter()
        rows, timing = classifier.frame(image)
        drawing = time.perf_counter()
        annotate(image, rows, classes)
        return dict(decode_ms=1000 * (decoded - start), **timing, draw_ms=1000 * (time.perf_counter() - drawing),
                    faces=sum(1 for row in rows if not row.error))

    for _ in range(max(1, args.warmup)):
        one_frame()
    rows = []
    for in_flight in (1, 2):
        each, start = args.webcam_frames // in_flight, time.perf_counter()
        with ThreadPoolExecutor(in_flight) as pool:  # each thread sends its frames one after the other
            frames = [frame for chunk in pool.map(lambda _: [one_frame() for _ in range(each)],  # noqa: B023
                                                  range(in_flight)) for frame in chunk]
        wall = time.perf_counter() - start
        rows.append(dict(in_flight=in_flight, frames=len(frames), fps=len(frames) / wall,
                         faces=statistics.mean(f["faces"] for f in frames),
                         **{key: statistics.median(f[key] for f in frames)
                            for key in ("decode_ms", "detect_ms", "model_ms", "draw_ms")}))
    return rows
