"""The book (`make site`): built from the notebooks' stored outputs, whole and self-contained
(structural tests, everywhere), then opened page by page in headless Chromium where it is
installed (Debian: `apt-get install chromium chromium-driver`), from a loopback server.

SITE_SHOTS=/some/folder also saves screenshots of the landing page, notebook 1's derivation and
notebook 8's figures there.
"""

import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CHAPTERS = [f"notebooks/{p.stem}.html" for p in NOTEBOOKS] + ["DATA.html"]
# The site's command (the Makefile's `site` target), into a folder of the test's own.
SPHINX = [sys.executable, "-m", "sphinx", "-b", "html", "-c", "docs", "-W", "--keep-going", "-q"]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


class Page(HTMLParser):
    """The links, images, scripts, stylesheets, ids and next-page link of one HTML page."""

    def __init__(self, path: Path):
        super().__init__()
        self.links, self.images, self.assets, self.ids = [], [], [], set()
        self.next = None
        self.feed(path.read_text())

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
            if "right-next" in (a.get("class") or "").split():
                self.next = a["href"]
        elif tag == "img":
            self.images.append(a["src"])
            self.assets.append(a["src"])
        elif tag == "script" and a.get("src"):
            self.assets.append(a["src"])
        elif tag == "link" and a.get("href") and a.get("rel") not in ("next", "prev"):
            self.assets.append(a["href"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _target(page: Path, href: str) -> tuple[Path, str]:
    """The file and fragment that a relative href on page points at."""
    parts = urlsplit(href)
    path = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
    return path, unquote(parts.fragment)


def _is_local(href: str) -> bool:
    parts = urlsplit(href)
    return not parts.scheme and not parts.netloc


def _notebook(path: Path) -> dict:
    return json.loads(path.read_text())


def _snapshot(dst: Path) -> Path:
    """A copy of the checkout's files (tracked and new, not ignored): the build reads a tree
    that nobody edits meanwhile, and its notebooks can be compared before and after."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True)
    if listed.returncode != 0:  # not a git checkout: everything but the local folders
        local = {".git", ".venv", "build", "data", "runs"}
        shutil.copytree(REPO, dst, ignore=lambda folder, names: [
            n for n in names if (Path(folder) == REPO and n in local) or n == "__pycache__"])
        return dst
    for rel in {r for r in listed.stdout.decode().split("\0") if r}:
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("myst_nb", reason="the site extra is not installed: "
                                          "pip install -e '.[site]'")
    out = tmp_path_factory.mktemp("site")
    src = _snapshot(out / "src")
    notebooks = sorted((src / "notebooks").glob("*.ipynb"))
    assert [p.name for p in notebooks] == [p.name for p in NOTEBOOKS]
    before = {p.name: _sha(p) for p in notebooks}
    run = subprocess.run(SPHINX + ["-d", str(out / "doctrees"), ".", str(out / "html")],
                         cwd=src, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    # The build reads the stored outputs and writes nothing back.
    assert {p.name: _sha(p) for p in notebooks} == before
    return out / "html"


def _source(site: Path, rel: str) -> Path:
    """The file of the snapshot that the build at site was made from."""
    return site.parent / "src" / rel


def _page_names(site: Path) -> list[str]:
    """Every HTML page of the build (the theme's _static/ holds a template, not a page)."""
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if p.relative_to(site).parts[0] != "_static")


@pytest.fixture(scope="module")
def pages(site) -> dict[str, Page]:
    return {name: Page(site / name) for name in _page_names(site)}


def test_every_chapter_has_a_page_titled_as_its_notebook(site):
    assert [p.name[:2] for p in NOTEBOOKS if p.name[0].isdigit()] == [f"{i:02d}" for i in range(9)]
    assert (site / "index.html").exists() and (site / "README.html").exists()
    for nb, page in zip(NOTEBOOKS, CHAPTERS):
        first = _notebook(_source(site, f"notebooks/{nb.name}"))["cells"][0]["source"]
        title = "".join(first).splitlines()[0].lstrip("# ")
        html = (site / page).read_text()
        assert f"<title>{title}" in html.replace("&amp;", "&"), (page, title)


def test_next_links_walk_from_the_readme_through_every_chapter_in_order(site, pages):
    walked, page = [], "README.html"
    while pages[page].next:
        path, _ = _target(site / page, pages[page].next)
        page = path.relative_to(site).as_posix()
        walked.append(page)
    assert walked == CHAPTERS


def test_each_chapter_page_shows_every_stored_figure(site, pages):
    """As many images as the notebook has PNG outputs and markdown images, each in the build."""
    total = 0
    for nb, page in zip(NOTEBOOKS, CHAPTERS):
        cells = _notebook(_source(site, f"notebooks/{nb.name}"))["cells"]
        outputs = sum("image/png" in o.get("data", {}) for c in cells
                      for o in c.get("outputs", []))
        markdown = sum("".join(c["source"]).count("![") for c in cells
                       if c["cell_type"] == "markdown")
        content = [s for s in pages[page].images if "_images/" in s]
        assert len(content) == outputs + markdown, page
        total += len(content)
    assert total > 0
    readme = _source(site, "README.md").read_text().count("![")
    assert len([s for s in pages["README.html"].images if "_images/" in s]) == readme


def test_every_referenced_image_and_asset_is_in_the_build(site, pages):
    for name, page in pages.items():
        for src in page.assets:
            assert _is_local(src), (name, src)  # nothing fetched from another host
            path, _ = _target(site / name, src)
            assert path.is_file() and site in path.parents, (name, src)


def test_no_stylesheet_or_script_loads_from_another_host(site):
    remote = re.compile(r"""(url\(\s*['"]?|@import\s+['"]|importScripts\(['"])(https?:)?//""")
    for path in [*site.rglob("*.css"), *site.rglob("*.js")]:
        assert not remote.search(path.read_text(errors="replace")), path


def test_no_broken_internal_link(site, pages):
    for name, page in pages.items():
        for href in page.links:
            if not _is_local(href) or href.startswith(("mailto:", "javascript:")):
                continue
            path, fragment = _target(site / name, href)
            assert path.is_file() and site in path.parents, (name, href)
            if fragment and path.suffix == ".html":
                rel = path.relative_to(site).as_posix()
                assert fragment in pages[rel].ids, (name, href)


def test_links_to_source_files_serve_the_file(site, pages):
    """The README's links to modules resolve on the site to copies of those very files."""
    linked = re.findall(r"\]\(([^)#\s]+\.py)\)", _source(site, "README.md").read_text())
    assert linked
    served = {}
    for href in pages["README.html"].links:
        if _is_local(href) and href.endswith(".py"):
            path, _ = _target(site / "README.html", href)
            served[path.name] = path
    for rel in linked:
        assert _sha(served[Path(rel).name]) == _sha(_source(site, rel)), rel


def test_mathematics_is_rendered_by_the_bundled_mathjax(site, pages):
    for page in CHAPTERS[:-1]:
        assets = pages[page].assets
        assert any(a.endswith("_static/mathjax/tex-chtml.js") for a in assets), page
    assert (site / "_static/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff").exists()
    html = (site / "notebooks/01_elbo.html").read_text()
    assert html.count('class="math notranslate nohighlight"') > 10
    text = re.sub(r"<(pre|script)\b.*?</\1>", "", html, flags=re.S)
    assert "$$" not in text  # every display formula was parsed as mathematics


def test_cells_collapsed_in_jupyterlab_are_collapsed_on_the_site(site):
    """The exercises' solutions stay one click away, as in JupyterLab."""
    for nb, page in zip(NOTEBOOKS, CHAPTERS):
        cells = _notebook(_source(site, f"notebooks/{nb.name}"))["cells"]
        hidden = sum(c["cell_type"] == "code"
                     and c["metadata"].get("jupyter", {}).get("source_hidden", False)
                     for c in cells)
        html = (site / page).read_text()
        assert len(re.findall(r'<details class="[^"]*\bhide above-input"', html)) == hidden


def test_the_evidence_blocks_reach_every_page_closed(site):
    """Each "How we know" block of a notebook's markdown is a <details> element on its page, as
    many as the notebook has, and none is rendered open (the evidence stays one click away)."""
    for nb, page in zip(NOTEBOOKS, CHAPTERS):
        cells = _notebook(_source(site, f"notebooks/{nb.name}"))["cells"]
        written = sum("".join(c["source"]).count("<details>") for c in cells
                      if c["cell_type"] == "markdown")
        tags = re.findall(r"<details\b[^>]*>", (site / page).read_text())
        evidence = [t for t in tags if "above-input" not in t]  # not the hidden code cells
        assert len(evidence) == written, page
        assert not [t for t in tags if re.search(r"\sopen\b", t)], page


def test_each_chapter_page_says_how_to_run_it(site):
    for nb, page in zip(NOTEBOOKS, CHAPTERS):
        text = " ".join(re.sub(r"<[^>]+>", " ", (site / page).read_text()).split())
        for words in ("Run this chapter", "make tutorial", "make test", "JupyterLab",
                      f"jupyter lab notebooks/{nb.name}"):
            assert words in text, (page, words)


# ---- in a real browser ----------------------------------------------------------------------

PAGE_STATE = r"""
const done = arguments[arguments.length - 1];
(async () => {
  if (window.MathJax && MathJax.startup) await MathJax.startup.promise;
  const images = [...document.images];
  images.forEach(i => { i.loading = 'eager'; });
  await Promise.all(images.map(i => i.complete ? null :
                               new Promise(r => { i.onload = i.onerror = r; })));
  const raw = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const tex = /\$\$|\\\(|\\\[|\\begin\{|\$[^$\s][^$]*\\[a-zA-Z]+[^$]*\$/;
  while (walk.nextNode()) {
    const node = walk.currentNode;
    if (node.parentElement.closest('pre, code, script, style, textarea, mjx-container')) continue;
    if (tex.test(node.textContent)) raw.push(node.textContent.slice(0, 80));
  }
  done({
    math: document.querySelectorAll('.math').length,
    untypeset: [...document.querySelectorAll('.math')]
        .filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
    errors: [...document.querySelectorAll('mjx-merror, .MathJax_Error')]
        .map(e => e.textContent.slice(0, 80)),
    raw: raw,
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    remote: performance.getEntriesByType('resource').map(e => e.name)
        .filter(n => !n.startsWith(location.origin)),
  });
})();
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _LoopbackServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a page left before all its files arrived closes connections: not an error here


@pytest.fixture(scope="module")
def server(site):
    httpd = _LoopbackServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("BROWSER CHECK NOT RUN: headless Chromium is not installed "
                    "(Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="BROWSER CHECK NOT RUN: selenium is not installed "
                                           "(pip install -e '.[site]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.set_script_timeout(180)  # generous: a busy 2-core machine is slow, not broken
    driver.set_page_load_timeout(180)
    yield driver
    driver.quit()


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _arrive(driver, url_test) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 180).until(lambda d: url_test(d.current_url) and
                                     d.execute_script("return document.readyState") == "complete")


def _check_page(driver, name: str) -> dict:
    """Wait for MathJax and the images, then assert what the reader sees."""
    state = driver.execute_async_script(PAGE_STATE)
    assert not state["untypeset"] and not state["errors"], (name, state)
    assert not state["raw"], (name, state["raw"])  # no TeX left as text
    assert not state["broken"], (name, state["broken"])  # every image loaded
    assert not state["remote"], (name, state["remote"])  # nothing from another host
    assert not _console_errors(driver), name
    return state


def test_chromium_follows_the_chapters_and_every_page_renders(site, server, browser):
    """From the site's root, the next-page links reach the README, every notebook in order
    and DATA.md; on every page of the build the mathematics is typeset, every image has loaded,
    nothing came from another host and the console logged no error."""
    from selenium.webdriver.common.by import By

    browser.get_log("browser")  # start clean
    browser.get(server)  # index.html sends the reader to the README's page
    _arrive(browser, lambda url: url.endswith("/README.html"))
    sidebar = browser.find_elements(By.CSS_SELECTOR, "nav.bd-docs-nav a.reference.internal")
    hrefs = [a.get_attribute("href").removeprefix(server).rstrip("#") for a in sidebar]
    assert hrefs[-len(CHAPTERS):] == CHAPTERS
    seen = {"README.html": _check_page(browser, "README.html")}
    while nexts := browser.find_elements(By.CSS_SELECTOR, "a.right-next"):
        before = browser.current_url
        nexts[0].click()
        _arrive(browser, lambda url: url != before)
        name = browser.current_url.removeprefix(server)
        seen[name] = _check_page(browser, name)
    assert list(seen)[1:] == CHAPTERS
    for name in _page_names(site):  # the rest: search, index
        if name not in seen and name != "index.html":
            browser.get(server + name)
            seen[name] = _check_page(browser, name)
    assert seen["notebooks/01_elbo.html"]["math"] > 10
    assert sum(state["images"] for state in seen.values()) > 0


def test_chromium_search_finds_a_chapter(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "search.html?q=reparameterization")
    found = WebDriverWait(browser, 180).until(lambda d: d.find_elements(
        By.CSS_SELECTOR, "#search-results li a"))
    hrefs = [a.get_attribute("href").removeprefix(server) for a in found]
    assert "notebooks/03_reparameterization.html" in hrefs
    assert not _console_errors(browser)


@pytest.mark.skipif(not os.environ.get("SITE_SHOTS"), reason="SITE_SHOTS is not set")
def test_chromium_screenshots(server, browser):
    from selenium.webdriver.common.by import By

    shots = Path(os.environ["SITE_SHOTS"])
    shots.mkdir(parents=True, exist_ok=True)
    views = [("landing", "README.html", None),  # at the first match of a selector
             ("01_derivation", "notebooks/01_elbo.html", "div.math"),
             ("08_figures", "notebooks/08_hierarchical.html", "article img")]
    for shot, page, selector in views:
        browser.get(server + page)
        _check_page(browser, page)
        found = browser.find_elements(By.CSS_SELECTOR, selector) if selector else []
        for element in found[:1]:
            browser.execute_script("arguments[0].scrollIntoView({block: 'start'});"
                                   "window.scrollBy(0, -80);", element)
        assert browser.save_screenshot(str(shots / f"{shot}.png"))
