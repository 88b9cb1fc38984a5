"""Headless Debian Chromium as the browser benches and the browser test drive it: where it is,
its flags (no sandbox as root, no GPU, no background network traffic: without those flags
Chromium's connections are refused on a closed network, many at a time), and a Playwright
route that lets only loopback (and ``data:`` / ``blob:``) requests through."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def is_loopback(url: str) -> bool:
    """True for a ``data:`` / ``blob:`` URL or one whose host is this machine."""
    return url.startswith(("data:", "blob:")) or urlparse(url).hostname in LOOPBACK


def loopback_only(route) -> None:
    """Playwright route handler (``page.route("**/*", loopback_only)``): abort every request
    that would leave the machine (fonts, CDNs, telemetry)."""
    if is_loopback(route.request.url):
        route.continue_()
    else:
        route.abort()
