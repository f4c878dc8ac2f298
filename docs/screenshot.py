"""Take the README's picture of the documentation: build the site, open its home page in Debian's chromium
(headless, through Playwright) and save a PNG.

    python docs/screenshot.py                 # writes docs/assets/docs-home.png
    python docs/screenshot.py /tmp/home.png   # anywhere else

Every request the page makes is watched: one that leaves the built site (a font, a script from a CDN) is refused
and reported, so the picture is also a check that the site reads offline. ``tests/test_docs.py`` runs this.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "assets" / "docs-home.png"
CHROMIUM = Path(os.environ.get("KNNVC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 860}


def build(site: Path) -> None:
    """``mkdocs build --strict`` into ``site`` (a warning fails it)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)], cwd=ROOT,
                   env=env, check=True)  # fmt: skip


def screenshot(site: Path, output: Path) -> list[str]:
    """Save the home page of the built ``site`` as ``output``; the requests it tried outside the site (refused)."""
    from playwright.sync_api import Route, sync_playwright

    outside: list[str] = []

    def only_local(route: Route) -> None:
        url = route.request.url
        if url.startswith("file://") or url.startswith("data:"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.route("**/*", only_local)
            page.goto((site / "index.html").as_uri())
            page.wait_for_load_state("networkidle")
            output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(output))
        finally:
            browser.close()
    return outside


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    with tempfile.TemporaryDirectory() as folder:
        build(Path(folder))
        outside = screenshot(Path(folder), output)
    if outside:
        sys.exit(f"the home page asked for things outside the site: {outside}")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
