"""The demo page (`python -m stn.demo`): its three ways in on real zoo models and real MNIST test
digits, in process; then the page itself served and used through its HTTP interface."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from stn.inference.demo import Demo
from stn.loading import zoo_model

from .conftest import ROOT, cli_command, cli_env

pytest.importorskip("gradio", reason="the demo extra (pip install -e '.[demo]')")


def _seven(path: Path, size: int = 200, mode: str = "RGB") -> Path:
    """A hand-drawn-like 7: black strokes on white (or on a transparent sheet, as the sketchpad's)."""
    image = Image.new(mode, (size, size), "white" if mode == "RGB" else (0, 0, 0, 0))
    ImageDraw.Draw(image).line([(60, 40), (140, 40), (90, 170)], fill="black", width=14)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def rts_demo(mnist_dir: Path) -> Demo:
    return Demo(zoo_model("stn_rts"), str(mnist_dir))


def test_a_drawing_and_an_upload_are_read_as_predict_reads_them(rts_demo: Demo, tmp_path: Path):
    sheet, top, details = rts_demo.from_upload(str(_seven(tmp_path / "seven.png")))
    assert max(top, key=top.get) == "7" and len(top) == 3
    assert sheet.width > sheet.height and "theta (2x3)" in details and "42x42 canvas" in details
    drawing = np.asarray(Image.open(_seven(tmp_path / "sheet.png", 280, "RGBA")))  # (H, W, 4)
    _, top, _ = rts_demo.from_drawing({"background": None, "layers": [], "composite": drawing})
    assert max(top, key=top.get) == "7"


def test_a_test_digit_of_the_models_own_data_is_classified(rts_demo: Demo):
    right = 0
    for _ in range(5):
        sheet, top, details = rts_demo.test_digit()
        assert sheet is not None and sheet.height > 200 and "theta (2x3)" in details
        right += max(top, key=top.get) == str(rts_demo.last_label)
    assert right >= 4  # the RTS model scores 99%: 4 of 5 random test digits at the least


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.png", "cannot read missing.png as an image"),
        (
            lambda tmp: (tmp / "broken.png").write_text("not an image") and tmp / "broken.png",
            "cannot read broken.png",
        ),
        (
            lambda tmp: Image.new("L", (64, 64), 255).save(tmp / "white.png") or tmp / "white.png",
            "no digit found",
        ),
        (lambda tmp: None, "no file: upload a photo"),
    ],
)
def test_a_bad_upload_gets_a_sentence_on_the_page(rts_demo: Demo, tmp_path: Path, make, message: str):
    path = make(tmp_path)
    sheet, top, details = rts_demo.from_upload(str(path) if path else None)
    assert sheet is None and top is None and message in details
    assert str(tmp_path) not in details  # the server's upload folder is not shown


def test_the_page_deletes_what_it_was_given_after_a_while(rts_demo: Demo):
    from stn.inference.demo import UPLOADS_KEPT_S, page

    assert page(rts_demo, "t").delete_cache == (60, UPLOADS_KEPT_S)  # every minute, older than 10 minutes


def test_an_empty_drawing_gets_a_sentence_on_the_page(rts_demo: Demo):
    blank = np.zeros((280, 280, 4), dtype=np.uint8)  # a transparent sheet
    for drawing in ({"background": None, "layers": [], "composite": blank}, {"composite": None}, None):
        sheet, top, details = rts_demo.from_drawing(drawing)
        assert sheet is None and top is None and "no digit found" in details


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_the_page_serves_and_answers_over_http(tmp_path: Path, mnist_dir: Path):
    from gradio_client import Client, handle_file

    port = _free_port()
    server = subprocess.Popen(
        cli_command("stn.demo", "model_name=stn_tc", f"port={port}", "max_upload_mb=1"),
        cwd=ROOT, env={**cli_env(mnist_dir), "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        client = _connect(Client, f"http://127.0.0.1:{port}/", server)
        endpoints = client.view_api(return_format="dict")["named_endpoints"]
        assert {"/drawing", "/upload", "/test_digit"} <= set(endpoints)
        returns = [output["label"] for output in endpoints["/test_digit"]["returns"]]
        assert returns[1:] == ["top 3", "details"]  # each output named, none `value_<n>`
        picture, top, details = client.predict(api_name="/test_digit")  # a cluttered 60x60 test digit
        assert Path(picture).is_file() and len(top["confidences"]) == 3 and "60x60 canvas" in details
        picture, top, _ = client.predict(handle_file(str(_seven(tmp_path / "seven.png"))), api_name="/upload")
        assert top["label"] == "7"
        (tmp_path / "broken.png").write_text("not an image")
        assert client.predict(handle_file(str(tmp_path / "broken.png")), api_name="/upload")[2].startswith(
            "**cannot read broken.png as an image"
        )
        huge = tmp_path / "huge.png"
        huge.write_bytes(b"\x89PNG" + bytes(2 * 1024 * 1024))  # over max_upload_mb=1
        with pytest.raises(Exception, match="(?i)size|large"):
            client.predict(handle_file(str(huge)), api_name="/upload")
        blank = tmp_path / "blank.png"
        Image.new("RGBA", (280, 280), (0, 0, 0, 0)).save(blank)
        empty = {"background": None, "layers": [], "composite": handle_file(str(blank))}
        assert "no digit found" in client.predict(empty, api_name="/drawing")[2]
        # the server went on through all of that
        assert client.predict(api_name="/test_digit")[1]["label"] is not None
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)


def _connect(client_class, url: str, server: subprocess.Popen, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while True:
        if server.poll() is not None:
            pytest.fail(f"the demo exited {server.returncode}:\n{server.stdout.read()[-3000:]}")
        try:
            return client_class(url, verbose=False)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("port=70000", "port=70000 is out of range: allowed integers 1..65535"),
        ("max_upload_mb=0", "max_upload_mb=0 is out of range: allowed integers 1..1024"),
        ("model_name=stn_nope", "stn_nope"),
    ],
)
def test_a_bad_demo_option_is_refused_before_serving(override: str, message: str):
    from stn.errors import UserError
    from stn.inference.demo import serve

    from .conftest import compose_config

    with pytest.raises(UserError, match=re.escape(message)):
        serve(compose_config("demo.yaml", [override]))
