"""Render the Results tables of README.md and docs/*.md from the records in benchmarks/results/.

A table lives between two markers, ``<!-- results:ID -->`` and ``<!-- /results:ID -->``; this
script replaces what lies between them with the table that the records give. Every row names
its CPU kind; a table whose benchmark has no record yet says so and names the command that
makes one. Nothing in a table is typed by hand.

    python benchmarks/results.py           # rewrite the tables
    python benchmarks/results.py --check   # exit 1 when a table differs from what the records give
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from records import RESULTS_DIR, ROOT, load_records  # noqa: E402

Row = list[str]
MARKER = re.compile(r"(<!-- results:([a-z0-9-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def _ms(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "n/a"


def _x(v: Any) -> str:
    return f"{v:.2f}x" if isinstance(v, (int, float)) else "n/a"


def _pct(v: Any) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) else "n/a"


def _pts(v: Any) -> str:
    return f"{v:+.1f}" if isinstance(v, (int, float)) else "n/a"


def _min(v: Any) -> str:
    return f"{v:.1f} min" if isinstance(v, (int, float)) else "not reached"


@dataclass(frozen=True)
class Table:
    records: tuple[str, ...]  # record names whose rows this table shows, in order
    header: tuple[str, ...]  # the columns after "CPU"
    rows: Callable[[dict[str, Any]], Iterable[Row]]  # one record -> its rows (without the CPU cell)
    commands: tuple[str, ...]  # what makes each record, named in a row where none exists yet


def deploy_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    # the weights decide whether INT8 passes its check, so the row says which weights were timed
    model = f"{f['arch']} {f['input_size']} px, {f.get('weights') or 'weights not recorded'}"
    for i, r in enumerate(f["rows"]):
        model = model if i == 0 else ""  # named once per record: the README stays a landing page
        if r["status"] == "ok":
            yield [model, r["path"], str(r["batch"]), _ms(r["median_ms"]), _x(r["speedup"])]
        else:
            yield [model, r["path"], str(r["batch"]), r["status"], ""]


def deploy_full_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    for r in f["rows"]:
        if r["status"] != "ok":
            yield [r["path"], str(r["batch"]), r["status"], "", "", "", "", ""]
            continue
        share = f"{r['peak_share']:.0%}" if isinstance(r.get("peak_share"), (int, float)) else ""
        gflops = f"{r['gflops']:.0f}" if isinstance(r.get("gflops"), (int, float)) else ""
        yield [r["path"], str(r["batch"]), _ms(r["median_ms"]), _ms(r["iqr_ms"]), _ms(r["images_per_s"]), _x(r["speedup"]),
               gflops, share]


def optimize_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    drop = (100 * (f["winner_accuracy"] - f["baseline_accuracy"])
            if isinstance(f.get("winner_accuracy"), (int, float)) and isinstance(f.get("baseline_accuracy"), (int, float)) else None)
    b16 = f.get("batch16_img_s") or {}
    yield [f["winner"] or "none within budget", _pct(f.get("winner_macs_rel")), _ms(f["winner_ms"]), _x(f["winner_vs_peer"]),
           _x(f["winner_vs_eager"]), _pts(drop), _x(b16["winner"] / b16["peer"] if b16.get("peer") else None),
           _x(f["unpruned_int8_vs_fp32"]), _pct(f["unpruned_int8_agreement"])]


def optimize_search_rows(rec: dict[str, Any]) -> Iterable[Row]:
    for s in rec["figures"].get("search") or []:
        yield [_pct(s["macs_ratio"]), _pct(s["macs_rel"]), _pct(s["accuracy"]), _pts(-s["drop_points"]),
               "yes" if s["distill"] else "no", "within" if s["within_budget"] else "over", _min(s["seconds"] / 60)]


def distill_rows(rec: dict[str, Any]) -> Iterable[Row]:
    for r in rec["figures"]["rows"]:
        yield [_pct(r["macs_ratio"]), _pct(r["with"]), _pct(r["without"]), _pts(r["gain_points"])]


def int8_time_rows(rec: dict[str, Any]) -> Iterable[Row]:
    rows = rec["figures"]["rows"]
    base = rows[0]["end_to_end_ms"]
    for r in rows:
        share = r["share"]
        pools = share.get("maxpool", 0) + share.get("avgpool", 0)
        kernels = ", ".join(f"{k} {v:.0%}" for k, v in list(r["kernel_share"].items())[:2])
        yield [r["label"], _pct(r["macs_share"]), _ms(r["end_to_end_ms"]), _x(base / r["end_to_end_ms"]),
               f"{r['conv_gmac_s']:.0f}", _pct(share.get("conv")), _pct(share.get("fc", 0)), _pct(pools),
               _pct(share.get("other", 0)), kernels]


def optimize_candidate_rows(rec: dict[str, Any]) -> Iterable[Row]:
    for c in rec["figures"]["candidates"]:
        ctl = c.get("control_agreement")
        yield [c["name"], _ms(c["latency_ms"]), _pct(c["accuracy"]), _pct(c["agreement"]), _pct(ctl) if ctl is not None else "",
               c["status"]]


def int8_engine_rows(rec: dict[str, Any]) -> Iterable[Row]:
    """Each INT8 file of an optimize run against the same engine's FP32 file of the same model (unpruned or pruned)."""
    f = rec["figures"]
    by = {c["name"]: c for c in f["candidates"]}
    kept = [s["macs_rel"] for s in f.get("search") or [] if s["within_budget"]]  # the deepest pruned model within budget
    for prefix in ("", "pruned "):
        for engine in ("ort", "openvino"):
            fp32 = by.get(f"{prefix}{engine} fp32")
            if not fp32 or not fp32["latency_ms"]:
                continue
            for name, c in by.items():
                if not name.startswith(f"{prefix}{engine} int8") or not c["latency_ms"]:
                    continue
                # val agreement with its own FP32 model (records before val_agreement: the checkpoint's, for the unpruned model)
                val = c.get("val_agreement", c["agreement"] if not prefix else None)
                yield [f"{f['checkpoint']}, " + (f"pruned to {kept[-1]:.0%} of the MACs" if prefix and kept else prefix.strip() or "unpruned"),
                       name, _x(fp32["latency_ms"] / c["latency_ms"]), _pct(val) if val is not None else "not measured",
                       _pct(c.get("control_agreement")) if c.get("control_agreement") is not None else "", c["status"]]


