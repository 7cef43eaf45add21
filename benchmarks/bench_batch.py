"""Batch classification throughput: ``classify --out`` against the engine's ceiling, a plain PyTorch loop and Ray.

One run, the same images for every row (JPEG and PNG at 320x256, decoded and preprocessed to 224 px
by every row except the ceiling), ratios side by side:

* the ceiling: OpenVINO's own ``benchmark_app -hint throughput`` on the same INT8 ResNet-50 (inference
  alone), and an AsyncInferQueue loop of ours on pre-made input;
* ``classify --out`` with that model (``--workers`` processes decode; the model in throughput mode);
* a plain PyTorch loop: a torch DataLoader with the same workers feeding eager FP32 ResNet-50;
* ``classify --out --ray``: the same job on a local Ray instance, over enough images (2,400 by default) that
  starting Ray's actors counts as it does in a long job;
* peak RSS of ``classify --out`` at 20,000 images against 2,000 (hard links to a few files in a manifest;
  a ResNet-18 at 64 px so the 20,000 run takes a minute: the pipeline's memory is what is measured).

The model is ``--model``, an OpenVINO IR such as the winner ``optimize`` writes (out/bench_optimize/model.xml
after benchmarks/bench_optimize.py), reshaped to 224 px with the ImageNet pipeline (Resize 256, CenterCrop
224); a ResNet's convolutions and global pooling take any size. Without it, the row's model is an unpruned
ResNet-50 with random weights (speed does not depend on them), made by the project's own ``export`` and
``quantize --engine openvino`` (NNCF). Figures go to benchmarks/results/bench_batch.<cpu>.json.

    .venv/bin/python benchmarks/bench_batch.py --model out/bench_optimize/model.xml   # about 8 minutes on 2 cores
    .venv/bin/python benchmarks/bench_batch.py --images 2000 --workers 4              # the unpruned INT8 ResNet-50
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOALS = {"vs_ceiling": 0.8, "vs_pytorch": 3.0, "ray_vs_single": 0.7, "rss_20k_vs_2k": 1.2}


def make_images(folder: Path, n: int = 24) -> list[Path]:
    """``n`` photo-like 320x256 pictures (smooth gradients, shapes and noise), half JPEG, half PNG."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        y, x = np.mgrid[0:256, 0:320]
        base = np.stack([(x * (i + 1)) % 256, (y * 2 + i * 9) % 256, ((x + y) // 2) % 256], -1).astype(np.float32)
        img = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, 280)), int(rng.integers(0, 220))
            d.ellipse((x0, y0, x0 + int(rng.integers(10, 60)), y0 + int(rng.integers(10, 60))), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        p = folder / f"photo{i:02d}.{'jpg' if i % 2 else 'png'}"
        img.save(p, quality=90) if p.suffix == ".jpg" else img.save(p)
        out.append(p)
    return out


def manifest(folder: Path, files: list[Path], count: int) -> Path:
    """A manifest of ``count`` distinct paths: hard links to ``files`` in turn (no image bytes copied)."""
    links = folder / f"links{count}"
    links.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        src = files[i % len(files)]
        dst = links / f"img{i:06d}{src.suffix}"
        if not dst.exists():
            os.link(src, dst)
        names.append(str(dst))
    m = folder / f"manifest{count}.txt"
    m.write_text("\n".join(names) + "\n")
    return m


def build_small(work: Path) -> Path:
    """ResNet-18 FP32 (OpenVINO) at 64 px, for the memory rows."""
    import resnet_xray as rx

    small = work / "r18_64.xml"
    if not small.exists():
        rx.export(rx.load_model("resnet18", weights="random"), work / "r18_64.onnx", input_size=64, exporter="torchscript")
    return small


def build_unpruned(work: Path, calib: Path) -> Path:
    """ResNet-50 INT8 (OpenVINO, NNCF) at 224 px, random weights, by export + quantize."""
    import resnet_xray as rx

    if (work / "r50.int8.xml").exists():
        return work / "r50.int8.xml"
    r50 = rx.load_model("resnet50", weights="random")
    rx.export(r50, work / "r50.onnx", exporter="torchscript")
    res = rx.quantize(work / "r50.onnx", calib, work / "r50.int8.xml", engine="openvino", min_agreement=0.0,
                      time_check=False, progress=False)
    if not (work / "r50.int8.xml").exists():
        raise SystemExit(f"quantize wrote no INT8 model: {res.to_dict().get('agreement')}")
    return work / "r50.int8.xml"


def at_size(xml: Path, size: int, out: Path) -> Path:
    """``xml`` reshaped to batch 1 at ``size`` px, with the ImageNet pipeline for that size in its description."""
    from resnet_xray.deploy.openvino import inspect_ir, save_ir

    model, info = inspect_ir(xml, "--model")
    model.reshape({model.inputs[0].get_any_name(): [1, 3, size, size]})
    pre = {**info.meta.get("preprocessing", {}), "resize": round(size / 0.875), "crop": size,
           "source": f"ImageNet pipeline (Resize {round(size / 0.875)}, CenterCrop {size}, ImageNet mean/std)"}
    side = {**info.meta, "input_shape": [1, 3, size, size], "preprocessing": pre, "reshaped_from": str(xml)}
    return save_ir(model, out, side)


def benchmark_app(xml: Path, seconds: int) -> float | None:
    """OpenVINO's own throughput figure (FPS), or None where benchmark_app is missing."""
    tool = Path(sys.executable).parent / "benchmark_app"
    if not tool.exists():
        return None
    r = subprocess.run([str(tool), "-m", str(xml), "-d", "CPU", "-hint", "throughput", "-t", str(seconds)],
                       capture_output=True, text=True, timeout=seconds + 300)
    m = re.search(r"Throughput:\s+([\d.]+)\s+FPS", r.stdout)
    return float(m.group(1)) if m else None


def async_loop(xml: Path, seconds: float) -> float:
    """Our AsyncInferQueue loop (THROUGHPUT hint) on ready-made input: inference alone."""
    import numpy as np

    from resnet_xray.deploy.openvino import inspect_ir
    from resnet_xray.deploy.runtime import OpenVinoThroughput, images_per_second

    model, info = inspect_ir(xml)
    run = OpenVinoThroughput(model)
    x = np.random.default_rng(0).standard_normal((4 * run.requests, 3, info.image_size, info.image_size)).astype(np.float32)
    return images_per_second(run, x, seconds)


def classify_job(argv: list[str], log: Path) -> tuple[dict, int]:
    """``resnet-xray classify ... --json`` in a child process: its JSON document and its peak RSS (KiB)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "resnet_xray", "classify", *argv, "--json"], stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"classify failed ({status}): {log.with_suffix('.err').read_text()[-2000:]}")
    return json.loads(log.read_text()), usage.ru_maxrss


class _Files:
    """The plain baseline's dataset: paths -> PIL -> torchvision transforms (the ImageNet pipeline)."""

    def __init__(self, paths: list[str]):
        from torchvision import transforms as T

        self.paths = paths
        self.t = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.t(im.convert("RGB"))


def pytorch_loop(paths: list[str], workers: int, batch: int = 16) -> float:
    """A torch DataLoader with ``workers`` processes feeding eager FP32 ResNet-50: images/s after the first batch."""
    import torch
    import torchvision

    model = torchvision.models.resnet50().eval()
    loader = torch.utils.data.DataLoader(_Files(paths), batch_size=batch, num_workers=workers)
    n, t0 = 0, None
    with torch.inference_mode():
        for x in loader:
            model(x)
            if t0 is None:
                t0 = time.perf_counter()  # the first batch warms up the model and the workers
            else:
                n += len(x)
    return n / (time.perf_counter() - t0)


def _pytorch_row(q: multiprocessing.Queue, paths: list[str], workers: int) -> None:
    q.put(pytorch_loop(paths, workers))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2400, help="images for the classify and Ray rows")
    ap.add_argument("--baseline-images", type=int, default=160, help="images for the (slow) PyTorch row")
    ap.add_argument("--workers", type=int, default=2, help="decode workers for classify and the DataLoader")
    ap.add_argument("--ceiling-seconds", type=int, default=15)
    ap.add_argument("--model", help="an OpenVINO IR to run, e.g. out/bench_optimize/model.xml (default: an unpruned INT8 ResNet-50)")
    ap.add_argument("--size", type=int, default=224, help="the side --model is reshaped to")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--work", help="keep the models and images here (default: a temporary folder)")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from records import cpu_info, write_record

    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['isa']}, {cpu['logical_cores']} logical cores, {cpu['run']}); load {os.getloadavg()[0]:.1f}")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-batch-"))
    files = make_images(work / "photos")
    small = build_small(work)
    if args.model:
        int8 = at_size(Path(args.model), args.size, work / f"model.{args.size}px.xml")
    else:
        print("building ResNet-50 INT8 (export + quantize --engine openvino) ...", flush=True)
        int8 = build_unpruned(work, work / "photos")
    print(f"model: {args.model or 'unpruned ResNet-50, random weights, NNCF INT8'} at {args.size if args.model else 224} px", flush=True)
    figures = measure(args, work, files, int8, small)
    figures["model"] = args.model or "unpruned resnet50 int8 (nncf), random weights"
    ratios = {
        "vs_ceiling": figures["classify_img_s"] / (figures["benchmark_app_img_s"] or figures["async_loop_img_s"]),
        "vs_pytorch": figures["classify_img_s"] / figures["pytorch_img_s"],
        # per node over a long job, as a cluster multiplies it: both paths from ready to the last record, Ray's starting
        # of its actors included (the pace after the first batch flatters Ray: its tasks decode ahead while the actors start)
        "ray_vs_single": figures["ray_img_s"] / figures["classify_img_s"] if figures.get("ray_img_s") else None,
        "rss_20k_vs_2k": figures["rss_20k_kib"] / figures["rss_2k_kib"],
    }
    print("\nratio                          measured  goal")
    for k, v in ratios.items():
        goal = GOALS[k]
        ok = v is not None and (v <= goal if k.startswith("rss") else v >= goal)
        print(f"  {k:28s} {'' if v is None else f'{v:8.2f}x'}  {'<=' if k.startswith('rss') else '>='} {goal}x  "
              f"{'met' if ok else 'NOT met'}")
    write_record("bench_batch", {**figures, "ratios": ratios, "goals": GOALS, "workers": args.workers})
    return 0


