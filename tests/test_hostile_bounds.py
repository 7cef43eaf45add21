"""Hostile input: flag values and files that once ate memory, hung, or gave a traceback or a wrong figure.

Every size, count and thread option has an upper bound that follows from this machine (its cores,
its memory, the renderer's picture limit); models and weights files whose declared sizes or outputs
cannot be run are refused in one line before anything large is allocated.
"""

from __future__ import annotations

import pytest

from resnet_xray import options
from resnet_xray.cli import main
from resnet_xray.options import MAX_IMAGE_SIDE, OptionError

# --- options: upper bounds ---


@pytest.mark.parametrize("argv, flag", [
    (["make-dataset", "{tmp}/ds", "--size", "100000", "--quiet"], "--size 100000"),
    (["finetune", "{tmp}", "--out", "{tmp}/ft", "--arch", "resnet18", "--image-size", "100000"], "--image-size 100000"),
    (["gradflow", "--arch", "resnet18", "--input-size", "10000", "--batch-size", "2"], "--input-size 10000"),
    (["evaluate", "{tmp}", "--model", "m.onnx", "--threads", "100000"], "--threads 100000"),
    (["show", "stages", "{cat}", "--arch", "resnet18", "--weights", "random", "--channels", "100000", "-o", "{tmp}/s.png"],
     "--channels 100000"),
    (["bench", "--model", "m.onnx", "--threads", "100000"], "--threads 100000"),
    (["bench", "--arch", "resnet18", "--threads", "100000"], "--threads 100000"),
    (["optimize", "{tmp}/c.pt", "--data", "{tmp}", "-o", "{tmp}/opt", "--timing-size", "100000"], "--timing-size 100000"),
    (["optimize", "{tmp}/c.pt", "--data", "{tmp}", "-o", "{tmp}/opt", "--workers", "100000"], "--workers 100000"),
    (["prune", "--arch", "resnet18", "--input-size", "100000", "--out", "{tmp}/p"], "--input-size 100000"),
    (["prune", "--arch", "resnet18", "--threads", "100000", "--out", "{tmp}/p"], "--threads 100000"),
    (["bench-data", "{tmp}", "--arch", "resnet18", "--image-size", "100000"], "--image-size 100000"),
    (["anatomy", "--arch", "resnet18", "--input-size", "100000"], "--input-size 100000"),
    (["classify", "{cat}", "--arch", "resnet18", "--weights", "random", "--batch-size", "1000000000"], "--batch-size 1000000000"),
    (["bench", "--arch", "resnet18", "--batch", "1,100000"], "--batch 100000"),
], ids=lambda a: " ".join(a[:2]) if isinstance(a, list) else None)
def test_size_count_and_thread_flags_have_an_upper_bound(argv, flag, tmp_path, cat_path, capsys):
    """Each of these passed 6 GB, hung, or died in libgomp; now one line naming the flag and its range, exit 2."""
    rc = main([a.format(tmp=tmp_path, cat=cat_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert f"error: {flag}: must lie in [" in err, err
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ft").exists() and not (tmp_path / "s.png").exists()


def test_the_bounds_themselves_are_allowed():
    from resnet_xray.datasets import ReferenceOptions
    from resnet_xray.deploy.runtime import EvaluateOptions
    from resnet_xray.trace.gradflow import GradFlowOptions
    from resnet_xray.viz.stages import StagesOptions

    ReferenceOptions(size=MAX_IMAGE_SIDE)
    EvaluateOptions(threads=options.max_threads())
    GradFlowOptions(input_size=MAX_IMAGE_SIDE, batch_size=2)
    StagesOptions(channels=64)
    with pytest.raises(OptionError, match=r"threads \d+: must lie in \[1, \d+\]"):
        EvaluateOptions(threads=options.max_threads() + 1)


def test_thread_bound_follows_the_cores(monkeypatch):
    monkeypatch.setattr(options.os, "cpu_count", lambda: 2)
    options.thread_count("threads", 8)
    with pytest.raises(OptionError, match=r"threads 9: must lie in \[1, 8\]"):
        options.thread_count("threads", 9)
    monkeypatch.setattr(options.os, "cpu_count", lambda: 64)
    options.thread_count("threads", 256)


def test_batch_bound_follows_memory_and_image_side(monkeypatch):
    from resnet_xray.trace.gradflow import GradFlowOptions

    monkeypatch.setattr(options, "memory_bytes", lambda: 4 << 30)
    # training keeps every layer's output: 600 bytes per pixel, 30 MB per 224 px image
    most = (4 << 30) // (224 * 224 * options.TRAIN_BYTES_PER_PIXEL)
    GradFlowOptions(input_size=224, batch_size=most)
    with pytest.raises(OptionError, match=rf"batch_size {most + 1}: must lie in \[1, {most}\] \(at 224 px .* 4.29 GB of memory\)"):
        GradFlowOptions(input_size=224, batch_size=most + 1)
    GradFlowOptions(input_size=64, batch_size=most + 1)  # smaller images: more of them fit


# --- weights files: a zip member's declared size is checked before torch.load allocates it ---


def _zip_bomb(path, claim: int) -> None:
    """A torch.save archive whose one storage member inflates from ~claim/1000 bytes to ``claim`` zero bytes."""
    import io
    import zipfile

    import torch

    buf = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(4)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                out.writestr(info, src.read(info))
                continue
            member = zipfile.ZipInfo(info.filename)
            member.compress_type = zipfile.ZIP_DEFLATED
            with out.open(member, "w", force_zip64=True) as f:
                for _ in range(claim >> 20):
                    f.write(bytes(1 << 20))


def test_zip_member_claiming_more_than_it_holds_is_refused_unread(tmp_path, monkeypatch, cat_path, capsys):
    """A 1 MB .pth whose member claimed 1 GiB made torch.load allocate the 1 GiB (4 GiB: 6.7 GB of RSS)."""
    import torch

    bomb = tmp_path / "bomb.pth"
    _zip_bomb(bomb, 64 << 20)
    assert bomb.stat().st_size < 1 << 20

    def never(*a, **k):
        raise AssertionError("torch.load reached")

    monkeypatch.setattr(torch, "load", never)
    rc = main(["classify", str(cat_path), "--weights", str(bomb)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert f"--weights {bomb}: member 'archive/data/0' claims 67,108,864 bytes" in err and "refused unread" in err


def test_zip_members_must_fit_in_memory_and_real_checkpoints_pass(tmp_path, monkeypatch):
    import torch

    from resnet_xray import checkpoint
    from resnet_xray.errors import XrayError

    good = tmp_path / "good.pt"
    torch.save({"fc.weight": torch.randn(1000, 16)}, good)
    checkpoint.check_zip_sizes(good, "--weights")  # torch.save stores members as they are
    assert checkpoint.safe_load(good, "--weights")["fc.weight"].shape == (1000, 16)
    monkeypatch.setattr(options, "memory_bytes", lambda: 32 << 10)
    with pytest.raises(XrayError, match=r"members claim \d+\.\d+ kB, more than this machine.s 32\.77 kB of memory"):
        checkpoint.check_zip_sizes(good, "--weights")
