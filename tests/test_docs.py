"""The README and the guides: links resolve, commands parse, no diary, tables match their records."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import sys
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "CHANGELOG.md"]
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DIARY = re.compile(r"\bsessions? [0-9]|\bturn [0-9]", re.I)
README_MAX_BYTES = 15 * 1024


def _module(name: str):
    """A module of benchmarks/ (not a package), imported by path."""
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((i, line))
    return out


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) inside fenced code blocks, backslash continuations joined."""
    out, fenced, pending, start = [], False, "", 0
    for i, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            continue
        if not pending:
            start = i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: inline markup dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text()):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(out)


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for i, line in prose_lines(path.read_text()):
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        found += [(i, m.group(1)) for m in LINK.finditer(line)]
    return found


def test_github_slug_matches_githubs_rules():
    assert github_slug("Checkpoints that survive `kill -9`, and `--resume`") == "checkpoints-that-survive-kill--9-and---resume"
    assert github_slug("Finding: why INT8 gains less on an AVX2-only CPU") == "finding-why-int8-gains-less-on-an-avx2-only-cpu"
    assert github_slug("Trace: every layer's output, one forward pass") == "trace-every-layers-output-one-forward-pass"


def broken_links(page: Path) -> list[str]:
    broken = []
    for line, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{page.name}:{line}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.name}:{line}: {target} (no heading gives #{anchor})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    if not page.exists():
        pytest.skip(f"{page.name} does not exist")
    broken = broken_links(page)
    assert not broken, "\n".join(broken)


def test_the_link_checker_can_fail(tmp_path):
    (tmp_path / "b.md").write_text("# Title\n## A `flag`, here\n```\n# not a heading\n```\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#a-flag-here) [ok](#top) ![pic](b.md) `[not a link](nowhere.md)`\n"
                    "[gone](c.md) [bad anchor](b.md#not-a-heading) [web](https://example.org/x)\n# Top\n")
    assert broken_links(page) == ["a.md:2: c.md (no such file)", "a.md:2: b.md#not-a-heading (no heading gives #not-a-heading)"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_development_diary(page):
    if not page.exists():
        pytest.skip(f"{page.name} does not exist")
    hits = [f"{page.name}:{i}: {line.strip()}" for i, line in enumerate(page.read_text().splitlines(), 1) if DIARY.search(line)]
    assert not hits, "\n".join(hits)


def test_readme_is_a_landing_page():
    text = README.read_text()
    assert len(text.encode()) <= README_MAX_BYTES, f"README.md is {len(text.encode())} bytes, over {README_MAX_BYTES}"
    first_block = re.search(r"```\n(.*?)```", text, re.S).group(1)
    assert first_block.splitlines()[0].startswith("make demo") and first_block.splitlines()[1].startswith("make test")
    for table in ("deploy", "optimize", "prune", "train", "trace"):
        assert f"<!-- results:{table} -->" in text, f"README has no {table} results table"


# --- commands in code blocks, checked against the real parser (never run) ---

def command_args(line: str) -> list[str] | None:
    """The arguments after `resnet-xray` (or `-m resnet_xray`) in a code line, or None if it runs neither."""
    line = line.strip()
    if line.startswith("$ "):
        line = line[2:]
    if not re.search(r"(^|\s)resnet-xray(\s|$)|-m\s+resnet_xray\s", line):
        return None
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as e:
        raise AssertionError(f"cannot split {line!r}: {e}") from None
    while tokens and (re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]) or tokens[0] in ("time", "sudo")):
        tokens = tokens[1:]
    if tokens and tokens[0] == "resnet-xray":
        return tokens[1:]
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] == "resnet_xray":
            return tokens[i + 2:]
    return None


@cache
def parser() -> argparse.ArgumentParser:
    from resnet_xray.cli import build_parser

    return build_parser()


def subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def check_command(args: list[str]) -> str | None:
    """Why ``args`` is not a real subcommand with real flags, or None."""
    words = [a.strip("[]").rstrip(",") for a in args]
    words = [w for w in words if w and w != "..."]
    p = parser()
    positional = [w for w in words if not w.startswith("-")]
    chain = [p]
    for w in positional:
        subs = subparsers(chain[-1])
        if not subs:
            break
        if w not in subs:
            return f"{w!r} is not a command here (known: {', '.join(subs)})"
        chain.append(subs[w])
    if len(chain) == 1 and "--help" not in words and "--version" not in words:
        return "no subcommand"
    known = {s for a in chain[-1]._actions for s in a.option_strings}
    for w in words:
        if w.startswith("-") and not re.match(r"^-\d", w) and w != "-":
            flag = w.split("=", 1)[0]
            if flag not in known:
                return f"{flag} is not a flag of `{' '.join(['resnet-xray', *positional[:len(chain) - 1]])}`"
    return None


def test_the_command_checker_can_fail():
    assert check_command(["classify", "cat.png", "--topk", "3"]) is None
    assert check_command(["show", "features", "cat.png", "--layer", "conv1", "[--channels", "first|top]"]) is None
    assert "not a flag" in check_command(["classify", "cat.png", "--no-such-flag"])
    assert "not a command" in check_command(["clasify", "cat.png"])
    assert command_args("$ OMP_NUM_THREADS=1 resnet-xray anatomy --summary  # a comment") == ["anatomy", "--summary"]
    assert command_args("torchrun --nproc_per_node=2 -m resnet_xray finetune DATA --out DIR") == ["finetune", "DATA", "--out", "DIR"]
    assert command_args("resnet-xray: error: --topk 0: must be at least 1") is None


def shown_commands(text: str) -> list[tuple[int, str]]:
    """Every command line of a code block, and every inline code span that starts with `resnet-xray `."""
    spans = [(i, span.replace("\\|", "|")) for i, line in prose_lines(text) for span in re.findall(r"`(resnet-xray [^`]*)`", line)]
    return code_lines(text) + spans


@pytest.mark.slow  # builds the full parser, which imports every command module (torch included)
def test_every_command_shown_parses():
    bad, seen = [], 0
    for page in PAGES:
        if not page.exists():
            continue
        for line_no, line in shown_commands(page.read_text()):
            args = command_args(line)
            if args is None:
                continue
            seen += 1
            why = check_command(args)
            if why:
                bad.append(f"{page.name}:{line_no}: {line.strip()}\n    {why}")
    assert seen >= 20, f"only {seen} commands found in code blocks: is the scan broken?"
    assert not bad, "\n".join(bad)


# --- results tables and benchmark records ---

def test_results_tables_match_the_records():
    results = _module("results")
    assert results.stale() == [], "run python benchmarks/results.py"
    assert results.main(["--check"]) == 0


def test_check_fails_when_a_table_drifts(tmp_path):
    results = _module("results")
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("<!-- results:prune -->\n| typed | by hand |\n<!-- /results:prune -->\n")
    assert results.stale(tmp_path, tmp_path / "none") == [tmp_path / "README.md"]
    text = results.rendered((tmp_path / "README.md").read_text(), {})
    assert "no record yet: run `python benchmarks/bench_prune.py" in text and "typed" not in text
    (tmp_path / "README.md").write_text(text)
    assert results.stale(tmp_path, tmp_path / "none") == []
    (tmp_path / "README.md").write_text("<!-- results:prune -->\n| typed |\n")
    with pytest.raises(SystemExit, match="without its closing"):
        results.stale(tmp_path, tmp_path / "none")


EPYC = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx fma avx2\n"
XEON = "model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\nflags\t\t: avx2 avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n"


