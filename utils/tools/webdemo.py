"""`demo`: a local web page that classifies the faces of photos and of the browser's webcam, live.

The server is the standard library's threaded HTTP server and the page one static file
(`webdemo.html`, plain JavaScript, nothing fetched from elsewhere). Every image goes through
`predict`'s path: photos through `predict.predict_files` (EXIF, transparency, size limits,
detection, alignment, the checkpoint's test transform, TTA), webcam frames through
`classify.decode_photo` and `classify.face_rows`, two faces for the CSA view through
`heatmaps.faces_in_files` and `heatmaps.level_maps`. Uploads are written to a temporary folder,
removed after each request and at exit.

Detection and the model each run one request at a time, under their own lock, so that the page's
two frames in flight overlap: the next frame is searched for faces while the model classifies
this one (the two cores at once).
"""
import contextlib
import copy
import errno
import io
import json
import signal
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from base64 import b64encode
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from data_preprocessing.outputs import printable

from ..device import autocast, resolve_device
from ..inference import load_trained_model
from . import ToolError
from .classify import (
    MAX_PHOTO_PIXELS,
    PendingBatch,
    decode_photo,
    detection_wanted,
    face_finder,
    face_rows,
    json_record,
    load_prediction_model,
)
from .heatmaps import COLUMNS, display_image, faces_in_files, level_and_fused, level_maps
from .predict import csv_rows, format_row, predict_files, summary

PAGE = Path(__file__).with_name("webdemo.html")
MAX_UPLOAD_BYTES = 64 * 2 ** 20  # a request body larger than this is refused before it is decoded
SAFE_NAME_CHARACTERS = 100


class Classifier:
    """The loaded model and face finder, shared by the request threads. Detection and the model each
    run one call at a time (their own lock), so two frames in flight use the two stages at once."""

    def __init__(self, trained, device, where, finder, k, frame_pixels=None):
        self.trained, self.device, self.where, self.finder, self.k = trained, device, where, finder, k
        self.frame_finder = finder  # `frame_pixels`: webcam frames searched shrunk to at most that many pixels
        if finder is not None and frame_pixels:
            self.frame_finder = copy.copy(finder)
            self.frame_finder.max_pixels = frame_pixels
        self.transform = trained.transform()
        self.detecting, self.modelling = threading.Lock(), threading.Lock()

    def frame(self, image, name="frame"):
        """`(rows, {"detect_ms", "model_ms"})` of one upright RGB image, as `predict --video` does a frame
        (the times each stage worked on it, not those it waited for the other frame)."""
        with self.detecting:
            start = time.perf_counter()
            rows, crops = face_rows(image, name, self.frame_finder)
            detect = time.perf_counter() - start
        with self.modelling:
            start = time.perf_counter()
            # a batch of one classifies each face as it is added
            PendingBatch(self.trained.model, self.transform, self.device, batch_size=1).add(None, None, rows, crops)
            model = time.perf_counter() - start
        return rows, {"detect_ms": 1000 * detect, "model_ms": 1000 * model}

    def photo(self, path):
        """`(rows, (width, height) or None)` of one image file, exactly as `predict` classifies it."""
        sizes = []
        with self.detecting, self.modelling:
            rows = predict_files(self.trained, [path], self.device, finder=self.finder,
                                 on_image=lambda _, image, __: sizes.append(image.size))
        return rows, sizes[0] if sizes else None


