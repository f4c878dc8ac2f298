"""The documentation site cannot drift: every page of docs/ has its examples run by the README's machinery
(``tests/test_readme.py``: console blocks run and their output compared, python blocks run alone, bash blocks
checked, sh blocks parsed by the real CLI), each page in a fresh sandbox; the site's navigation names every page;
the exit-code table is the library's.

``KNNVC_README_UPDATE=1 python -m pytest tests/test_docs.py`` writes the printed outputs that drifted into the
pages, as for the README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_readme import ROOT, blocks, check_examples, docs_links, make_sandbox

DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
SLOW_PAGES = {"eval.md"}  # it runs the eval extra's models (speaker encoder, ASR, DNSMOS): about 15 s

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PAGES else p for p in PAGES])
def test_page_examples_run_and_print_what_they_show(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_examples(DOCS / page, make_sandbox(tmp_path), monkeypatch)


def nav_pages() -> list[str]:
    """The pages mkdocs.yml's nav names (generated ones included), in order."""
    return re.findall(r"^\s*- [^:\n]+: ([\w/.-]+\.md)$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M)


def test_the_nav_names_every_page_once() -> None:
    """Every page in docs/ is reachable from the site's navigation, and the nav names no page that is neither in
    docs/ nor generated at build time (docs/gen_cli.py writes reference/cli.md)."""
    listed = nav_pages()
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == set(PAGES) | {"reference/cli.md"}, set(listed) ^ (set(PAGES) | {"reference/cli.md"})
    assert "design.md" in listed


def test_every_link_between_pages_names_a_page() -> None:
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([\w/.-]+\.md)(?:#[\w-]+)?\)", text):
            resolved = (DOCS / page).parent / target
            assert resolved.resolve().is_relative_to(DOCS.resolve()), f"docs/{page} links outside docs/: {target}"
            assert resolved.exists() or target.endswith("reference/cli.md"), f"docs/{page}: no page {target}"
    assert docs_links("see [x](docs/usage.md#one-file)") == {"usage.md"}


def test_exit_code_table_is_the_library_table() -> None:
    """Every code in the table of docs/errors.md is ``knnvc.errors.EXIT_CODES``, and no other."""
    from knnvc.errors import EXIT_CODES

    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    codes = {int(m.group(1)) for m in re.finditer(r"^\| (\d+) \|", text, re.M)}
    assert codes == set(EXIT_CODES)


def test_every_page_has_a_title_and_fences_that_close() -> None:
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        assert text.startswith("# "), f"docs/{page}: the first line is the page's title, '# ...'"
        blocks(DOCS / page)  # raises on a block that is never closed


@pytest.mark.slow
def test_the_site_builds_strictly_and_its_home_page_reads_offline(tmp_path: Path) -> None:
    """``mkdocs build --strict`` (a broken link, a griffe warning or a missing page fails it), then the README's
    screenshot of the home page, taken the way docs/screenshot.py takes it: no request may leave the built site
    (fonts, scripts, a CDN), so the site reads offline."""
    pytest.importorskip("mkdocs")
    import importlib.util

    spec = importlib.util.spec_from_file_location("screenshot", DOCS / "screenshot.py")
    assert spec is not None and spec.loader is not None
    screenshot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshot)
    site = tmp_path / "site"
    screenshot.build(site)
    assert (site / "reference" / "cli" / "index.html").exists()  # generated at build time by docs/gen_cli.py
    cli_page = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "knnvc convert" in cli_page and "--match-layer" in cli_page
    api_page = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "knnvc.pipeline.KnnVC.encode" in api_page
    if not screenshot.CHROMIUM.exists() or importlib.util.find_spec("playwright") is None:
        pytest.skip(f"{screenshot.CHROMIUM} or playwright is missing: the site built, the screenshot was not taken")
    picture = tmp_path / "home.png"
    assert screenshot.screenshot(site, picture) == []
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (DOCS / "assets" / "docs-home.png").exists()
