"""The per-layer table of a deployed model, shown where users look: the report's deployed section and the explorer.

The table is a real one: ``layers`` on resnet18 at 64 px, timed by the PyTorch profiler, against
another draw of the same architecture, written as ``layers --json`` writes it.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

import resnet_xray as rx
from resnet_xray.cli import main
from resnet_xray.image import Preprocessing, bundled_cat

fastapi_testclient = pytest.importorskip("fastapi.testclient")


def small(seed: int = 0):
    m = rx.load_model("resnet18", weights="random", seed=seed)
    return rx.LoadedModel(m.module, dataclasses.replace(m.meta, preprocessing=Preprocessing(resize=72, crop=64)))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    res = rx.layers(small(), engines=("torch",), against=small(seed=1), runs=2, warmup=1, threads=1, sort="time", progress=False)
    path = tmp_path_factory.mktemp("layers") / "layers.json"
    path.write_text(json.dumps(res.to_dict()))
    return path, res


def test_the_json_keeps_the_network_order_whatever_the_sort(table) -> None:
    from resnet_xray.deploy.layerchart import network_rows, read_layers_doc

    path, res = table
    doc = read_layers_doc(path, "--layers")
    assert [r["name"] for r in doc["rows"]] == [r.name for r in res.sorted_rows()]  # printed slowest first
    assert [r["name"] for r in network_rows(doc)] == [r.name for r in res.rows]


def test_the_report_shows_the_table_and_its_chart(table, tmp_path) -> None:
    path, res = table
    out = tmp_path / "rep"
    r = rx.report(small(), bundled_cat(), out_dir=out, sections=("cost", "deployed"), layers=str(path), quiet=True)
    doc = json.loads(r.json.read_text())
    assert doc["sections"] == ["cost", "deployed"]
    assert [row["name"] for row in doc["deployed"]["rows"]] == [row.name for row in res.rows]
    assert doc["deployed"]["end_to_end_ms"] == res.end_to_end_ms
    html = r.html.read_text(encoding="utf-8")
    section = html[html.index('<section id="deployed">'):]
    section = section[: section.index("</section>")]
    assert "Where does the time go once deployed?" in section and "torch-fp32 ms" in section and "rel L2" in section
    slowest = max(res.rows, key=lambda row: row.times_ms["torch-fp32"])
    assert section.index(f"<td class=\"l\">{slowest.name}</td>") < section.index("</table>")  # the slowest row leads
    assert 'src="data:image/png;base64,' in section  # the chart, embedded


def test_without_a_table_the_report_leaves_the_section_out(tmp_path) -> None:
    r = rx.report(small(), bundled_cat(), out_dir=tmp_path / "rep", sections=("cost", "deployed"), quiet=True)
    assert json.loads(r.json.read_text())["sections"] == ["cost"]


@pytest.mark.parametrize("content, says", [("{", "not the JSON"), ('{"rows": []}', "no rows"), (None, "no such file")])
def test_a_bad_table_is_one_line_before_any_work(tmp_path, capsys, content, says) -> None:
    bad = tmp_path / "layers.json"
    if content is not None:
        bad.write_text(content)
    out = tmp_path / "rep"
    assert main(["report", str(bundled_cat()), "--weights", "random", "-o", str(out), "--layers", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--layers {bad}" in err and says in err
    assert not out.exists()
    assert main(["explore", "--weights", "random", "--check", "--port", "0", "--layers", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--layers {bad}" in err


def test_the_explorer_serves_the_table_in_network_order(table) -> None:
    path, res = table
    ex = rx.explore(small(), layers=[path])
    with fastapi_testclient.TestClient(ex.app, base_url="http://127.0.0.1:8765") as c:
        assert c.get("/api/session").json()["tables"] == 1
        t = c.get("/api/layers").json()["tables"][0]
    assert t["file"] == "layers.json" and t["keys"] == res.keys and t["cpu"] == res.machine["cpu"]
    assert [r["name"] for r in t["rows"]] == [r.name for r in res.rows]
    # every conv row is a layer of the main model the page can open
    names = {r.name for r in rx.anatomy(small()).layers}
    assert {r["name"] for r in t["rows"] if r["kind"] == "conv"} <= names