class Demo:
    """What the request handlers use: the classifier (loaded in the background, or why it failed),
    the CSA model (loaded at its first use) and the temporary folder of the uploads."""

    def __init__(self, args, detect):
        self.args, self.detect = args, detect
        self.classifier, self.error, self.cross = None, None, None
        self.cross_lock = threading.Lock()
        self.uploads = tempfile.TemporaryDirectory(prefix="qcs-demo-")

    def load(self):
        """Load the model and build the face finder; a failure is kept to be shown on the page."""
        try:
            trained, device, where = load_prediction_model(self.args)
            finder = face_finder(self.args, self.detect, trained.image_size)
            self.classifier = Classifier(trained, device, where, finder, min(self.args.top_k, len(trained.classes)),
                                         self.args.detect_pixels)
            print(f"model ready: {trained.size} model, {trained.image_size}px input, {where}", flush=True)
        except Exception as error:  # noqa: BLE001 -- any load failure becomes the page's message
            self.error = f"the model could not be loaded: {error}"
            print(f"error: {self.error}", file=sys.stderr, flush=True)

    def ready(self):
        if self.classifier is None:
            raise ToolError(self.error or "the model is still loading; try again in a moment")
        return self.classifier

    def info(self):
        classifier = self.classifier
        state = {"ready": classifier is not None, "error": self.error, "detect": self.detect,
                 "max_upload_mb": MAX_UPLOAD_BYTES // 2 ** 20, "max_megapixels": MAX_PHOTO_PIXELS // 10 ** 6}
        if classifier is not None:
            trained = classifier.trained
            state.update(classes=trained.classes, where=classifier.where, top_k=classifier.k,
                         model=f"{trained.size} model, {trained.image_size}px input")
        return state

    @contextlib.contextmanager
    def saved(self, body, name):
        """The uploaded bytes as a file named `name` in a new temporary folder, removed afterwards."""
        with tempfile.TemporaryDirectory(dir=self.uploads.name, ignore_cleanup_errors=True) as folder:
            path = Path(folder) / safe_name(name)
            path.write_bytes(body)
            yield path

    # ------------------------------------------------------------------ requests

    def photo(self, body, query):
        """Every face of an uploaded image: its record, predict's printed line and CSV row."""
        classifier = self.ready()
        name = safe_name(query.get("name", "upload"))
        with self.saved(body, name) as path:
            rows, size = classifier.photo(path)
        trained, k = classifier.trained, classifier.k
        for row in rows:
            row.image = name
        return {"name": name, "size": size, "summary": summary(rows, classifier.finder is not None),
                "faces": [{**json_record(row, trained.classes, k), "text": format_row(row, trained.classes, k)}
                          for row in rows],
                "csv": csv_rows(rows, trained.classes, k)}

    def frame(self, body, query):
        """The faces of one webcam frame (an image in the body), with the server's timings."""
        classifier = self.ready()
        image, problem = decode_photo(io.BytesIO(body))
        if problem:
            raise ToolError(problem)
        rows, timing = classifier.frame(image)
        return {"size": image.size, "timing": timing,
                "faces": [json_record(row, classifier.trained.classes, classifier.k) for row in rows]}

    def csa(self, body, query):
        """The CSA maps (levels and fused) of the first two faces of two uploaded images, as `heatmaps` draws them."""
        classifier = self.ready()
        cross, device = self.cross_model()
        names = query.get("names", "").split("/")
        try:
            sizes = [int(value) for value in query.get("sizes", "").split(",")]
        except ValueError:
            sizes = []
        if len(sizes) != 2 or len(names) != 2 or sum(sizes) != len(body) or min(sizes) < 0:
            raise ToolError("give two images")
        with self.saved(body[:sizes[0]], names[0]) as first, self.saved(body[sizes[0]:], names[1]) as second:
            with classifier.detecting:
                faces, titles = faces_in_files([first, second], classifier.finder, cross.transform(), flag="photo")
        if len(faces) < 2:
            raise ToolError(f"the CSA view needs two faces; found {len(faces)}: {', '.join(titles)}")
        with self.cross_lock, autocast(device, self.args.amp):
            grids = level_maps(cross.model, [face[None].to(device) for face in faces[:2]])[:, :, 0].float().cpu()
        return {"titles": titles[:2], "columns": list(COLUMNS[1:]), "panels": level_and_fused(grids).tolist(),
                "faces": [png_data_url(display_image(face)) for face in faces[:2]]}

    def cross_model(self):
        """`(TrainedModel with the cross module, device)`, loaded at the first CSA request."""
        if self.args.onnx is not None:
            raise ToolError("the CSA view needs a DCS/QCS training checkpoint; an ONNX export has no cross module")
        with self.cross_lock:
            if self.cross is None:
                try:
                    trained = load_trained_model(self.args.checkpoint, arch="cross", size=self.args.size,
                                                 image_size=self.args.image_size, data_root=self.args.data_root,
                                                 fallback_dataset=self.args.dataset)
                except Exception as error:  # noqa: BLE001 -- shown on the page
                    raise ToolError(f"the CSA view needs the cross module: {error}") from None
                device = resolve_device(self.args.device)
                trained.model.to(device)
                self.cross = trained, device
        return self.cross


def safe_name(name):
    """A file name from an uploaded one: its last part, printable, at most SAFE_NAME_CHARACTERS long."""
    name = printable(Path(str(name).replace("\\", "/")).name).replace("/", "_")[-SAFE_NAME_CHARACTERS:]
    return name if name.strip(". ") else "upload"


def png_data_url(array):
    """An H×W×3 array in [0, 1] as a `data:image/png` URL."""
    buffer = io.BytesIO()
    Image.fromarray((array * 255).round().astype("uint8")).save(buffer, format="PNG")
    return "data:image/png;base64," + b64encode(buffer.getvalue()).decode()


# ------------------------------------------------------------------------------ HTTP

class Handler(BaseHTTPRequestHandler):
    """GET / (the page), GET /api/info; POST /api/photo, /api/frame, /api/csa (the image bytes as the body).

    Every API answer is JSON; an error is `{"error": message}` and the server goes on serving.
    """
    server_version = "qcs-demo"

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self.send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif path == "/api/info":
            self.send_json(HTTPStatus.OK, self.server.demo.info())
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})

    def do_POST(self):
        parts = urllib.parse.urlsplit(self.path)
        demo = self.server.demo
        route = {"/api/photo": demo.photo, "/api/frame": demo.frame, "/api/csa": demo.csa}.get(parts.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD_BYTES:
            self.drain(length)
            return self.send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": (
                f"the upload is {length / 2 ** 20:.0f} MB, more than the {MAX_UPLOAD_BYTES // 2 ** 20} MB "
                f"this demo takes")})
        body = self.rfile.read(length)
        if route is None:
            return self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no such request: {parts.path}"})
        query = dict(urllib.parse.parse_qsl(parts.query))
        try:
            self.send_json(HTTPStatus.OK, route(body, query))
        except ToolError as error:
            self.send_json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(error)})
        except Exception as error:  # noqa: BLE001 -- one bad request must not stop the server
            traceback.print_exc()
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {error}"})

    def drain(self, length, chunk=2 ** 20):
        while length > 0:
            read = len(self.rfile.read(min(chunk, length)))
            if not read:
                break
            length -= read

    def send_json(self, status, document):
        self.send(status, json.dumps(document).encode(), "application/json")

    def send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 -- the base class's name
        pass  # one line per webcam frame would flood the terminal; errors are printed where they happen


def make_server(host, port, demo):
    """The bound server (ToolError naming the address when it cannot listen there)."""
    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as error:
        raise ToolError(f"cannot serve on {host}:{port}: {error.strerror or error}"
                        + (" (pick another with --port)" if error.errno == errno.EADDRINUSE else "")) from None
    server.demo = demo
    return server


def run(args):
    """The `demo` command: serve the page until Ctrl-C."""
    detect = detection_wanted(args.detect)
    face_finder(args, detect, 1, args.detect_pixels)  # the detection options checked before anything is served
    demo = Demo(args, detect)
    server = make_server(args.host, args.port, demo)
    host, port = server.server_address[:2]
    print(f"serving the demo on http://{host}:{port}/ (Ctrl-C stops it); loading the model ...", flush=True)
    threading.Thread(target=demo.load, daemon=True).start()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` removes the uploads' folder too
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
        demo.uploads.cleanup()
    return 0