def equalize_rows(rec: dict[str, Any]) -> Iterable[Row]:
    """One row per model and INT8 route: agreement on control and on val, plain and cross-layer equalised."""
    got: dict[tuple[str, str], dict[bool, dict[str, Any]]] = {}
    for r in rec["figures"]["rows"]:
        got.setdefault((r["model"], r["route"]), {})[r["equalized"]] = r
    for (model, route), pair in got.items():
        plain, eq = pair.get(False, {}), pair.get(True, {})
        yield [model, route, _pct(plain.get("control_agreement")), _pct(eq.get("control_agreement")),
               _pct(plain.get("val_agreement")), _pct(eq.get("val_agreement"))]


def int8_pareto_rows(rec: dict[str, Any]) -> Iterable[Row]:
    """Agreement with FP32 (control, val) of one INT8 model by calibration size, then by layers kept in float, with speed."""
    f = rec["figures"]
    timed = {r["calibration_images"] for r in f["float"]}  # that calibration's row comes with the float rows, timed
    for r in (r for r in f["calibration"] if r["calibration_images"] not in timed):
        yield [f"{r['calibration_images']} calibration images", "none", _pct(r["ort_control"]), "", _pct(r["ort_val"]),
               _pct(r["openvino_val"]), "", ""]
    for r in f["float"]:
        x = r["vs_openvino_fp32"]
        large = f"{r['ort_control_large']:.2%} of {r['control_large_images']}" if "ort_control_large" in r else ""
        yield [f"{r['calibration_images']} calibration images", f"{r['float']} ({r['float_layers']} layers)", _pct(r["ort_control"]),
               large, _pct(r["ort_val"]), _pct(r["openvino_val"]), _x(x["f32"]), _x(x["bf16"]) if "bf16" in x else "no native bf16"]


