"""``resnet-xray explore``: the server's API through FastAPI's TestClient, on resnet18 with random weights.

Hostile uploads (empty, text, a decompression bomb, a huge thin strip, 50 MB), names that
look like paths, concurrent requests and the per-layer comparison are checked here; the
page itself in a real Chromium is in test_explore_browser.py.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest
import torch
from PIL import Image

import resnet_xray as rx
from resnet_xray.cli import main
from resnet_xray.explorer.pictures import feeding_conv, receptive_box
from resnet_xray.explorer.server import CSP
from resnet_xray.image import Preprocessing
from resnet_xray.tracing.divergence import align, compare_layers

fastapi_testclient = pytest.importorskip("fastapi.testclient")
POST = {"x-explorer": "1"}


def small(seed: int = 0):
    """resnet18, random weights, at 64 px: every layer is there, each pass takes milliseconds."""
    m = rx.load_model("resnet18", weights="random", seed=seed)
    return rx.LoadedModel(m.module, dataclasses.replace(m.meta, preprocessing=Preprocessing(resize=72, crop=64)))


@pytest.fixture(scope="module")
def client():
    ex = rx.explore(small(), compare=[small(seed=1)])
    with fastapi_testclient.TestClient(ex.app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as c:
        c.explorer = ex
        yield c


def png_bytes(w: int = 80, h: int = 60, colour=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(side: int = 30000) -> bytes:
    """A PNG header claiming side x side pixels, with a token of data: refused on its header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")


def upload(c, data: bytes, name: str = "photo.png"):
    return c.post("/api/photos", params={"name": name}, content=data, headers=POST)


# --- the page and its guards ---


