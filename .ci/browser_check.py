"""CI: the built documentation site, opened in a real browser (headless Chromium).

Usage: ``python .ci/browser_check.py SITE`` (SITE: the HTML folder of
``sphinx-build -b html``), with the python of the environment the site was built in. The site is
served on 127.0.0.1 (an ephemeral port) and Chromium loads, with its JavaScript running:

- the home page, which must show the project's title and link the guides and the API reference;
- the MixupCallback API page, which must describe every argument of ``MixupCallback.__init__``;
- ``search.html?q=MixupCallback``, whose result list (filled in by the search script) must hold
  a link to that API page.

Where no Chromium executable is found it prints one ``SKIPPED: …`` line with the reason (given by
``--missing-reason``) and exits 0; any failed check exits 1.
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import inspect
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

_BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Headless, and quiet on this network-less machine: no background services, no first-run UI.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=15000",
)


def _fail(message: str) -> None:
    sys.exit(f"browser check: FAIL: {message}")


def _say(message: str) -> None:
    print(f"browser check: {message}", flush=True)


def dump_dom(browser: str, url: str) -> str:
    """The page's DOM after its scripts ran, as Chromium serialises it."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, *_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=180,
        )
    if done.returncode != 0 or "<html" not in done.stdout:
        _fail(f"{browser} could not load {url} (exit {done.returncode}): {done.stderr[-1500:]}")
    return done.stdout


def check_home(dom: str) -> None:
    """The home page: title, and links to the guides and the API reference."""
    title = re.search(r"<title>(.*?)</title>", dom, re.DOTALL)
    if title is None or "lightning-mixup" not in html.unescape(title.group(1)):
        _fail(f"the home page's title is {title.group(1) if title else None!r}")
    for href in ('href="getting_started.html"', 'href="api/callback.html"'):
        if href not in dom:
            _fail(f"the home page has no link {href}")


def check_api_page(dom: str) -> None:
    """The MixupCallback page: its anchor, and one described parameter per ``__init__`` argument."""
    from lightning_mixup import MixupCallback

    if 'id="lightning_mixup.MixupCallback"' not in dom:
        _fail("the API page has no entry `lightning_mixup.MixupCallback`")
    arguments = [p for p in inspect.signature(MixupCallback.__init__).parameters if p != "self"]
    described = set(re.findall(r"<li><p><strong>(\w+)</strong>", dom))
    missing = [name for name in arguments if name not in described]
    if missing:
        _fail(f"the MixupCallback page does not describe the arguments {missing}")
    _say(f"the MixupCallback page describes all {len(arguments)} arguments")


def check_search(dom: str) -> None:
    """The search page's result list, filled in by JavaScript, links to the MixupCallback page."""
    results = re.search(r'<ul\b[^>]*\bclass="search"[^>]*>(.*?)</ul>', dom, re.DOTALL)
    if results is None:
        _fail("the search page has no result list (did its script run?)")
    items = re.findall(r"<li\b.*?</li>", results.group(1), re.DOTALL)
    if not items:
        _fail("searching for MixupCallback found nothing")
    if not any("api/callback.html" in item for item in items):
        _fail(f"no search result links the MixupCallback page: {items[:3]}")
    _say(f"searching for MixupCallback lists {len(items)} results, the API page among them")


def main() -> None:
    """Serve the site, load the three pages, check each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the HTML folder of the built site")
    parser.add_argument("--missing-reason", default="no Chromium executable on PATH")
    args = parser.parse_args()
    site = args.site.resolve()
    if not (site / "index.html").is_file() or not (site / "search.html").is_file():
        _fail(f"{site} holds no built site (index.html, search.html)")

    browser = next((b for b in map(shutil.which, _BROWSERS) if b), None)
    if browser is None:
        print(f"SKIPPED: browser check of the docs site: {args.missing_reason}", flush=True)
        return
    version = subprocess.run([browser, "--version"], capture_output=True, text=True).stdout
    _say(f"{browser}: {version.strip()}")

    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        check_home(dump_dom(browser, f"{base}/index.html"))
        _say("the home page loads, with its title and links")
        check_api_page(dump_dom(browser, f"{base}/api/callback.html"))
        check_search(dump_dom(browser, f"{base}/search.html?q=MixupCallback"))
    finally:
        server.shutdown()
        server.server_close()
    _say("OK")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site without a log line per request."""

    def log_message(self, format: str, *args: object) -> None:
        """Say nothing: the checks report what matters."""


if __name__ == "__main__":
    main()