def prune_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    yield [f"{f['arch']} {f['input_size']} px, {f['importance']}, {f['steps']} x {f['finetune_epochs']} epochs", _pct(f["macs_kept"]),
           _pts(-f["accuracy_lost_fp32_points"]), _x(f["ort_fp32_speedup"]), _x(f["pruned_int8_vs_eager"]),
           _pts(-f["accuracy_lost_int8_points"])]


def train_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    to = f.get("minutes_to", {})
    precision = f.get("precision") or ("bf16 autocast" if "--amp" in f.get("args", []) else "fp32")
    yield [f"{f['arch']}, {f['epochs']} epochs, {precision}", _min(to.get("0.85")), _min(to.get("0.90")), _pct(f["final_accuracy"]),
           _min(f["minutes"])]


def trace_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    if rec["name"] == "bench_trace":
        for r in f["runs"]:
            yield [f"trace / plain forward, {f['arch']} {f['size']} px, {r['threads']} thread{'s' if r['threads'] != 1 else ''}", _x(r["ratio_median"]),
                   f"<= {f['goal']}x"]
    else:
        g = f["goals"]
        yield [f"`report`, {f['arch']}, wall time (fresh process)", f"{f['wall_s']:.1f} s", f"<= {g['wall_s']:.0f} s"]
        yield [f"`report`, {f['arch']}, peak RSS", f"{f['peak_rss_mb']:.0f} MB", f"< {g['rss_mb']} MB"]


def startup_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    g = f["goals"]
    yield ["`resnet-xray --help`", f"{f['help_s']:.2f} s", f"<= {g['help_s']} s"]
    yield [f"`classify` (1 image, {f['arch']}, random weights) / `import torch, torchvision`", _x(f["classify_vs_import_torch"]),
           f"<= {g['classify_ratio']}x"]


def explore_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    g = f["goals"]
    yield [f"first page after the server is up ({f['via']})", f"{f['first_page_s']:.2f} s", f"<= {g['first_page_s']:g} s"]
    yield [f"click on a traced layer until its maps are drawn (median of {len(f['click_ms_all'])})", f"{f['click_ms']:.0f} ms",
           f"<= {g['click_ms']:g} ms"]
    yield [f"new photo ({f['new_photo_s']:.2f} s) / `rx.trace` of it ({f['trace_s']:.2f} s)", _x(f["new_photo_ratio"]),
           f"<= {g['new_photo_ratio']:g}x"]
    yield [f"peak RSS, two {f['arch']} compared", f"{f['rss_two_models_gb']:.2f} GB", f"< {g['rss_two_models_gb']:g} GB"]


def batch_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    r, g = f["ratios"], f["goals"]
    model = f.get("model", "unpruned resnet50 int8 (nncf), random weights")
    yield [f"`classify --out` with {model}, {f['classify_engine']}, {f['workers']} workers, decode included",
           f"{f['classify_img_s']:.1f} img/s", "", ""]
    yield ["OpenVINO `benchmark_app -hint throughput`, inference alone (ratio: `classify --out` / this ceiling)",
           f"{f['benchmark_app_img_s']:.1f} img/s",
           _x(r["vs_ceiling"]), f">= {g['vs_ceiling']:g}x"]
    yield [f"PyTorch DataLoader + eager FP32, {f['workers']} workers (ratio: `classify --out` / this)", f"{f['pytorch_img_s']:.1f} img/s",
           _x(r["vs_pytorch"]),
           f">= {g['vs_pytorch']:g}x"]
    yield [f"`classify --out --ray` on this machine, {f['ray_engine']}, {f['images']} images, actor start included (ratio: this / "
           f"`classify --out`)", f"{f['ray_img_s']:.1f} img/s", _x(r["ray_vs_single"]),
           f">= {g['ray_vs_single']:g}x"]
    yield ["peak RSS at 20,000 images / at 2,000", f"{f['rss_20k_kib'] / 1024:.0f} MiB", _x(r["rss_20k_vs_2k"]),
           f"<= {g['rss_20k_vs_2k']:g}x"]


