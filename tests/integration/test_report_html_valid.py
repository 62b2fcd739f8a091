"""Issue 19, item 6 of Build: the HTML report checked as a browser would load it.

No headless browser can run in this project's test environment: ``playwright`` installs from
PyPI but downloads its browser build at install time, which the network here refuses; Chromium
and Firefox are Debian packages that no setup step installs (``scripts/install.sh`` installs
Python packages only). So this test does the checks a browser would make, from the file alone:
the page parses as HTML with every element closed, every ``<img>`` source is a ``data:`` URI whose
base64 payload decodes to a PNG that matplotlib reads (or a file that exists beside the report),
nothing is fetched from outside (no ``http(s)://`` or protocol-relative ``src``/``href``, no
``<script>``, no ``<link rel=stylesheet>``), and every ``#anchor`` link has its target. The report
is made by ``fedkit report`` from a real run of the quickstart study at 2 rounds.
"""

from __future__ import annotations

import base64
import binascii
import io
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip


class Page(HTMLParser):
    """Collects what a browser would load and checks the element structure."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.anchors: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href", "srcset", "poster", "data"):
            if key in a:
                self.urls.append((tag, key, a[key]))
        if tag == "img":
            self.images.append(a.get("src", ""))
            if not a.get("alt"):
                self.errors.append("an <img> without alt text")
        if tag == "a" and a.get("href", "").startswith("#"):
            self.anchors.append(a["href"][1:])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()


def check_page(html_path: Path) -> list[str]:
    """Every problem a browser would show (broken image, outside fetch, bad structure)."""
    text = html_path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    page.close()
    problems = list(page.errors)
    if page.stack:
        problems.append(f"unclosed elements: {page.stack}")
    if not text.startswith("<!DOCTYPE html>"):
        problems.append("no <!DOCTYPE html>")
    if "script" in page.tags:
        problems.append("a <script> (the report is static)")
    for tag, key, url in page.urls:
        low = url.strip().lower()
        if low.startswith(("http:", "https:", "//", "ftp:", "file:")):
            problems.append(f"<{tag} {key}> fetches from outside: {url[:80]}")
    for src in page.images:
        problems.extend(_image_problems(src, html_path.parent))
    problems += [f"link to missing #{a}" for a in page.anchors if a not in page.ids]
    return problems


def _image_problems(src: str, base: Path) -> list[str]:
    if src.startswith("data:"):
        head, _, payload = src.partition(",")
        if head != "data:image/png;base64":
            return [f"image data URI of type {head!r}"]
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            return [f"image data URI is not base64: {exc}"]
        if data[:8] != PNG:
            return ["image data URI is not a PNG"]
        image = matplotlib.image.imread(io.BytesIO(data), format="png")
        return [] if image.size and float(image.std()) > 0 else ["a blank image"]
    if not src or not (base / src).is_file():
        return [f"image source {src[:80]!r} does not resolve to a file"]
    return []


def test_checker_finds_what_a_browser_would_show(tmp_path: Path) -> None:
    """The checks fail on a page with each kind of fault (so a pass means something)."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><div><img alt="x" src="missing.png">'
        '<img alt="y" src="data:image/png;base64,AAAA"><img src="https://e.org/a.png">'
        '<a href="#nowhere">x</a><script>1</script></body></html>',
        encoding="utf-8",
    )
    found = " | ".join(check_page(bad))
    for needle in ("missing.png", "not a PNG", "without alt", "from outside", "#nowhere",
                   "<script>", "</body> closes <div>"):  # fmt: skip
        assert needle in found, found


@pytest.mark.slow  # a real study (3 arms) and a report in fresh interpreters
def test_fedkit_report_html_loads_without_broken_images(tmp_path: Path) -> None:
    env = {"OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "HOME": str(tmp_path)}  # fmt: skip
    fedkit = [sys.executable, "-m", "fedkit"]
    runs, rep = tmp_path / "runs", tmp_path / "report"
    subprocess.run(
        [*fedkit, "run", str(ROOT / "examples" / "quickstart.toml"), "--out", str(runs),
         "--quiet", "--set", "run.rounds=2"],
        env=env, check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    done = subprocess.run(
        [*fedkit, "report", str(runs), "--out", str(rep)],
        env=env, check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    html = Path(done.stdout.strip().splitlines()[-1])
    assert html == rep / "report.html"
    assert check_page(html) == []
    text = html.read_text(encoding="utf-8")
    assert text.count("<img ") >= 4  # accuracy vs rounds, time, bytes; per-client accuracy
