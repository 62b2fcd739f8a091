"""The HTML report opened in a real headless browser (issue 19, Build 6): every image decodes
(``complete`` with a natural width), and the page logs nothing to the console.

The browser is Chromium run as ``chromium --headless --dump-dom``: a copy of the report gets a
probe script that, on ``load``, writes what ``document.images`` says into the DOM, which Chromium
prints; ``--enable-logging=stderr`` prints every console message (and uncaught error) as a
``CONSOLE`` line. No WebDriver is needed. Chromium is a Debian package (``apt-get install
chromium``), not a Python one — PyPI's ``playwright`` downloads its browser at install time,
which the network here refuses — so the test is skipped, saying so, where no Chromium is on PATH.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fedkit.experiment.report import load_arms, write_report
from fedkit.experiment.results import ResultsStore, results_path
from tests.unit.test_report import _record

pytestmark = pytest.mark.slow  # a browser start per page (seconds)

BROWSER = next(
    (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
)
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const out = document.createElement("pre");
  out.id = "fedkit-probe";
  out.textContent = JSON.stringify({
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
  });
  document.body.appendChild(out);
});
</script>"""


def open_in_browser(html: Path, tmp: Path) -> tuple[dict[str, object], list[str]]:
    """``(probe result, console lines)`` of ``html`` loaded in headless Chromium."""
    assert BROWSER is not None
    probe = html.with_name(f"probe-{html.name}")
    probe.write_text(
        html.read_text(encoding="utf-8").replace("</body>", PROBE + "\n</body>"),
        encoding="utf-8",
    )
    done = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    found = re.search(r'<pre id="fedkit-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not load: {done.stderr[-2000:]}"
    console = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    text = found.group(1).replace("&quot;", '"').replace("&amp;", "&")
    return json.loads(text), console


@pytest.mark.skipif(BROWSER is None, reason="no headless browser: `apt-get install chromium`")
def test_browser_probe_sees_a_broken_image_and_a_console_error(tmp_path: Path) -> None:
    """The harness can fail: a page with a broken image and a console error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><img alt="gone" src="missing.png">'
        '<img alt="junk" src="data:image/png;base64,AAAA">'
        '<script>console.error("boom")</script></body></html>',
        encoding="utf-8",
    )
    probe, console = open_in_browser(bad, tmp_path)
    assert probe == {"images": 2, "broken": ["gone", "junk"]}
    assert any("boom" in ln for ln in console), console


@pytest.mark.skipif(BROWSER is None, reason="no headless browser: `apt-get install chromium`")
def test_report_html_in_a_browser_has_no_broken_images_or_console_errors(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    with ResultsStore(results_path(out)) as store:
        _record(store, "fedavg", "fedavg", [0.2, 0.45, 0.6], bytes_per_round=1000,
                client_accs=[0.4, 0.5, 0.9])  # fmt: skip
        _record(store, "centralized", "centralized", [0.5, 0.7, 0.72], bytes_per_round=0,
                client_accs=[0.6, 0.8])  # fmt: skip
    files = write_report(load_arms([str(out)], runs_dir=out), tmp_path / "report")
    probe, console = open_in_browser(files.html, tmp_path)
    assert probe == {"images": len(files.plots), "broken": []}
    assert console == []
