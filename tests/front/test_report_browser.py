"""The HTML report in a real browser: headless chromium loads the page with no console errors,
the front's plots are drawn (their markers' colours are on the screenshot, in the plot area), and
so are the sections on what onnxruntime runs (the layers it runs in float flagged) and the measured
latency.

Skipped where no chromium is installed (.ci/run installs Debian's package when it can).
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from mpqc import cli
from mpqc.report_plot import CHOSEN_COLOUR, FRONT_COLOUR, INT8_COLOUR

Image = pytest.importorskip("PIL.Image")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")

#: Window the page is rendered in; the plots and their legend sit above ``PLOTS_END`` pixels, the
#: tables (the runtime sections after the layers) below.
WIDTH, HEIGHT = 1000, 2000
PLOTS_END = 575
#: Background of a layer row onnxruntime runs in float (the report's ``tr.warn``).
WARN_ROW = "#fde2e1"


def render(page: pathlib.Path, screenshot: pathlib.Path) -> tuple[np.ndarray, list[str]]:
    """(RGB pixels of the screenshot, the page's console messages)."""
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        + [f"--screenshot={screenshot}", f"--window-size={WIDTH},{HEIGHT}"]
        + ["--enable-logging=stderr", "--v=0", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert screenshot.exists(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return np.asarray(Image.open(screenshot).convert("RGB")), console


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])


def _count(pixels: np.ndarray, colour: str) -> int:
    return int(np.all(np.abs(pixels.astype(int) - _rgb(colour)) <= 8, axis=-1).sum())


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("browser")
    page = folder / "report.html"
    code = cli.main(
        [
            "--hw",
            "x86_avx2",
            "-o",
            str(folder / "q.onnx"),
            "--max-size",
            "0.2x",
            "--max-latency",
            "1s",
            "--measure",
            "-q",
        ]
        + ["--report", str(page)]
    )
    assert code == 0
    return page


def test_the_report_is_self_contained(report: pathlib.Path) -> None:
    text = report.read_text()
    assert "<svg" in text
    # nothing to fetch: no scripts, images, stylesheets or fonts from elsewhere
    assert not re.search(r"<script|<img|<link|src=|url\(", text)


def test_the_browser_draws_the_front_without_console_errors(
    report: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    pixels, console = render(report, tmp_path / "report.png")
    assert console == []
    plots = pixels[:PLOTS_END]  # the plots come before the tables
    assert _count(plots, FRONT_COLOUR) > 200  # nine front points, twice
    assert _count(plots, CHOSEN_COLOUR) > 100  # the chosen point, twice
    assert _count(plots, INT8_COLOUR) > 20  # the uniform int8 square
    tables = pixels[PLOTS_END:]
    assert _count(tables, CHOSEN_COLOUR) == 0
    assert _count(tables, WARN_ROW) > 2000  # the two 4-bit convs' rows


def test_the_page_has_the_runtime_sections(report: pathlib.Path) -> None:
    text = report.read_text()
    assert "<h2>What onnxruntime runs</h2>" in text and "<h2>Measured latency</h2>" in text
    assert text.count('<tr class="warn">') == text.count('<p class="warning">') == 2
    assert "<td>uniform w8a8</td>" in text


def test_the_console_check_sees_an_error(tmp_path: pathlib.Path) -> None:
    """The check above can fail: a page whose script throws is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFunction()</script></body></html>")
    _, console = render(page, tmp_path / "broken.png")
    assert any("undefinedFunction" in line for line in console)
