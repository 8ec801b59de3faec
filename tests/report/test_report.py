"""The audit's outputs: files, JSON against the schema, and the report opened in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from builders import run_cli, save, small_cnn

import onnxredund
from onnxredund.analyses.audit import run_audit
from onnxredund.data import Dataset
from onnxredund.engine import load_model_proto
from onnxredund.report.audit_report import write_audit

SCHEMA = Path(onnxredund.__file__).parent / "schema" / "results.schema.json"
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight,
                                               Math.round(i.getBoundingClientRect().width)]);
  const fetched = performance.getEntriesByType('resource').map(e => e.name);
  document.body.setAttribute('data-probe', JSON.stringify({imgs, fetched}));
});
</script></body>"""


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    model = save(small_cnn(seed=3)[0], tmp)
    rng = np.random.default_rng(0)
    np.savez(tmp / "d.npz", x=rng.random((96, 3, 6, 6)).astype(np.float32), y=rng.integers(0, 4, 96))
    out = tmp / "out"
    r = run_cli("audit", model, "--data", tmp / "d.npz", "--batch-size", "32", "--device", "cpu", "--out", out)
    assert r.exit_code == 0, r.stderr
    return out


def test_audit_writes_every_output(audit_dir):
    names = {p.name for p in audit_dir.iterdir()}
    for expected in (
        "report.html",
        "results.json",
        "summary.csv",
        "impulse.csv",
        "shuffle-1-channel.csv",
        "shuffle-1-pixel.csv",
        "impulse-0-ncc.png",
        "impulse-1-responses.png",
        "shuffle-1-channel-cosine.png",
        "shuffle-1-pixel-accuracy.png",
    ):
        assert expected in names, expected
    assert (audit_dir / "summary.csv").read_text().splitlines()[0].startswith("layer,in_channels")


def test_results_json_validates_against_the_schema(audit_dir):
    results = json.loads((audit_dir / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA.read_text()))
    assert results["schema_version"] == 3
    conv2 = next(s for s in results["summary"] if s["name"] == "conv2")
    assert conv2["channel_cheap_fraction"] is not None and len(conv2["ranked_channels"]) == 4
    costs = [r["cost"] for r in conv2["ranked_channels"]]
    assert costs == sorted(costs)  # cheapest first
    broken = dict(results, schema_version=1)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))


def test_gates_fail_with_status_1(tmp_path):
    model = save(small_cnn(seed=3, zero_channel=1)[0], tmp_path)
    args = ["audit", model, "--data", "synthetic:64", "--device", "cpu", "--modes", "channel", "--layers", "conv2"]
    ok = run_cli(*args, "--out", tmp_path / "a", "--fail-if", "redundant_fraction>1")
    assert ok.exit_code == 0, ok.stderr
    # conv2's input channel 1 has zero weights: shuffling it costs nothing, so >= 1 of 4 channels is cheap
    bad = run_cli(*args, "--out", tmp_path / "b", "--fail-if", "cheap_fraction>=0.25")
    assert bad.exit_code == 1
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [s["name"] for s in results["summary"]] == ["conv2"]  # --layers limits the impulse step too
    assert [layer["name"] for layer in results["impulse"]["layers"]] == ["conv2"]
    summary = results["summary"][0]
    assert summary["channel_cheap_fraction"] >= 0.25 and summary["ranked_channels"][0]["channel"] == 1
    expected = f"failed at conv2: cheap_fraction = {summary['channel_cheap_fraction']:.4f}"
    assert bad.stderr.strip() == f"onnxredund: gate cheap_fraction>=0.25 {expected}"
    wrong = run_cli(*args, "--out", tmp_path / "c", "--fail-if", "speed>3")
    assert wrong.exit_code == 2 and "Invalid value for '--fail-if': 'speed>3': use METRIC>VALUE" in wrong.stderr


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is missing: .ci/run installs Debian's chromium")
    pytest.skip("no chromium here")
    return None


def _browse(chromium: str, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


def test_report_shows_every_figure_offline_in_a_browser(audit_dir, tmp_path):
    chromium = _chromium()
    html = (audit_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing to fetch from a network
    figures = len(re.findall(r"<img ", html))
    assert figures >= 8
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE))
    dom = _browse(chromium, "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(result["imgs"]) == figures
    for complete, width, height, shown in result["imgs"]:
        assert complete and width > 0 and height > 0 and shown > 0  # decoded and laid out
    assert result["fetched"] == []  # the page requested nothing
    shot = tmp_path / "shot.png"
    _browse(chromium, "--window-size=1200,1600", f"--screenshot={shot}", (audit_dir / "report.html").as_uri())
    from matplotlib.image import imread

    pixels = imread(str(shot))
    assert pixels.std() > 0.05  # not a blank page


def test_figures_past_the_deadline_are_left_out_and_named_and_every_number_is_still_written(tmp_path):
    rng = np.random.default_rng(0)
    data = Dataset(rng.random((32, 3, 6, 6), dtype=np.float32), rng.integers(0, 4, 32), "toy")
    result = run_audit(load_model_proto(small_cnn(seed=3)[0]), data, device="cpu", modes=("channel",))
    spent, open_ = tmp_path / "spent", tmp_path / "open"
    for out, deadline in ((spent, time.perf_counter()), (open_, time.perf_counter() + 3600)):
        out.mkdir()
        write_audit(out, result, deadline=deadline)
    assert not list(spent.glob("*.png"))
    (line,) = re.findall("figures left out to keep the time budget: [^;]*", (spent / "report.html").read_text())
    named = line.split(": ", 1)[1].split(", ")
    assert named[0] == "the overview"  # the most telling first
    assert sorted(named[1:]) == [
        "conv1 impulse responses",
        "conv1 shuffling",
        "conv2 impulse responses",
        "conv2 shuffling",
    ]
    assert {p.name for p in spent.iterdir()} == {p.name for p in open_.iterdir() if p.suffix != ".png"}
    assert {"overview.png", "shuffle-1-channel-cosine.png", "impulse-1-ncc.png"} <= {p.name for p in open_.iterdir()}
    assert "left out to keep the time budget" not in (open_ / "report.html").read_text()