def layers_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    for path, e2e in f["end_to_end_ms"].items():
        yield [f"{f['model']} {f['input_size']} px, {path}: per-layer sum / end to end", f"{f['layer_sum_ms'][path]:.1f} / {e2e:.1f} ms",
               _pct(f["sum_ratio"][path]), "85% to 115%"]
    yield [f"`layers` (2 engines, `--against`, {f['images']} images) / one `bench --model` of the same files",
           f"{f['layers_s']:.0f} s / {f['bench_s']:.0f} s", _x(f["layers_over_bench"]), "<= 3x"]


def throughput_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    ips = f["images_per_s"]
    for name, v in ips.items():
        yield [f"{f['arch']} {f['size']} px, batch {f['batch_size']}", name, f"{v:.1f}", _x(v / ips["recipe"])]


def optimizer_rows(rec: dict[str, Any]) -> Iterable[Row]:
    f = rec["figures"]
    for name, v in f["step_ms"].items():
        yield [f["arch"], name, _ms(v)]


def transfer_rows(rec: dict[str, Any]) -> Iterable[Row]:
    for name, r in rec["figures"]["runs"].items():
        yield [name, _pct(r["best_accuracy"]), f"{r['minutes']:.2f}"]


def hostile_rows(rec: dict[str, Any]) -> Iterable[Row]:
    for family, f in rec["figures"]["families"].items():
        codes = " ".join(f"{k}: {v}" for k, v in f["exit_codes"].items())
        yield [family, str(f["cases"]), codes, str(f["tracebacks"]), str(f["hangs"]), f"{f['max_peak_rss_mb']:.0f}",
               str(f["files_left"]), str(f["inputs_damaged"]), str(f["not_as_expected"])]


