"""The progress display: plain lines (no carriage returns) off a terminal, throttled, silent when quiet or quick."""

from __future__ import annotations

import io

from resnet_xray import progress as progress_module
from resnet_xray.progress import progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_non_terminal_prints_a_line_per_stage_and_throttles_advances(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    out = io.StringIO()  # not a terminal
    with progress("job", total=103, stream=out, delay=3.0, every=5.0) as p:
        p.stage("quick first stage")  # within the delay: nothing shown
        clock.t += 4
        p.stage("trace")
        for _ in range(100):  # 100 advances over 10 s: one line per 5 s at most
            clock.t += 0.1
            p.advance()
        p.stage("write")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "job: 2/103 trace (4 s)"
    assert [ln for ln in lines if "trace" in ln and ln != lines[0]] == ["job: 52/103 trace (9 s)", "job: 102/103 trace (14 s)"]
    assert lines[-2] == "job: 103/103 write (14 s)"
    assert lines[-1].startswith("job: done in 14.0 s")


def test_quiet_and_quick_jobs_show_nothing(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    out = io.StringIO()
    with progress("job", total=3, stream=out, quiet=True) as p:
        clock.t += 60
        p.stage("slow but quiet")
    with progress("job", total=3, stream=out) as p:
        clock.t += 1
        p.stage("quick")
    assert out.getvalue() == ""


def test_report_cli_quiet_has_no_progress_lines(tmp_path, capsys):
    from resnet_xray.cli import main
    from resnet_xray.image import bundled_cat

    rc = main(["report", str(bundled_cat()), "--arch", "resnet18", "--weights", "random", "-o", str(tmp_path),
               "--sections", "cost", "--quiet"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "report:" not in err and "RANDOM" in err
    assert main(["report", str(bundled_cat()), "--weights", "random", "-o", str(tmp_path), "--sections", "nope"]) == 2
    assert "--sections nope" in capsys.readouterr().err
