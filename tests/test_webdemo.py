"""The `demo` page in a real browser: headless Chromium driven by Selenium, against the server on 127.0.0.1.

One server (the real `python -m utils.tools demo` process, a tiny DCS checkpoint) and one browser
serve the whole module. The browser's camera is Chromium's fake device playing a .y4m clip made
of real FER2013 faces. Every check compares the page with what the command-line tools give for
the same files: `predict` (photos), `predict --video` (the clip's frames), the CSA maps of the
model for the same pair. Screenshots of each view are written to $DEMO_SCREENSHOTS (default: a
`screenshots` folder under pytest's temporary folder), for a person to look at.

Skipped, saying why, without Selenium, without Chromium and its driver (`.ci/run` installs
Debian's `chromium` and `chromium-driver`), without the face-detection extra or without ../shared.
"""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT, SHARED, free_port
from models import build_model
from utils.inference import load_trained_model
from utils.tools import cli as tools
from utils.tools import faces
from utils.tools.heatmaps import level_maps, photo_group
from utils.tools.webdemo import Classifier

CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
IMAGE_SIZE = 64
# Two FER2013 test faces the detector finds at 200 px (see test_faces.py); the checkpoint's head is
# set so that they get different labels with a wide margin (JPEG and YUV conversions cannot flip them).
FACE_A, FACE_B = "surprise/PrivateTest_10712253.jpg", "happy/PrivateTest_87342811.jpg"
LABEL_A, LABEL_B = 1, 4  # Fear, Sadness
FRAME = (640, 480)
CLIP_RATE = 25
WAIT = 30  # s: the longest wait for the page

selenium = pytest.importorskip("selenium", reason="the browser tests need Selenium (pip install selenium)")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # a browser and server processes: about 50 s for the module on a busy 2-core machine
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="the browser tests need Chromium and chromedriver (apt-get install chromium "
                              "chromium-driver; .ci/run installs them)"),
    pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not present"),
    pytest.mark.skipif(not faces.available(), reason="the face-detection extra is not installed"),
]


# ------------------------------------------------------------------------------ inputs