def test_cpu_kind_names_model_isa_and_held_kernels():
    records = _module("records")
    assert records.cpu_info(EPYC, {})["kind"] == "AMD EPYC, AVX2"
    xeon = records.cpu_info(XEON, {})
    assert xeon["kind"] == "Intel Xeon, AMX" and xeon["run"] == "native" and "amx_int8" in xeon["flags"]
    held = records.cpu_info(XEON, {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert held["kind"] == "Intel Xeon, AMX held to AVX2" and held["run"] == "held to AVX2"
    # an AVX2-only CPU with the same caps set runs natively: nothing is held back
    assert records.cpu_info(EPYC, {"ATEN_CPU_CAPABILITY": "avx2"})["run"] == "native"
    vnni = "model name\t: AMD EPYC 9B14\nflags\t\t: avx2 avx512f avx512_vnni\n"
    assert records.cpu_info(vnni, {})["kind"] == "AMD EPYC, AVX-512 VNNI"


def test_cpu_kind_names_the_core_generation_when_cpuinfo_tells_it():
    records = _module("records")
    zen2 = "vendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\n" + EPYC
    info = records.cpu_info(zen2, {})
    assert info["kind"] == "AMD EPYC Zen 2, AVX2" and info["family_model"] == ["23", "49"] and info["generation"] == "Zen 2"
    # a family/model pair not in the table names no generation rather than a wrong one
    other = records.cpu_info(zen2.replace(": 49", ": 250"), {})
    assert other["kind"] == "AMD EPYC, AVX2" and other["generation"] is None
    spr = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n" + XEON
    assert records.cpu_info(spr, {"ATEN_CPU_CAPABILITY": "avx2"})["kind"] == "Intel Xeon Sapphire Rapids, AMX held to AVX2"


def test_records_of_different_cpu_kinds_do_not_overwrite_each_other(tmp_path, capsys):
    records = _module("records")
    results = _module("results")
    argv = ["benchmarks/bench_startup.py", "--repeats", "1"]
    figures = {"arch": "resnet18", "repeats": 1, "median_s": {}, "help_s": 0.1, "import_torch_s": 2.0, "classify_s": 2.4,
               "classify_vs_import_torch": 1.2, "goals": {"help_s": 0.5, "classify_ratio": 1.5}}
    a = records.write_record("bench_startup", figures, argv=argv, results_dir=tmp_path, cpu=records.cpu_info(EPYC, {}))
    b = records.write_record("bench_startup", {**figures, "help_s": 0.2}, argv=argv, results_dir=tmp_path,
                             cpu=records.cpu_info(XEON, {}))
    again = records.write_record("bench_startup", {**figures, "help_s": 0.3}, argv=argv, results_dir=tmp_path,
                                 cpu=records.cpu_info(EPYC, {}))
    assert a == again != b and sorted(p.name for p in tmp_path.iterdir()) == [
        "bench_startup.amd-epyc-avx2.json", "bench_startup.intel-xeon-amx.json"]
    doc = json.loads(a.read_text())
    assert doc["figures"]["help_s"] == 0.3 and doc["command"] == "python benchmarks/bench_startup.py --repeats 1"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", doc["date"]) and "revision" in doc["git"]
    loaded = records.load_records(tmp_path)
    assert [r["cpu"]["kind"] for r in loaded["bench_startup"]] == ["AMD EPYC, AVX2", "Intel Xeon, AMX"]
    table = results.render("startup", loaded)
    rows = [line for line in table.splitlines() if line.startswith("| AMD EPYC") or line.startswith("| Intel Xeon")]
    assert len(rows) == 4 and "0.30 s" in table and "0.20 s" in table  # each row names its CPU kind
    assert "no record yet" not in table


def test_a_record_refuses_bad_names_and_writes_nan_as_null(tmp_path, capsys):
    records = _module("records")
    with pytest.raises(ValueError):
        records.write_record("../x", {}, results_dir=tmp_path, cpu=records.cpu_info(EPYC, {}))
    path = records.write_record("bench_x", {"v": float("nan")}, argv=["x.py"], results_dir=tmp_path, cpu=records.cpu_info(EPYC, {}))
    assert json.loads(path.read_text())["figures"]["v"] is None
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed into place


# Figures shaped as each benchmark's write_record call builds them (benchmarks/bench_*.py, end of main).
FAKE_FIGURES = {
    "bench_deploy": {"arch": "resnet50", "weights": "random", "input_size": 224, "threads": 2, "peak_gflops": 200.0,
                     "rows": [{"path": "eager fp32", "batch": 1, "status": "ok", "note": "", "median_ms": 80.0, "iqr_ms": 5.0,
                               "images_per_s": 12.5, "speedup": 1.0, "gflops": 102.0, "peak_share": 0.51},
                              {"path": "ort int8", "batch": 1, "status": "skipped", "note": "no calib", "median_ms": None,
                               "iqr_ms": None, "images_per_s": None, "speedup": None, "gflops": None, "peak_share": None}],
                     "int8_top1_agreement": None},
    "bench_optimize": {"checkpoint": "best.pt", "baseline_accuracy": 0.996, "max_drop_points": 1.0, "timing_size": 224,
                       "seconds": 500.0, "winner": "pruned openvino int8 (nncf)", "winner_ms": 3.7, "winner_accuracy": 0.994,
                       "winner_vs_peer": 1.22, "winner_vs_eager": 20.6, "unpruned_int8": "openvino int8 (qdq)",
                       "best_fp32": "openvino fp32", "unpruned_int8_vs_fp32": 6.7, "unpruned_int8_agreement": 1.0,
                       "candidates": [{"name": "eager fp32", "latency_ms": 77.0, "accuracy": 0.996, "agreement": 1.0,
                                       "status": "kept"}]},
    "bench_prune": {"arch": "resnet50", "weights": "best.pt", "input_size": 96, "importance": "l1", "steps": 2,
                    "finetune_epochs": 3, "threads": 1, "macs_before": 7.5e8, "macs_after": 3.7e8, "macs_kept": 0.496,
                    "latency_ms": {"unpruned eager FP32": 31.0}, "accuracy": {"unpruned eager FP32": 0.896},
                    "accuracy_lost_fp32_points": -0.4, "accuracy_lost_int8_points": -1.0, "ort_fp32_speedup": 1.81,
                    "pruned_int8_vs_eager": 13.7},
    "bench_train_reference": {"arch": "resnet50", "epochs": 5, "args": ["--batch-size", "32", "--workers", "0", "--amp"],
                              "threads": 2, "final_accuracy": 0.948, "best_accuracy": 0.948, "minutes": 3.0,
                              "minutes_to": {"0.85": 2.1, "0.90": None}, "epoch_accuracy": [0.1, 0.948]},
    "bench_train_throughput": {"arch": "resnet50", "size": 96, "batch_size": 32, "workers": 0, "steps": 12, "rounds": 2,
                               "threads": 2, "images_per_s": {"recipe": 26.8, "ours": 27.4}},
    "bench_optimizer": {"arch": "resnet50", "steps": 9, "ns_steps": 3, "threads": 2, "step_ms": {"SGD, fused (finetune's)": 20.0},
                        "newton_schulz_plain_ms": 90.0, "newton_schulz_gram_ms": 60.0},
    "bench_transfer": {"backbone": "best.pt", "size": 64, "epochs": 6, "fc_epochs": 5,
                       "runs": {"from scratch": {"best_accuracy": 0.36, "minutes": 1.09}}},
    "bench_report": {"arch": "resnet50", "gradflow": True, "wall_s": 15.2, "cpu_s": 16.5, "peak_rss_mb": 1256.0, "html_mb": 4.9,
                     "plain_forward_s": 0.07, "trace_ratio": 1.2, "trace_ratio_with_maps": 1.3, "repeats": 25,
                     "goals": {"wall_s": 20.0, "rss_mb": 2048, "trace_ratio": 1.25}},
    "bench_trace": {"arch": "resnet50", "size": 224, "engine": "codegen", "goal": 1.25,
                    "runs": [{"threads": 2, "ratio_median": 1.23, "ratio_paired": 1.22}]},
    "bench_hostile": {"families": {"memory": {"cases": 3, "skipped": 0, "exit_codes": {"0": 1, "2": 2}, "tracebacks": 0, "hangs": 0,
                                              "over_memory_cap": 0, "max_peak_rss_mb": 834.0, "files_left": 0,
                                              "inputs_damaged": 0, "not_as_expected": 0}},
                      "cases": [], "timeout_s": 60, "mem_cap_gb": 4, "as_limit_gb": 8, "repeats": 1, "all_as_expected": True},
    "bench_startup": {"arch": "resnet18", "repeats": 3, "median_s": {}, "help_s": 0.2, "import_torch_s": 7.0, "classify_s": 8.0,
                      "classify_vs_import_torch": 1.14, "goals": {"help_s": 0.5, "classify_ratio": 1.5}},
}


def _written_figures(name: str) -> dict:
    """The figures of a committed record, for benchmarks whose figures are too many to write out here."""
    path = next((ROOT / "benchmarks" / "results").glob(f"{name}.*.json"))
    return json.loads(path.read_text())["figures"]


def test_every_table_renders_records_shaped_as_the_benchmarks_write_them(tmp_path, capsys):
    records, results = _module("records"), _module("results")
    written = ("bench_batch", "bench_equalize", "bench_explore", "bench_int8_pareto", "bench_layers", "bench_optimize",
               "bench_optimize_10epoch", "bench_optimize_distill", "bench_int8_time")
    every = {**FAKE_FIGURES, **{name: _written_figures(name) for name in written}}
    cpu = records.cpu_info(XEON, {})
    for name, figures in every.items():
        records.write_record(name, figures, argv=[f"benchmarks/{name}.py"], results_dir=tmp_path, cpu=cpu)
    loaded = records.load_records(tmp_path)
    assert set(loaded) == set(every)
    for table_id in results.TABLES:
        text = results.render(table_id, loaded)
        assert "no record yet" not in text, table_id
        assert "| Intel Xeon, AMX |" in text, table_id  # every row names its CPU kind
    assert "| Intel Xeon, AMX | resnet50, 5 epochs, bf16 autocast | 2.1 min | not reached | 94.8% | 3.0 min |" in results.render("train", loaded)
    assert "| skipped |" in results.render("deploy", loaded)
    broken = {**loaded, "bench_prune": [{**loaded["bench_prune"][0], "figures": {"arch": "resnet50"}}]}
    with pytest.raises(SystemExit, match="cannot fill table 'prune'"):
        results.render("prune", broken)


def test_bench_optimize_figures_fill_the_optimize_tables(tmp_path, capsys):
    from resnet_xray.deploy.optimize import Candidate

    records, results, bench = _module("records"), _module("results"), _module("bench_optimize")

    def cand(name, engine, precision, pruned, ms, path="m.xml", status="kept"):
        return Candidate(name, engine, precision, pruned, 0.5 if pruned else 1.0, path, accuracy=0.99, agreement=1.0,
                         val_agreement=1.0, latency_ms=ms, status=status)

    cands = [cand("eager fp32", "eager", "fp32", False, 80.0, path=None), cand("openvino fp32", "openvino", "fp32", False, 40.0),
             cand("openvino int8 (nncf)", "openvino", "int8", False, 20.0),
             cand("pruned openvino int8 (nncf)", "openvino", "int8", True, 10.0, status="winner")]
    search = [{"macs_ratio": 0.5, "macs_rel": 0.5, "accuracy": 0.99, "drop_points": 0.5, "distill": True, "within_budget": True,
               "checkpoint": "prune/macs_0.50/pruned.pt", "seconds": 90.0}]
    res = SimpleNamespace(candidates=cands, winner=cands[-1], baseline_accuracy=0.995, max_drop=1.0, timing_size=224, seconds=1.0,
                          search=search, options=SimpleNamespace(min_agreement=0.0))
    figures = bench.optimize_figures(res, "best.pt")
    assert figures["winner_vs_peer"] == 2.0 and figures["winner_vs_eager"] == 8.0 and figures["unpruned_int8_vs_fp32"] == 2.0
    records.write_record("bench_optimize", figures, argv=["benchmarks/bench_optimize.py"], results_dir=tmp_path,
                         cpu=records.cpu_info(EPYC, {}))
    table = results.render("optimize", records.load_records(tmp_path))
    # no batch-16 figures: optimize_figures leaves them to the benchmark's own timing
    assert "| AMD EPYC, AVX2 | pruned openvino int8 (nncf) | 50.0% | 10.0 | 2.00x | 8.00x | -0.5 | n/a | 2.00x | 100.0% |" in table
    # each INT8 file against its own engine's FP32 file of the same model; no pruned FP32 file here, so no pruned rows
    engines = results.render("int8-engines", records.load_records(tmp_path))
    assert "| AMD EPYC, AVX2 | best.pt, unpruned | openvino int8 (nncf) | 2.00x | 100.0% |  | kept |" in engines
    assert "pruned openvino" not in engines
    search_table = results.render("optimize-search", records.load_records(tmp_path))
    assert "| AMD EPYC, AVX2 | 50.0% | 50.0% | 99.0% | -0.5 | yes | within | 1.5 min |" in search_table