TABLES: dict[str, Table] = {
    "deploy": Table(("bench_deploy",), ("model", "path", "batch", "median ms", "vs eager FP32"), deploy_rows,
                    ("python benchmarks/bench_deploy.py",)),
    "deploy-full": Table(("bench_deploy",), ("path", "batch", "median ms", "IQR ms", "img/s", "vs eager FP32", "GFLOP/s",
                                             "% of FP32 peak"), deploy_full_rows, ("python benchmarks/bench_deploy.py",)),
    "optimize": Table(("bench_optimize",), ("winner", "MACs", "ms", "vs unpruned OpenVINO INT8", "vs eager FP32", "accuracy (points)",
                                            "batch 16 vs unpruned OpenVINO INT8", "unpruned INT8 vs best FP32", "INT8 agreement"),
                      optimize_rows,
                      ("python benchmarks/bench_optimize.py --checkpoint out/reference/resnet50/best.pt --data out/reference/data",)),
    "optimize-candidates": Table(("bench_optimize",), ("candidate", "ms", "accuracy", "agreement with the checkpoint",
                                                       "INT8 agreement with its FP32 (control)", "status"),
                                 optimize_candidate_rows,
                                 ("python benchmarks/bench_optimize.py --checkpoint out/reference/resnet50/best.pt --data out/reference/data",)),
    "int8-engines": Table(("bench_optimize", "bench_optimize_10epoch"),
                          ("model", "INT8 file", "vs the same engine's FP32", "agreement with its FP32 (val)",
                           "agreement with its FP32 (control)", "status in optimize"), int8_engine_rows,
                          ("python benchmarks/bench_optimize.py --checkpoint out/reference/resnet50/best.pt --data out/reference/data "
                           "--control out/control/val",
                           "python benchmarks/bench_optimize.py --checkpoint out/reference10/resnet50/best.pt --search '' "
                           "--control out/control/val --out out/bench_optimize10 --record bench_optimize_10epoch")),
    "equalize": Table(("bench_equalize",), ("model", "INT8 route", "control, plain", "control, equalised", "val, plain",
                                            "val, equalised"), equalize_rows,
                      ("python benchmarks/bench_equalize.py --work out/bench_optimize/work --control out/control/val",)),
    "int8-pareto": Table(("bench_int8_pareto",), ("INT8 model", "kept in float", "ORT control", "ORT, larger control", "ORT val",
                                                  "OpenVINO val", "OpenVINO vs FP32, f32 float layers", "bf16 float layers"),
                         int8_pareto_rows,
                         ("python benchmarks/bench_int8_pareto.py --work out/bench_optimize/work --control out/control/val "
                          "--control-large out/control3k/val",)),
    "optimize-search": Table(("bench_optimize",), ("MACs asked", "MACs reached", "accuracy", "change (points)", "distilled", "budget",
                                                   "time"), optimize_search_rows,
                             ("python benchmarks/bench_optimize.py --checkpoint out/reference/resnet50/best.pt --data out/reference/data",)),
    "optimize-distill": Table(("bench_optimize_distill",), ("MACs", "accuracy with distillation", "without", "gain (points)"),
                              distill_rows, ("python benchmarks/bench_optimize.py --distill-ablation",)),
    "int8-time": Table(("bench_int8_time",), ("model", "MACs", "ms", "vs unpruned", "conv GMAC/s", "conv", "fc", "pooling",
                                              "other", "top kernels"), int8_time_rows, ("python benchmarks/bench_int8_time.py",)),
    "prune": Table(("bench_prune",), ("run", "MACs kept", "accuracy, pruned FP32 (points)", "ORT FP32 pruned vs unpruned",
                                      "pruned ORT INT8 vs unpruned eager", "accuracy, pruned INT8 (points)"), prune_rows,
                   ("python benchmarks/bench_prune.py --weights out/reference/resnet50/best.pt --data out/reference/data",)),
    "train": Table(("bench_train_reference",), ("run", "to 85%", "to 90%", "final accuracy", "wall time"), train_rows,
                   ("python benchmarks/bench_train.py out/reference/data --reference --arch resnet50 --amp",)),
    "trace": Table(("bench_trace", "bench_report"), ("measurement", "measured", "goal"), trace_rows,
                   ("python benchmarks/bench_trace.py --repeats 25 --threads 2,1 --engines codegen",
                    "python benchmarks/bench_report.py")),
    "batch": Table(("bench_batch",), ("row", "measured", "ratio", "goal"), batch_rows,
                   ("python benchmarks/bench_batch.py --model out/bench_optimize/model.xml",)),
    "layers": Table(("bench_layers",), ("measurement", "measured", "ratio", "goal"), layers_rows,
                    ("python benchmarks/bench_layers.py",)),
    "explore": Table(("bench_explore",), ("measurement", "measured", "goal"), explore_rows, ("python benchmarks/bench_explore.py",)),
    "startup": Table(("bench_startup",), ("measurement", "measured", "goal"), startup_rows, ("python benchmarks/bench_startup.py",)),
    "train-throughput": Table(("bench_train_throughput",), ("setting", "loop", "images/s", "vs recipe"), throughput_rows,
                              ("python benchmarks/bench_train.py out/reference/data --amp",)),
    "optimizer-step": Table(("bench_optimizer",), ("model", "optimizer", "step ms"), optimizer_rows,
                            ("python benchmarks/bench_optimizer.py --arch resnet50",)),
    "hostile": Table(("bench_hostile",), ("family", "cases", "exit codes", "tracebacks", "hangs", "peak RSS MB", "files left",
                                          "inputs damaged", "not as expected"), hostile_rows, ("python benchmarks/bench_hostile.py",)),
    "transfer": Table(("bench_transfer",), ("run", "best val accuracy", "minutes"), transfer_rows,
                      ("python benchmarks/bench_transfer.py out/reference/resnet50/best.pt out/transfer/data",)),
}


