"""The hostile-case harness counts what it claims: tracebacks, hangs, memory kills, leftovers, damaged inputs."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench_hostile():
    if "bench_hostile" in sys.modules:
        return sys.modules["bench_hostile"]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_hostile", ROOT / "benchmarks" / "bench_hostile.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_hostile"] = mod
    spec.loader.exec_module(mod)
    return mod


bh = _bench_hostile()


def _py(code: str, **kw):
    """A case whose command is ``python -c code`` (the machinery, without the CLI's start-up)."""
    return bh.Case("test", kw.pop("name", "fake"), (), kw.pop("expect", "exit 2"), argv=(sys.executable, "-c", code), **kw)


def _run(case, tmp_path, **kw):
    return bh.run_case(case, None, tmp_path, **{"timeout": 20.0, "mem_cap_mb": 4096, **kw})


def test_traceback_and_leftover_files_are_counted(tmp_path):
    code = ("open('.resnet-xray.lock', 'w'); open('.best.tmp-1.pt', 'w'); open('result.txt', 'w');"
            "import os; os.mkdir('.quantize-ab'); open('.quantize-ab/m.onnx', 'w'); raise ValueError('boom')")
    r = _run(_py(code), tmp_path)
    assert r.rc == 1 and r.traceback and not r.hung and not r.over_cap
    assert r.left == [".best.tmp-1.pt", ".quantize-ab", ".resnet-xray.lock"]  # the folder once, result.txt not junk
    assert not r.as_expected
    assert r.failures[0] == "exit 1, expected 2" and "traceback" in r.failures
    assert any(f.startswith("left behind: ") for f in r.failures)
    assert r.message == "ValueError: boom" and r.peak_rss_mb > 0


def test_damaged_input_and_forbidden_output_are_counted(tmp_path):
    case = _py("open('ds/a.txt', 'a').write('x'); open('ds/new.txt', 'w'); import os; os.remove('ck.pt'); os.mkdir('out');"
               "raise SystemExit(2)", guard=("ds", "ck.pt"), absent=("out",), prepare=_inputs)
    r = _run(case, tmp_path)
    assert r.rc == 2 and not r.traceback
    assert r.damaged == ["ck.pt (removed)", "ds/a.txt (changed)", "ds/new.txt (added)"]
    assert r.left == ["out"] and not r.as_expected


def _inputs(d: Path) -> None:
    (d / "ds").mkdir()
    (d / "ds" / "a.txt").write_text("a")
    (d / "ck.pt").write_bytes(b"weights")


def test_clean_refusal_is_as_expected(tmp_path):
    case = _py("import sys; open('ds/a.txt'); print('resnet-xray: error: no', file=sys.stderr); sys.exit(2)",
               guard=("ds",), prepare=_inputs, stderr_has=("error",), stderr_lacks=("did you mean",))
    r = _run(case, tmp_path)
    assert r.as_expected, r.failures
    assert r.rc == 2 and r.left == [] and r.damaged == [] and r.message == "resnet-xray: error: no"


def test_expected_words_on_stderr_are_checked(tmp_path):
    r = _run(_py("import sys; print('usage: x\\nresnet-xray x: error: bad', file=sys.stderr); sys.exit(2)",
                 stderr_has=("did you mean",), stderr_lacks=("usage",)), tmp_path)
    assert r.failures == ["stderr lacks 'did you mean'", "stderr holds 'usage'"]


@pytest.mark.parametrize("stderr, why", [
    ("usage: x\nresnet-xray x: error: bad", None),
    ("", "no 'resnet-xray: error:' line on stderr"),
    ("resnet-xray: error: a\nresnet-xray: error: a", "2 error lines"),
    ("resnet-xray: error: a\nmore words", "the error line is not the last line of stderr"),
])
def test_a_refusal_is_one_error_line(tmp_path, stderr, why):
    r = _run(_py(f"import sys; sys.stderr.write({stderr!r}); sys.exit(2)"), tmp_path)
    assert r.failures == ([why] if why else [])


def test_a_hang_is_killed_at_the_timeout(tmp_path):
    r = _run(_py("import time; time.sleep(60)"), tmp_path, timeout=1.0)
    assert r.hung and r.rc is None and r.wall_s < 30
    assert r.failures[0].startswith("hung")


def test_a_memory_blow_up_is_killed_at_the_cap(tmp_path):
    r = _run(_py("x = b'x' * (600 << 20); import time; time.sleep(30)"), tmp_path, mem_cap_mb=300)
    assert r.over_cap and not r.hung and r.rc is None and r.tree_pss_mb > 300
    assert r.failures[0].startswith("memory: killed")


def test_family_figures_and_summary(tmp_path, capsys):
    good = _run(_py("import sys; sys.stderr.write('resnet-xray: error: refused'); sys.exit(2)", name="good"), tmp_path)
    bad = _run(_py("open('x.tmp-9', 'w'); raise RuntimeError", name="bad"), tmp_path)
    f = bh.family_figures([good, bad])
    assert f["cases"] == 2 and f["exit_codes"] == {"1": 1, "2": 1}
    assert (f["tracebacks"], f["hangs"], f["files_left"], f["inputs_damaged"], f["not_as_expected"]) == (1, 0, 1, 0, 1)
    assert bh.print_summary({"test": [good, bad]}, 4.0) is False
    out = capsys.readouterr().out
    assert "test/bad: exit 1, expected 2; traceback; left behind: x.tmp-9" in out and "test/good" not in out


def test_zip_bomb_claims_its_size_and_is_a_valid_zip(tmp_path):
    bh.zip_bomb(p := tmp_path / "b.pth", size=1 << 26)
    info = zipfile.ZipFile(p).infolist()
    assert [(i.filename, i.file_size) for i in info] == [("archive/data.pkl", 1 << 26)]
    assert p.stat().st_size < (1 << 26) // 500
    with zipfile.ZipFile(p).open("archive/data.pkl") as f:  # inflates whole and checks the CRC
        assert sum(len(b) for b in iter(lambda: f.read(1 << 22), b"")) == 1 << 26


def test_catalogue_names_are_unique_and_commands_parse():
    cases = bh.catalogue()
    assert len({(c.family, c.name) for c in cases}) == len(cases)
    assert {c.family for c in cases} == set(bh.FAMILIES)
    assert all(c.args and c.expect and c.rc for c in cases)


@pytest.mark.slow
def test_one_real_cli_case(tmp_path):
    """The catalogue's make-dataset-onto-a-file case, through the CLI: a one-line refusal, f untouched."""
    case = next(c for c in bh.catalogue() if c.name == "make-dataset onto an existing file")
    template = tmp_path / "template"
    template.mkdir()
    r = bh.run_case(case, template, tmp_path, timeout=120.0, mem_cap_mb=4096)
    assert r.rc == 2 and not r.traceback and r.left == [] and r.damaged == []
    assert r.as_expected, r.failures
    assert "f" in r.message and "\n" not in r.message
