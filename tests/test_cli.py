"""The CLI: results on stdout, one-line errors with exit status 2, bad files reported at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from resnet_xray.cli import main


def run_cli(*args, env=None, timeout=120):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "resnet_xray", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=timeout)


def test_classify_json(cat_path, capsys):
    assert main(["classify", str(cat_path), "--weights", "random", "--arch", "resnet18", "--json", "--topk", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {k: doc["weights"][k] for k in ("source", "pretrained", "trained")} == {"source": "random (seed 0)", "pretrained": False, "trained": False}
    assert "meaningless" in doc["weights"]["warning"] and "Resize 256" in doc["transforms"]
    (res,) = doc["results"]
    assert res["image"] == str(cat_path)
    probs = [t["prob"] for t in res["topk"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    assert set(res["topk"][0]) == {"label", "index", "prob"}


def test_classify_folder_goes_past_bad_files(image_dir, capsys):
    code = main(["classify", str(image_dir), "--weights", "random", "--arch", "resnet18", "--json", "--batch-size", "2"])
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert code == 2
    assert [os.path.basename(r["image"]) for r in doc["results"]] == ["a.png", "b_gray.jpg", "c_palette.png"]
    skipped = {os.path.basename(s["image"]): s["reason"] for s in doc["skipped"]}
    assert set(skipped) == {"empty.jpg", "notes.png", "truncated.jpg"}
    assert out.err.count("skipped") == 3


def test_classify_batches_agree_with_single_images(image_dir, capsys):
    good = [image_dir / n for n in ("a.png", "b_gray.jpg", "c_palette.png")]
    main(["classify", *map(str, good), "--weights", "random", "--arch", "resnet18", "--json", "--batch-size", "3"])
    batched = json.loads(capsys.readouterr().out)["results"]
    for path, res in zip(good, batched):
        main(["classify", str(path), "--weights", "random", "--arch", "resnet18", "--json"])
        single = json.loads(capsys.readouterr().out)["results"][0]
        assert [t["index"] for t in single["topk"]] == [t["index"] for t in res["topk"]]
        assert single["topk"][0]["prob"] == pytest.approx(res["topk"][0]["prob"], abs=1e-5)


def test_bad_image_is_one_line_exit_2_in_a_real_process(image_dir):
    r = run_cli("classify", image_dir / "truncated.jpg", "--weights", "random", "--arch", "resnet18")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("resnet-xray:")]
    assert len(lines) == 1 and "truncated.jpg" in lines[0]


@pytest.mark.parametrize("name", ["empty.jpg", "notes.png", "missing.jpg"])
def test_bad_image_is_one_line_exit_2(image_dir, name, capsys):
    assert main(["classify", str(image_dir / name), "--weights", "random", "--arch", "resnet18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0]


def test_offline_imagenet_fails_fast(tmp_path, cat_path):
    # The brief allows 30 s; the subprocess timeout is only a guard against a hang.
    r = run_cli("classify", cat_path, env={"TORCH_HOME": str(tmp_path)}, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--weights PATH" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_flags_exit_2(cat_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["classify", str(cat_path), "--arch", "vgg16"])
    assert e.value.code == 2
    assert main(["classify", str(cat_path), "--weights", str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err
    assert "nope.pth" in err and "Traceback" not in err


def test_preprocess_saves_what_the_network_sees(cat_path, tmp_path, capsys):
    out = tmp_path / "seen.png"
    assert main(["preprocess", str(cat_path), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(3, 224, 224)" in text and "float32" in text and "channel R" in text
    assert Image.open(out).size == (224, 224)
    assert main(["preprocess", str(cat_path), "--weights", "imagenet-v2", "--json"]) == 0
    assert "232" in json.loads(capsys.readouterr().out)["transforms"]


def test_preprocess_unwritable_output(cat_path, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["preprocess", str(cat_path), "-o", str(blocker / "sub" / "out.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out.png" in err[0]


def test_anatomy_formats(capsys):
    assert main(["anatomy", "--arch", "resnet18", "--csv"]) == 0
    csv_text = capsys.readouterr().out
    assert csv_text.splitlines()[0].startswith("name,type,stage,kernel")
    assert "layer1.0.relu_1" in csv_text
    assert main(["anatomy", "--arch", "resnet18", "--summary"]) == 0
    text = capsys.readouterr().out
    assert "11,689,512" in text and "conv2_x" in text
    assert main(["anatomy", "--arch", "resnet18", "--input-size", "8"]) == 2


def test_demo_falls_back_to_random_loudly(tmp_path):
    r = run_cli("demo", "--arch", "resnet18", "--out", tmp_path / "demo", env={"TORCH_HOME": str(tmp_path / "th")},
                timeout=600)
    assert r.returncode == 0, r.stderr
    assert "RANDOM weights" in r.stderr and "meaningless" in r.stderr
    assert "Top-5" in r.stdout and "Table 1" in r.stdout


def test_library_warnings_are_one_line_however_many_commands_one_process_runs(capsys) -> None:
    """Each main() installs the one-line display; nesting it once per call overflowed the stack after ~1000 calls."""
    import warnings

    from resnet_xray import cli
    from resnet_xray.errors import XrayWarning

    others: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *a, **k: others.append(str(message))  # the display before any main()
        for _ in range(1500):
            cli._one_line_warnings()
        warnings.warn("left out an empty class folder", XrayWarning)
        warnings.warn("a third-party deprecation", UserWarning)
    assert capsys.readouterr().err == "resnet-xray: warning: left out an empty class folder\n"
    assert others == ["a third-party deprecation"]  # other warnings keep the display they had