def face_photo(name, size=FRAME, side=200):
    """A gray textured `size` canvas with one FER2013 test face upscaled to `side` px in the middle."""
    rng = np.random.default_rng(0)
    canvas = Image.fromarray(rng.integers(96, 160, size[::-1], dtype=np.uint8)).convert("RGB")
    face = Image.open(SHARED / "data" / "fer2013-mini" / "test" / name).convert("RGB")
    canvas.paste(face.resize((side, side), Image.BICUBIC), ((size[0] - side) // 2, (size[1] - side) // 2))
    return canvas


def write_y4m(path, frames, rate=CLIP_RATE):
    """Frames as an uncompressed 4:2:0 YUV4MPEG2 file (BT.601, limited range, as cameras give)."""
    width, height = frames[0].size
    with open(path, "wb") as handle:
        handle.write(f"YUV4MPEG2 W{width} H{height} F{rate}:1 Ip A1:1 C420mpeg2\n".encode())
        for frame in frames:
            ycc = np.asarray(frame.convert("YCbCr"), float)  # full-range BT.601
            luma = 16 + ycc[..., 0] * 219 / 255
            chroma = (128 + (ycc[..., 1:] - 128) * 224 / 255).reshape(height // 2, 2, width // 2, 2, 2).mean((1, 3))
            handle.write(b"FRAME\n")
            for plane in (luma, chroma[..., 0], chroma[..., 1]):
                handle.write(np.round(plane).clip(0, 255).astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The module's files: two face photos, the camera clip (face A, then face B), a checkpoint."""
    folder = tmp_path_factory.mktemp("webdemo")
    photo_a, photo_b = folder / "face_a.png", folder / "face_b.png"
    face_photo(FACE_A).save(photo_a)
    face_photo(FACE_B).save(photo_b)
    clip = folder / "camera.y4m"
    write_y4m(clip, [face_photo(FACE_A)] * 10 + [face_photo(FACE_B)] * 10)
    checkpoint = separating_checkpoint(folder / "dcs.pth", photo_a, photo_b)
    return Namespace(folder=folder, photo_a=photo_a, photo_b=photo_b, clip=clip, checkpoint=checkpoint)


def separating_checkpoint(path, photo_a, photo_b, margin=6.0):
    """A tiny DCS whose head gives face A class LABEL_A and face B class LABEL_B, `margin` logits apart:
    the head is the line through the midpoint of their features (random weights elsewhere)."""
    torch.manual_seed(0)
    model = build_model("dcs", len(CLASSES), size="tiny").eval()

    def save():
        torch.save({"format": "qcs-fer-checkpoint", "config": model.config, "model": model.state_dict(),
                    "classes": CLASSES, "run_config": {"dataset": "RAF-DB", "image_size": IMAGE_SIZE,
                                                       "size": "tiny", "augmentation": {"kind": "A"}}}, path)
    save()
    trained = load_trained_model(path)
    finder, transform = faces.FaceFinder(side=IMAGE_SIZE), trained.transform()
    features = []
    classifier = trained.model.vit.head.classifier
    hook = classifier.register_forward_hook(lambda _, args, __: features.append(args[0][0]))
    with torch.no_grad():
        for photo in (photo_a, photo_b):
            crop = finder.find(Image.open(photo).convert("RGB"))[0].crop
            trained.model(transform(crop)[None])
    hook.remove()
    direction, middle = features[0] - features[1], (features[0] + features[1]) / 2
    scale = margin / 2 / (direction @ direction / 2)
    head = model.base.vit.head.classifier
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[LABEL_A], head.bias[LABEL_A] = scale * direction, -scale * direction @ middle
        head.weight[LABEL_B], head.bias[LABEL_B] = -scale * direction, scale * direction @ middle
    save()
    return path


# ------------------------------------------------------------------------------ server and browser

def start_server(checkpoint, port, temporary):
    """The `demo` command in its own process (its temporary files under `temporary`), once it answers on `port`."""
    temporary.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "utils.tools", "demo", "--checkpoint", str(checkpoint),
                                "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "TMPDIR": str(temporary)})
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            get_json(port, "/api/info")
            return process
        except OSError:
            if process.poll() is not None:
                raise AssertionError(f"demo exited: {process.communicate()}") from None
            time.sleep(0.2)
    process.kill()
    raise AssertionError("demo did not answer")


def stop_server(process):
    process.terminate()
    try:
        return process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


def get_json(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def server(inputs):
    port, temporary = free_port(), inputs.folder / "server-tmp"
    process = start_server(inputs.checkpoint, port, temporary)
    yield Namespace(port=port, url=f"http://127.0.0.1:{port}/", process=process, temporary=temporary)
    stop_server(process)


@pytest.fixture(scope="module")
def browser(inputs):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-video-capture={inputs.clip}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    except WebDriverException as error:  # installed but cannot start here (a missing library, a version mismatch)
        pytest.skip(f"Chromium did not start: {error.msg}")
    driver.set_script_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = Path(os.environ.get("DEMO_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, server, view="photo"):
    """The page freshly loaded, the model ready, `view` shown."""
    browser.get(server.url)
    wait_for(browser, "return window.demo.info && window.demo.info.ready")
    browser.find_element(By.CSS_SELECTOR, f"nav button[data-view={view}]").click()


def wait_for(browser, script, timeout=WAIT):
    """The first truthy value of the JavaScript expression `script`."""
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda driver: driver.execute_script(script))


def upload(browser, element_id, path):
    browser.find_element(By.ID, element_id).send_keys(str(path))


def photo_result(browser, path):
    """Upload `path` in the photo view; the page's result once shown."""
    browser.execute_script("window.demo.photo = null")
    upload(browser, "photo-file", path)
    return wait_for(browser, "return window.demo.photo || document.getElementById('photo-message').textContent")


def run_tool(capsys, *argv):
    code = tools.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------ photo

def test_photo_shows_predicts_labels_and_rows(inputs, server, browser, screenshots, tmp_path, capsys):
    open_page(browser, server)
    result = photo_result(browser, inputs.photo_a)
    cards = browser.find_elements(By.CSS_SELECTOR, "#photo-faces .face")
    code, out, _ = run_tool(capsys, "predict", "--checkpoint", inputs.checkpoint, "--json", tmp_path / "p.json",
                            inputs.photo_a)
    assert code == 0
    expected = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert len(cards) == len(expected) == 1
    assert cards[0].get_attribute("data-label") == expected[0]["top_k"][0]["class"] == CLASSES[LABEL_A]
    shown = json.loads(cards[0].get_attribute("data-probabilities"))
    assert shown.keys() == expected[0]["probabilities"].keys()
    assert np.allclose([shown[name] for name in CLASSES], [expected[0]["probabilities"][name] for name in CLASSES],
                       atol=1e-6)
    assert result["faces"][0]["box"] == expected[0]["box"]
    predict_line = out.splitlines()[0].replace(str(inputs.photo_a), inputs.photo_a.name)
    assert predict_line in browser.find_element(By.ID, "photo-rows").text.splitlines()
    browser.save_screenshot(str(screenshots / "photo.png"))


def test_bad_photos_are_a_message_and_the_server_goes_on(inputs, server, browser, screenshots, tmp_path):
    open_page(browser, server)
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    huge = tmp_path / "huge.png"
    Image.new("1", (12300, 12300)).save(huge)  # 151 megapixels, a small file
    no_face = tmp_path / "wall.png"
    Image.fromarray(np.random.default_rng(1).integers(96, 160, (480, 640), dtype=np.uint8)).save(no_face)
    for path, message in ((not_image, "cannot read image"), (huge, "more than the 150 megapixels"),
                          (no_face, "no face detected")):
        photo_result(browser, path)
        assert message in browser.find_element(By.ID, "photo-message").text
        assert not browser.find_elements(By.CSS_SELECTOR, "#photo-faces .face")
    browser.save_screenshot(str(screenshots / "photo-no-face.png"))
    too_big = urllib.request.Request(f"{server.url}api/photo?name=big.png", data=bytes(65 * 2 ** 20))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(too_big, timeout=WAIT)
    assert refused.value.code == 413 and "more than the 64 MB" in json.load(refused.value)["error"]
    photo_result(browser, inputs.photo_b)  # and the next good photo is classified
    assert browser.find_element(By.CSS_SELECTOR, "#photo-faces .face").get_attribute("data-label") == CLASSES[LABEL_B]
    assert [path.parent.name for path in server.temporary.glob("*/*")] == []  # each upload removed


# ------------------------------------------------------------------------------ webcam

def test_webcam_labels_match_predict_video(inputs, server, browser, screenshots, tmp_path, capsys):
    code, _, _ = run_tool(capsys, "predict", "--checkpoint", inputs.checkpoint, "--video", inputs.clip,
                          "--json", tmp_path / "v.json")
    assert code == 0
    frames = json.loads((tmp_path / "v.json").read_text())["predictions"]
    assert [row["top_k"][0]["class"] for row in frames] == [CLASSES[LABEL_A]] * 10 + [CLASSES[LABEL_B]] * 10
    references = np.array([[row["probabilities"][name] for name in CLASSES] for row in frames])
    open_page(browser, server, "webcam")
    browser.find_element(By.ID, "cam-start").click()
    wait_for(browser, "return window.demo.cam.results.length >= 20")
    browser.save_screenshot(str(screenshots / "webcam.png"))
    browser.find_element(By.ID, "cam-stop").click()
    # read together, in one script: the page goes on updating both while frames are in flight
    results, fps, shown_fps = browser.execute_script(
        "return [window.demo.cam.results, window.demo.cam.fps, document.getElementById('cam-fps').textContent]")
    warming_up = next(index for index, found in enumerate(results) if found[0]["error"] is None)
    assert warming_up <= 2  # a camera's first frames may be blank
    labels = set()
    for faces_of_frame in results[warming_up:]:
        assert len(faces_of_frame) == 1 and faces_of_frame[0]["error"] is None, faces_of_frame
        shown = np.array([faces_of_frame[0]["probabilities"][name] for name in CLASSES])  # keys come back sorted
        nearest = np.abs(references - shown).max(1).argmin()
        # the same frame, through a camera and a JPEG
        assert np.abs(references[nearest] - shown).max() < 0.05, (faces_of_frame, frames[nearest])
        assert faces_of_frame[0]["top_k"][0]["class"] == frames[nearest]["top_k"][0]["class"]
        labels.add(faces_of_frame[0]["top_k"][0]["class"])
    assert labels == {CLASSES[LABEL_A], CLASSES[LABEL_B]}  # both faces of the clip were seen
    assert fps > 0 and shown_fps == f"{fps:.1f} fps"
    print(f"webcam view: {fps:.1f} fps, {browser.find_element(By.ID, 'cam-latency').text}")


def test_a_refused_camera_is_a_message(server, browser):
    open_page(browser, server, "webcam")
    browser.execute_script("navigator.mediaDevices.getUserMedia = () => "
                           "Promise.reject(new DOMException('Permission denied', 'NotAllowedError'))")
    browser.find_element(By.ID, "cam-start").click()
    message = wait_for(browser, "return document.getElementById('cam-message').textContent")
    assert "did not let this page use the camera: NotAllowedError" in message


# ------------------------------------------------------------------------------ CSA

def test_csa_maps_equal_the_models_for_the_same_pair(inputs, server, browser, screenshots):
    open_page(browser, server, "csa")
    upload(browser, "csa-a", inputs.photo_a)
    upload(browser, "csa-b", inputs.photo_b)
    browser.find_element(By.ID, "csa-run").click()
    result = wait_for(browser, "return window.demo.csa || document.getElementById('csa-message').textContent")
    assert isinstance(result, dict), result
    wait_for(browser, "return document.querySelectorAll('#csa-out canvas').length == 8")
    browser.save_screenshot(str(screenshots / "csa.png"))
    trained = load_trained_model(inputs.checkpoint, arch="cross")
    args = Namespace(images=[inputs.photo_a, inputs.photo_b], min_score=None, upsample=None, largest=False)
    images, _ = photo_group(args, trained, detect=True)  # what `heatmaps --images A B` draws
    grids = level_maps(trained.model, [x[None] for x in images])[:, :, 0]
    panels = np.array(result["panels"])
    side = grids.shape[-1]
    assert panels.shape == (4, 2, side, side)
    assert np.allclose(panels[:3], grids.numpy() * side * side, atol=1e-5)
    assert np.allclose(panels[3], grids.mean(0).numpy() * side * side, atol=1e-5)


# ------------------------------------------------------------------------------ failures

def test_a_model_that_fails_to_load_is_a_message(inputs, browser, tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    port = free_port()
    process = start_server(broken, port, tmp_path / "server-tmp")
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        status = wait_for(browser, "return window.demo.info && window.demo.info.error "
                                   "&& document.getElementById('status').textContent")
        assert status.startswith("the model could not be loaded") and "broken.pth" in status
        upload(browser, "photo-file", inputs.photo_a)
        message = wait_for(browser, "return document.getElementById('photo-message').textContent")
        assert message.startswith("the model could not be loaded")
        assert get_json(port, "/api/info")["error"] == status  # still serving
    finally:
        _, err = stop_server(process)
    assert "error: the model could not be loaded" in err
    assert list((tmp_path / "server-tmp").iterdir()) == []  # the uploads' folder removed at exit


def test_a_port_in_use_is_one_error_line(inputs, server, capsys):
    code, out, err = run_tool(capsys, "demo", "--checkpoint", inputs.checkpoint, "--port", server.port)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: cannot serve on 127.0.0.1:{server.port}")
    assert get_json(server.port, "/api/info")["ready"]


def test_detect_pixels_finds_the_face_in_a_smaller_search(inputs):
    """`--detect-pixels 76800`: the 200 px face of a 640×480 frame, searched at 320×240, is the same face."""
    trained = load_trained_model(inputs.checkpoint)
    finder = faces.FaceFinder(side=IMAGE_SIZE)
    frame = face_photo(FACE_A)
    full, _ = Classifier(trained, torch.device("cpu"), "cpu", finder, 3).frame(frame)
    quarter, _ = Classifier(trained, torch.device("cpu"), "cpu", finder, 3, frame_pixels=320 * 240).frame(frame)
    assert finder.max_pixels == faces.MAX_DETECTION_PIXELS  # photos are still searched as predict does
    assert len(full) == len(quarter) == 1
    # the detector's boxes step with its pyramid (a box 17% larger here); the landmarks, which the alignment uses, agree
    np.testing.assert_allclose(quarter[0].landmarks, full[0].landmarks, atol=full[0].box[2] / 20)
    assert quarter[0].top(CLASSES, 1)[0][0] == full[0].top(CLASSES, 1)[0][0] == CLASSES[LABEL_A]