def measure(args: argparse.Namespace, work: Path, files: list[Path], int8: Path, small: Path) -> dict:
    """Every row, printed as it is measured."""
    figures: dict = {"images": args.images, "baseline_images": args.baseline_images}
    figures["benchmark_app_img_s"] = benchmark_app(int8, args.ceiling_seconds)
    print(f"ceiling, benchmark_app -hint throughput:  {figures['benchmark_app_img_s']} img/s", flush=True)
    figures["async_loop_img_s"] = async_loop(int8, 5.0)
    print(f"ceiling, our AsyncInferQueue loop:        {figures['async_loop_img_s']:.1f} img/s", flush=True)
    m = manifest(work, files, args.images)
    doc, _ = classify_job(["--manifest", str(m), "--model", str(int8), "--out", str(work / "single.jsonl"), "--overwrite",
                           "--workers", str(args.workers), "--batch-size", "32"], work / "single.json")
    figures["classify_img_s"], figures["classify_engine"] = doc["images_per_s"], doc["engine"]
    figures["classify_steady_img_s"] = doc["steady_img_s"]
    print(f"classify --out (workers {args.workers}):           {doc['images_per_s']:.1f} img/s, {doc['steady_img_s']:.1f} after "
          f"the first batch ({doc['engine']}; setup {doc['setup_s']:.1f} s)", flush=True)
    paths = m.read_text().split()[: args.baseline_images]
    # in a fresh interpreter: its DataLoader workers, forked beside OpenVINO's threads in this process, crashed it on exit
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    child = ctx.Process(target=_pytorch_row, args=(q, paths, args.workers))
    child.start()
    figures["pytorch_img_s"] = q.get()
    child.join()
    print(f"PyTorch DataLoader + eager FP32 ResNet-50: {figures['pytorch_img_s']:.1f} img/s", flush=True)
    if not args.no_ray:
        doc, _ = classify_job(["--manifest", str(m), "--model", str(int8), "--out", str(work / "ray.jsonl"), "--overwrite",
                               "--batch-size", "32", "--ray"], work / "ray.json")
        figures["ray_img_s"], figures["ray_engine"], figures["ray_setup_s"] = doc["images_per_s"], doc["engine"], doc["setup_s"]
        figures["ray_steady_img_s"] = doc["steady_img_s"]
        print(f"classify --out --ray (local instance):    {doc['images_per_s']:.1f} img/s, {doc['steady_img_s']:.1f} after "
              f"the first batch ({doc['engine']}; Ray start {doc['setup_s']:.1f} s, not counted)", flush=True)
    for count, key in ((2000, "rss_2k_kib"), (20000, "rss_20k_kib")):
        mc = manifest(work, files, count)
        doc, rss = classify_job(["--manifest", str(mc), "--model", str(small), "--out", str(work / f"mem{count}.jsonl"),
                                 "--overwrite", "--batch-size", "32"], work / f"mem{count}.json")
        figures[key] = rss
        print(f"peak RSS, {count:6d} images (ResNet-18 64 px): {rss / 1024:.0f} MiB ({doc['images_per_s']:.0f} img/s)", flush=True)
    return figures


if __name__ == "__main__":
    sys.exit(main())
