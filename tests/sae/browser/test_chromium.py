"""The browser driven by a real headless Chromium (Playwright, Debian's `chromium`) over a live uvicorn."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from sae.lake import Lake

from .conftest import LAYERS, SAE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH: `apt-get install -y chromium` "
                                                          "(the Makefile's test target does)")


@pytest.fixture(scope="module")
def page(live_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1280, "height": 800})
        tab.base = live_server
        yield tab
        browser.close()


def masculine_latent(root) -> int:
    rows = pq.read_table(Lake(root).files("explanations", LAYERS[0], SAE)[0]).to_pylist()
    return next(r["latent"] for r in rows if r["explainer"] == "truth" and "masculine" in r["explanation"])


def test_overview_to_variant_to_latent_page(page, browser_lake):
    latent = masculine_latent(browser_lake[1])
    page.goto(page.base + "/")
    page.click(f'a[href="/variant/{LAYERS[0]}/{SAE}"]')
    page.wait_for_url(f"**/variant/{LAYERS[0]}/{SAE}")
    page.click(f'table.latents a[href="/latent/{LAYERS[0]}/{SAE}/{latent}"]')
    page.wait_for_url(f"**/latent/{LAYERS[0]}/{SAE}/{latent}")
    assert "masculine pronouns" in page.inner_text("main")
    # The histogram is drawn: its bars have a size on screen.
    box = page.locator("svg.histogram").bounding_box()
    assert box and box["width"] > 200 and box["height"] > 40
    heights = [float(h) for h in page.eval_on_selector_all("svg.histogram rect.bar",
                                                         "bars => bars.map(b => b.getBBox().height)")]
    assert max(heights) > 0


def test_highlight_intensity_matches_the_stored_activations(page, browser_lake):
    root = browser_lake[1]
    latent = masculine_latent(root)
    page.goto(page.base + f"/latent/{LAYERS[0]}/{SAE}/{latent}")
    stats = pq.read_table(Lake(root).files("latent_stats", LAYERS[0], SAE)[0]).to_pylist()
    max_act = next(s["max_act"] for s in stats if s["latent"] == latent)
    stored = {(r["ctx_id"], r["start"]): r["acts"] for r in pq.read_table(
        Lake(root).files("examples", LAYERS[0], SAE)[0]).to_pylist() if r["latent"] == latent}
    windows = page.eval_on_selector_all("ol.windows li", """items => items.map(li => ({
        where: li.querySelector('.where').textContent,
        tokens: [...li.querySelectorAll('.tok')].map(t => ({act: parseFloat(t.dataset.act), title: t.title,
            background: getComputedStyle(t).backgroundColor}))
    }))""")
    assert windows
    lit = 0
    alpha = lambda css: float(css.split(",")[3].rstrip(")")) if css.startswith("rgba") else 1.0  # noqa: E731
    for window in windows:
        ctx_id, start = (int(x) for x in window["where"].split()[1].split(":"))
        assert [t["act"] for t in window["tokens"]] == pytest.approx(stored[(ctx_id, start)], rel=1e-6)
        for token in window["tokens"]:
            if token["act"] > 0:
                lit += 1
                assert alpha(token["background"]) == pytest.approx(min(1.0, token["act"] / max_act), abs=0.01)
                assert float(token["title"]) == pytest.approx(token["act"], rel=1e-3)
            else:
                assert alpha(token["background"]) == 0
    assert lit > 0


def test_search_by_meaning_and_by_token(page, browser_lake):
    latent = masculine_latent(browser_lake[1])
    page.goto(page.base + "/")
    page.fill("header .quick input", "words referring to a male person")
    page.press("header .quick input", "Enter")
    page.wait_for_url("**/search?q=*")
    first = page.locator("section.card", has_text="By meaning").locator("tbody a").first
    assert first.get_attribute("href").endswith(f"/{SAE}/{latent}")
    page.fill('input[name="token"]', "his")
    page.select_option('select[name="variant"]', f"{LAYERS[0]}|{SAE}")
    page.click("text=find latents")
    page.wait_for_url("**/search?token=*")
    hit = page.locator("table.token-hits tbody a").first
    assert hit.get_attribute("href") == f"/latent/{LAYERS[0]}/{SAE}/{latent}"
    hit.click()
    page.wait_for_url(f"**/latent/{LAYERS[0]}/{SAE}/{latent}")


def test_compare_view_and_404(page):
    page.goto(page.base + "/compare")
    page.select_option('select[name="a"]', f"{LAYERS[0]}|{SAE}")
    page.select_option('select[name="b"]', f"{LAYERS[1]}|{SAE}")
    page.click("form.filters button")
    page.wait_for_url("**/compare?a=*")
    assert page.locator("table.pairs tbody tr").count() >= 1
    assert "same sae, other layer" in page.inner_text("main")
    response = page.goto(page.base + f"/latent/{LAYERS[0]}/{SAE}/99999")
    assert response.status == 404
    assert page.locator(f'ul.exists a[href="/variant/{LAYERS[0]}/{SAE}"]').count() == 1