def test_page_has_a_strict_csp_and_no_inline_code(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    html = r.text
    assert "<script>" not in html and "style=" not in html and "onclick" not in html
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    for bad in ("/static/../server.py", "/static/index.html", "/static/%2e%2e%2fserver.py"):
        assert client.get(bad).status_code == 404


def test_other_host_names_are_refused(client):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 gets nothing."""
    assert client.get("/api/session", headers={"host": "evil.example:8765"}).status_code == 400
    assert client.get("/api/session", headers={"host": "localhost:8765"}).status_code == 200


def test_post_needs_the_page_header(client):
    r = client.post("/api/photos", params={"name": "x.png"}, content=png_bytes())
    assert r.status_code == 403


def test_session_names_models_by_index_and_carries_the_warning(client):
    doc = client.get("/api/session").json()
    assert [m["key"] for m in doc["models"]] == [0, 1]
    assert all(m["warning"] and "RANDOM" in m["warning"] and m["known_trained"] is False for m in doc["models"])
    assert doc["photos"][0]["key"] == "cat" and doc["stages"] == ["layer1", "layer2", "layer3", "layer4"]
    assert client.get("/api/m/7/p/cat/overview").status_code == 404
    assert client.get("/api/m/0/p/..%2F..%2Fetc%2Fpasswd/overview").status_code == 404
    assert client.get("/api/m/0/p/cat/layer/..%2Fsecret").status_code == 404


# --- what the page shows ---


def test_overview_lists_every_traced_op_by_stage_and_block(client):
    ex = client.explorer
    doc = client.get("/api/m/0/p/cat/overview").json()
    blocks = [b["name"] for g in doc["groups"] for b in g["blocks"]]
    assert blocks == ["stem", *[f"layer{s}.{i}" for s in range(1, 5) for i in range(2)], "head"]
    ops = [op["name"] for g in doc["groups"] for b in g["blocks"] for op in b["ops"]]
    assert ops == ex.workspace.slots[0].order  # every op the trace records, in execution order
    conv1 = doc["groups"][0]["blocks"][0]["ops"][0]
    assert conv1["name"] == "conv1" and conv1["shape"] == [64, 32, 32] and conv1["rf"] == 7 and conv1["macs"] == 64 * 32 * 32 * 3 * 49
    assert len(doc["topk"]) == 5 and doc["topk"][0]["prob"] >= doc["topk"][1]["prob"]
    # the top-1 is the model's own prediction on the same input
    x = ex.workspace.prepared(ex.workspace.slots[0], ex.workspace.photo("cat")).x
    with torch.inference_mode():
        assert doc["topk"][0]["index"] == int(ex.workspace.slots[0].model.module(x).argmax())
    times = client.get("/api/m/0/times").json()
    assert set(times) == set(ops) and sum(times.values()) == pytest.approx(1.0)


def test_layer_channels_are_sorted_by_strength_and_the_grid_is_a_png(client):
    doc = client.get("/api/m/0/p/cat/layer/layer1.0.relu").json()
    means = [c["mean"] for c in doc["channels"]]
    assert means == sorted(means, reverse=True) and doc["count"] == 64
    assert doc["grid"]["channels"] == [c["c"] for c in doc["channels"]][:64]
    r = client.get(doc["grid"]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.size == (8 * 16 + 7, 8 * 16 + 7)  # 8 x 8 tiles of the 16 x 16 maps, one-pixel gaps
    fc = client.get("/api/m/0/p/cat/layer/fc").json()
    assert fc["spatial"] is False and "grid" not in fc and fc["channels"][0]["label"]


def test_channel_shows_its_map_its_input_square_and_its_filter(client):
    doc = client.get("/api/m/0/p/cat/layer/layer2.0.conv1/channel/5").json()
    assert doc["shape"] == [8, 8] and doc["rf"] == 43 + 2 * 4  # layer1 ends at RF 43; a 3x3 conv at jump 4 adds 2 * 4
    assert doc["kernels"]["conv"] == "layer2.0.conv1" and doc["kernels"]["shape"] == [128, 64, 3, 3]
    l, t, r, b = doc["rf_box"]
    assert 0 <= l <= r < 64 and 0 <= t <= b < 64
    for url in (doc["map_url"], doc["kernels"]["url"]):
        assert client.get(url).headers["content-type"] == "image/png"
    relu = client.get("/api/m/0/p/cat/layer/layer2.0.relu/channel/5").json()
    assert relu["kernels"]["conv"] == "layer2.0.conv1"  # a ReLU's channel is the conv's before it
    stem = client.get("/api/m/0/p/cat/layer/conv1/channel/0").json()
    assert client.get(stem["kernels"]["rgb_url"]).status_code == 200
    assert client.get("/api/m/0/p/cat/layer/layer2.0.conv1/channel/999").status_code == 404


def test_receptive_box_and_feeding_conv_follow_the_anatomy():
    m = small()
    rows = rx.anatomy(m, input_size=64).layers
    by = {r.name: r for r in rows}
    assert receptive_box(by["layer4.1.relu_1"], 0, 0, 64) == [0, 0, 63, 63]  # the last stage sees the whole crop
    assert receptive_box(by["conv1"], 5, 7, 64) == [7 * 2 - 3, 5 * 2 - 3, 7 * 2 + 3, 5 * 2 + 3]
    assert feeding_conv(rows, "layer3.0.downsample.1") == "layer3.0.downsample.0"
    assert feeding_conv(rows, "layer3.0.add") == "layer3.0.conv2"
    assert feeding_conv(rows, "maxpool") == "conv1" and feeding_conv(rows, "fc") is None


def test_gradcam_for_any_class_from_any_stage(client):
    tabby = client.get("/api/m/0/labels", params={"q": "TABBY"}).json()
    assert tabby == [{"index": 281, "label": "tabby"}]
    seen = set()
    for layer in ("layer1", "layer4"):
        doc = client.get("/api/m/0/p/cat/cam", params={"cls": 281, "layer": layer}).json()
        assert doc["layer"] == layer and doc["class_index"] == 281 and doc["label"] == "tabby"
        png = client.get(doc["url"]).content
        seen.add(png)
    assert len(seen) == 2  # two stages, two different maps
    assert client.get("/api/m/0/p/cat/cam", params={"cls": 281, "layer": "fc"}).status_code == 400
    assert client.get("/api/m/0/p/cat/cam", params={"cls": 5000}).status_code == 404


def test_gradflow_gives_each_block_its_shortcut_share(client):
    doc = client.get("/api/m/0/p/cat/gradflow").json()
    assert sorted(doc["blocks"]) == [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    assert all(0 <= b["shortcut_share"] <= 1 for b in doc["blocks"].values())


def test_preprocessing_steps(client):
    doc = client.get("/api/m/0/p/cat/input").json()
    assert doc["resize"]["size"] == [108, 72] and doc["crop"] == {"left": 22, "top": 4, "side": 64, "url": doc["crop"]["url"]}
    for url in (doc["resize"]["url"], doc["crop"]["url"], *(c["url"] for c in doc["normalize"]["channels"])):
        assert client.get(url).headers["content-type"] == "image/png"


# --- uploads, hostile and not ---


def test_a_new_photo_is_traced_and_shown(client):
    evil = "<img src=x onerror=alert(1)>.png"
    r = upload(client, png_bytes(), evil)
    assert r.status_code == 200, r.text
    key, name = r.json()["key"], r.json()["name"]
    assert name == evil  # returned as data: the page writes it with textContent
    assert client.get(f"/api/m/0/p/{key}/overview").status_code == 200
    names = [p["name"] for p in client.get("/api/session").json()["photos"]]
    assert evil in names


@pytest.mark.parametrize("data, name, words", [
    (b"", "empty.png", "empty.png: empty file (0 bytes)"),
    (b"just some text, not a picture\n" * 10, "notes.txt", "notes.txt: not an image PIL can read"),
    (png_bomb(), "bomb.png", "bomb.png: refused, more than"),
    (png_bytes()[:60], "cut.png", "cut.png: cannot decode image"),
])
def test_hostile_uploads_get_the_loaders_one_line_message(client, data, name, words):
    r = upload(client, data, name)
    assert r.status_code == 400
    msg = r.json()["error"]
    assert msg.startswith(words) and "\n" not in msg and "Traceback" not in r.text and "/tmp" not in msg


def test_a_path_as_a_file_name_is_only_a_name(client):
    r = upload(client, png_bytes(), "../../etc/passwd")
    assert r.status_code == 200 and r.json()["name"] == "passwd"


def test_a_huge_thin_image_is_handled_as_the_cli_handles_it(client):
    buf = io.BytesIO()
    Image.new("RGB", (100000, 2), (200, 120, 40)).save(buf, format="PNG")
    r = upload(client, buf.getvalue(), "thin.png")
    assert r.status_code == 200, r.text  # the CLI classifies it too: the long side is cut before the resize
    doc = client.get(f"/api/m/0/p/{r.json()['key']}/input").json()
    assert doc["resize"]["size"][1] == 72 and doc["resize"]["size"][0] <= 4 * 72 + 200


def test_over_the_limit_is_413_before_the_body_is_read(client):
    big = b"\0" * (50 * 10**6)
    r = upload(client, big, "big.jpg")
    assert r.status_code == 413 and "20 MB" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(25):
            yield b"\0" * 10**6

    r = client.post("/api/photos", params={"name": "stream.jpg"}, content=chunks(), headers=POST)
    assert r.status_code == 413


def test_concurrent_requests_all_succeed(client):
    key = upload(client, png_bytes(colour=(200, 10, 10)), "red.png").json()["key"]
    urls = [f"/api/m/{m}/p/{p}/layer/layer3.1.add" for m in (0, 1) for p in ("cat", key)] * 3
    results = [None] * len(urls)

    def get(i, url):
        results[i] = client.get(url).status_code

    threads = [threading.Thread(target=get, args=(i, u)) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [200] * len(urls)


def test_a_bug_is_500_without_a_traceback(client, monkeypatch):
    from resnet_xray.explorer import views

    monkeypatch.setattr(views, "labels_doc", lambda *a, **k: 1 / 0)
    r = client.get("/api/m/0/labels", params={"q": "cat"})
    assert r.status_code == 500 and "Traceback" not in r.text and "ZeroDivision" not in r.text


# --- two models ---


def test_compare_gives_top1_agreement_latency_and_each_layer(client):
    doc = client.get("/api/p/cat/compare").json()
    a, b = doc["models"]
    assert a["output"] is None and b["output"]["max_abs_diff"] > 0 and a["latency_ms"] > 0 and b["latency_ms"] > 0
    layers = b["layers"]
    assert layers["first_divergence"] == "conv1"  # two random draws differ from the first conv on
    assert [d["name"] for d in layers["layers"]][:3] == ["conv1", "bn1", "relu"]
    drift = client.get("/api/p/cat/drift", params={"layer": "layer3"}).json()
    assert [c["model"] for c in drift["cams"]] == [0, 1] and all(c["class_index"] == drift["class_index"] for c in drift["cams"])


def test_per_layer_comparison_of_a_fused_model_finds_no_divergence():
    m = small()
    fused = rx.fuse(m).model.module
    x = torch.randn(1, 3, 64, 64)
    cmp = compare_layers(m.module, fused, x)
    assert cmp.first_divergence is None and not cmp.missing
    pairs = {d.name: d.candidate for d in cmp.layers}
    assert pairs["bn1"] == "conv1" and "conv1" not in pairs  # the fused conv is set against conv + BN
    assert all(d.cosine > 0.999999 for d in cmp.layers)
    assert align([("conv1", "conv"), ("bn1", "bn"), ("relu", "relu")], {"conv1", "relu"}) == [("bn1", "conv1"), ("relu", "relu")]


def test_an_artefact_is_compared_at_its_output_only(tmp_path):
    pytest.importorskip("onnxruntime")
    m = small()
    onnx = tmp_path / "m.onnx"
    rx.export(m, onnx, openvino=False)
    ex = rx.explore(m, artefacts=[onnx])
    with fastapi_testclient.TestClient(ex.app, base_url="http://127.0.0.1") as c:
        assert c.get("/api/m/1/p/cat/overview").json()["groups"] == []
        assert c.get("/api/m/1/p/cat/layer/conv1").status_code == 404
        row = c.get("/api/p/cat/compare").json()["models"][1]
        assert row["deployed"] and row["layers"] is None and "output only" in row["note"]
        assert row["agrees"] and row["output"]["max_abs_diff"] < 1e-3


# --- the command ---


def test_show_cam_takes_any_stage(tmp_path, capsys, cat_path):
    out = tmp_path / "cam.png"
    argv = ["show", "cam", str(cat_path), "--arch", "resnet18", "--weights", "random", "-o", str(out), "--json"]
    assert main([*argv, "--layer", "layer2"]) == 0
    assert '"layer": "layer2"' in capsys.readouterr().out and out.stat().st_size > 0
    with pytest.raises(SystemExit):
        main([*argv, "--layer", "fc"])
    assert "invalid choice: 'fc'" in capsys.readouterr().err


def test_bad_port_is_refused_before_a_model_is_loaded(capsys):
    assert main(["explore", "--weights", "random", "--port", "70000", "--no-browser"]) == 2
    assert "--port 70000: must lie in [0, 65535]" in capsys.readouterr().err


@pytest.mark.slow
def test_command_serves_on_loopback_only_and_refuses_50_mb():
    import http.client
    import socket

    proc = subprocess.Popen([sys.executable, "-m", "resnet_xray", "explore", "--arch", "resnet18", "--weights", "random",
                             "--no-browser", "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 180
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "serving http://" in line:
                url = line.split("serving ")[1].split()[0]
        assert url and url.startswith("http://127.0.0.1:")
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/")
        page = conn.getresponse()
        assert page.status == 200 and b"layer-map" in page.read()
        conn.request("POST", "/api/photos?name=big.jpg", body=b"\0" * (50 * 10**6), headers={"x-explorer": "1"})
        assert conn.getresponse().status == 413
        others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
        for host in others:  # the same port on this machine's other addresses: nobody listens there
            with pytest.raises(OSError):
                socket.create_connection((host, port), timeout=2).close()
    finally:
        proc.terminate()
        proc.wait(30)


def test_connections_are_tcp_sockets_so_asyncio_turns_nagle_off():
    # asyncio sets TCP_NODELAY only where a socket's proto is IPPROTO_TCP; with proto 0 every keep-alive request
    # waited about 40 ms for the client's delayed ACK
    import socket

    from resnet_xray.explorer.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname()[:2]):
            accepted, _ = sock.accept()
            with accepted:
                assert sock.proto == accepted.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
