"""Easel Studio driven in a real browser: Debian's Chromium through Playwright, and the page's own steps.

The fixtures that open it (``browser``, ``page``, ``studio``) are tests/integration/conftest.py's: any module with a
``stack`` fixture can open the Studio on its stack.
"""

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium (.ci/run installs it): Playwright's own browser download is unreachable here."""
PNG = "data:image/png;base64,"


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, launched. Playwright's sync API runs an event loop on the test thread while it lives: the
    tests after it may call ``asyncio.run`` only once it is closed (a session-wide browser broke them)."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


def draw(page: Page, **fields) -> None:
    """Fill the Draw form's ``fields`` (by their API names), draw, and wait until the page is done."""
    for name, value in fields.items():
        page.fill(f"#{name}", str(value))
    page.click("#draw-button")
    expect(page.locator("#draw-button")).to_be_enabled(timeout=120_000)


def drawn_with_choice(page: Page, select: str, value: str, **fields):
    """The page reloaded (its lists read again), ``value`` chosen in Draw's ``select`` (under More), ``fields`` drawn:
    the one picture drawn."""
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=30_000)
    page.click("#more summary")
    page.select_option(f"#{select}", value)
    draw(page, **fields)
    image = page.locator("#draw-images img")
    expect(image).to_have_count(1)
    return image


def assert_drawn_as_the_api_draws_it(page: Page, api, image, field: str, value) -> None:
    """Draw showed and sent ``field``: ``value``; its picture ``image`` is the API's for the shown call, and another
    picture than the same call without ``field``'s."""
    body = shown_call(page)
    assert body[field] == value and sent_body(page)[field] == value
    answer = api.post("/v1/images/generations", json=body).json()["data"][0]["b64_json"]
    assert image.get_attribute("src") == PNG + answer
    plain = api.post("/v1/images/generations", json={k: v for k, v in body.items() if k != field})
    assert plain.json()["data"][0]["b64_json"] != answer, f"{field} changed nothing"


def shown_call(page: Page) -> dict:
    """The JSON body of the curl call the page shows beside Draw."""
    curl = page.locator("#draw-call pre").first.inner_text()
    return json.loads(re.search(r"-d '(.*)'", curl).group(1))


def sent_body(page: Page) -> dict:
    """The body the page sends for its Draw form as it stands (the shown call's, an image's base64 whole)."""
    return page.evaluate("async () => (await import('/studio/draw.js')).requestBody()")


SERIOUS = ("serious", "critical")
"""The axe-core impacts the Studio must have none of (``minor`` and ``moderate`` are listed, not failed)."""


def accessibility_violations(page: Page, impacts: tuple[str, ...] = SERIOUS) -> list[str]:
    """axe-core's violations of ``impacts`` on the page as it shows now: each rule, its help and the elements."""
    found = Axe().run(page).response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in found
        if v["impact"] in impacts
    ]