def render(table_id: str, records: dict[str, list[dict[str, Any]]]) -> str:
    """The Markdown for one table: the table, then one line per record naming its command, date and revision."""
    t = TABLES[table_id]
    header = ("CPU", *t.header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    sources = []
    found = [rec for name in t.records for rec in records.get(name, [])]
    for rec in found:
        try:
            rows = list(t.rows(rec))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            raise SystemExit(f"results: the {rec['name']} record for {rec['cpu']['kind']} cannot fill table {table_id!r}: "
                             f"{type(e).__name__}: {e}") from None
        for row in rows:
            lines.append("| " + " | ".join([rec["cpu"]["kind"], *row]) + " |")
        rev = (rec.get("git") or {}).get("revision") or "unknown"
        dirty = " with uncommitted changes" if (rec.get("git") or {}).get("dirty") else ""
        load = rec.get("load_average")
        load_s = f", load average {load[0]:.1f}" if load else ""
        cpu = rec["cpu"]
        named = " ".join(filter(None, (cpu["model"], cpu.get("generation"))))
        sources.append(f"`{rec['command']}` on {rec['date'][:10]}, revision {rev[:10]}{dirty}, "
                       f"{named} ({cpu['logical_cores']} logical cores, {cpu['run']}{load_s})")
    for name, command in zip(t.records, t.commands):
        if not records.get(name):
            lines.append("| " + " | ".join([f"no record yet: run `{command}`", *[""] * len(t.header)]) + " |")
    out = "\n".join(lines) + "\n"
    if sources:
        out += "\n" + "\n".join(f"{'Source' if i == 0 else 'and'}: {s}" + ("  " if i < len(sources) - 1 else "")
                                for i, s in enumerate(sources)) + "\n"
    return out


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def rendered(text: str, records: dict[str, list[dict[str, Any]]], where: str = "") -> str:
    """``text`` with every marked table replaced by what the records give."""
    def sub(m: re.Match) -> str:
        if m.group(2) not in TABLES:
            raise SystemExit(f"results: {where}: unknown table {m.group(2)!r} (known: {', '.join(TABLES)})")
        return m.group(1) + render(m.group(2), records) + m.group(4)

    opened = re.findall(r"<!-- results:([a-z0-9-]+) -->", text)
    closed = [m.group(2) for m in MARKER.finditer(text)]
    if opened != closed:
        unclosed = sorted(set(opened) - set(closed)) or opened
        raise SystemExit(f"results: {where}: table marker without its closing <!-- /results:ID -->: {', '.join(unclosed)}")
    return MARKER.sub(sub, text)


def stale(root: Path = ROOT, results_dir: Path | None = None) -> list[Path]:
    """The documents whose tables differ from what the records give."""
    records = load_records(results_dir or RESULTS_DIR)
    return [p for p in documents(root) if p.exists() and rendered(p.read_text(), records, str(p)) != p.read_text()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table differs from the records")
    args = ap.parse_args(argv)
    records = load_records()
    changed = []
    for path in documents():
        if not path.exists():
            continue
        text = path.read_text()
        new = rendered(text, records, str(path.relative_to(ROOT)))
        if new != text:
            changed.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    if args.check:
        if changed:
            print("results: tables differ from benchmarks/results/ in " + ", ".join(map(str, changed))
                  + "; run python benchmarks/results.py", file=sys.stderr)
            return 1
        print("results: every table matches its records")
        return 0
    print("results: rewrote " + (", ".join(map(str, changed)) if changed else "nothing (already current)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
