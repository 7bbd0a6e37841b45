"""Open a ``lightning-topo report`` page in headless Chromium: screenshot, sections, images.

    python scripts/check_report_in_browser.py REPORT.html SCREENSHOT.png

1. ``chromium --headless --screenshot`` renders the page into SCREENSHOT.png.
2. A copy of the page gets a small inline script that, once the page has loaded, writes the
   ``naturalWidth`` of every ``<img>`` and the ``id`` of every ``<section>`` into a ``<pre>``;
   ``chromium --headless --dump-dom`` prints the resulting DOM, which is parsed here. (The report
   itself has no script; the copy is deleted afterwards.)

Passes (exit 0) when every section of :data:`lightning_topo.report.SECTIONS` is present, the page
has at least one image and every image decoded (``naturalWidth > 0``). Exit 1 when a check
fails, 2 when the browser is missing (``bash scripts/install_browser.sh`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SECTIONS = ("summary", "series", "correlations", "figures", "pruning")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_PROBE = """<script>
window.addEventListener('load', function () {
  var widths = Array.prototype.map.call(document.images, function (i) { return i.naturalWidth; });
  var ids = Array.prototype.map.call(document.querySelectorAll('section'), function (s) { return s.id; });
  var out = document.createElement('pre');
  out.id = 'browser-check';
  out.textContent = JSON.stringify({widths: widths, sections: ids});
  document.body.appendChild(out);
});
</script>"""
_RESULT = re.compile(r'<pre id="browser-check">(.*?)</pre>', re.S)


def find_browser() -> str | None:
    """The path of a Chromium-family browser on ``PATH``, or ``None``."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, args: list[str], timeout: float) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, *flags, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"{browser} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def check_report(report: Path, screenshot: Path, browser: str, timeout: float = 120.0) -> dict:
    """Screenshot ``report`` and read its images' ``naturalWidth`` and its sections in the browser.

    Returns:
        ``{"widths": [int, ...], "sections": [str, ...], "screenshot": str}``.
    """
    report = Path(report).resolve()
    text = report.read_text(encoding="utf-8")
    screenshot = Path(screenshot).resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    _run(browser, [f"--screenshot={screenshot}", "--window-size=1280,2400", report.as_uri()], timeout)
    if not screenshot.is_file() or screenshot.stat().st_size == 0:
        raise RuntimeError(f"{browser} wrote no screenshot to {screenshot}")
    fd, probe_name = tempfile.mkstemp(suffix=".html", dir=report.parent, prefix=".browser-check-")
    os.close(fd)
    probe = Path(probe_name)
    try:
        probe.write_text(text.replace("</body>", _PROBE + "</body>", 1), encoding="utf-8")
        dom = _run(browser, ["--dump-dom", "--virtual-time-budget=5000", probe.as_uri()], timeout)
    finally:
        probe.unlink(missing_ok=True)
    found = _RESULT.search(dom)
    if not found:
        raise RuntimeError("the browser's DOM has no check result: the page did not finish loading")
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    result["screenshot"] = str(screenshot)
    return result


def problems(result: dict) -> list[str]:
    """What is wrong with a :func:`check_report` result (empty when the page is fine)."""
    out = [f"section {s!r} is missing" for s in SECTIONS if s not in result["sections"]]
    if not result["widths"]:
        out.append("the page has no image")
    out += [f"image {i} did not load (naturalWidth 0)" for i, w in enumerate(result["widths"]) if w <= 0]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    report, screenshot = Path(argv[0]), Path(argv[1])
    if not report.is_file():
        print(f"check_report_in_browser: error: {report} is not a file", file=sys.stderr)
        return 2
    browser = find_browser()
    if browser is None:
        print(
            "check_report_in_browser: error: no chromium on PATH; run: bash scripts/install_browser.sh",
            file=sys.stderr,
        )
        return 2
    result = check_report(report, screenshot, browser)
    issues = problems(result)
    for issue in issues:
        print(f"FAIL: {issue}", file=sys.stderr)
    print(f"{len(result['widths'])} images, sections {result['sections']}, screenshot {result['screenshot']}")
    return 1 if issues else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
