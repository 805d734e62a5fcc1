"""The run report: every section, every image embedded (and a valid PNG), a Markdown
summary beside it, and a page that renders non-blank in headless Chromium."""

import base64
import io
import re
import shutil
import subprocess
import tempfile

import pytest
from matplotlib import image as mpimg

from lab.cli import main
from lab.orchestration.simulation import run_experiment
from tests.helpers import tiny_config

SECTIONS = ("Experiment and threat models", "Accuracy and leakage per round",
            "Reconstructions", "Cost of attacking")


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    cfg = tiny_config(tmp, federation={"num_rounds": 2, "algorithm": "fedsgd", "batch_size": 2},
                      attack={"enabled": True, "observers": ["server", "client"],
                              "rounds": "all", "clients": [0], "iterations": 10})
    return run_experiment(cfg, progress=False).run_dir


def test_report_has_every_section_and_embeds_every_image(reported_run):
    page = (reported_run / "report.html").read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) >= 1 + 3  # the curves and one grid per scored attack
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        png = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert png.shape[0] > 50 and png.shape[1] > 50
    assert "http" not in "".join(sources)
    md = (reported_run / "report.md").read_text()
    for title in SECTIONS:
        assert f"## {title}" in md
    assert "hours for every client and round" in md


def test_fedsim_report_rewrites_it(reported_run):
    (reported_run / "report.html").unlink()
    assert main(["report", str(reported_run)]) == 0
    assert (reported_run / "report.html").is_file()


def test_report_renders_in_headless_chromium(reported_run):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    shot = reported_run / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tempfile.mkdtemp()}", f"--screenshot={shot}",
                    "--window-size=1200,1800", f"file://{reported_run / 'report.html'}"],
                   capture_output=True, timeout=120, check=True)
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not a blank page
    assert (pixels.mean(axis=2) < 0.5).mean() > 0.01  # text and pictures, not just white
