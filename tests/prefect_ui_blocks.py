"""Drive the Prefect UI's block pages (the older v1 UI, the one `/blocks/...` serves) in
headless Chromium, for tests: read the block catalog, fill a block type's create form.

Use inside `prefect_ui.browser()` after `prefect_ui.login()`. Form fields are found by their
label as the UI shows it ("Max Tool Calls", without " (Optional)"); a list or dict field is a
JSON text box. Every wait has a deadline; a timeout raises `PrefectUIError` with a screenshot.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from playwright.sync_api import Locator, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.prefect_ui import DEFAULT_TIMEOUT_S, PrefectUIError


def _fail(page: Page, shots: Path, what: str) -> PrefectUIError:
    shots.mkdir(parents=True, exist_ok=True)
    path = shots / f"blocks-{re.sub(r'[^a-z0-9]+', '-', what.lower()).strip('-')[:60]}.png"
    page.screenshot(path=str(path), animations="disabled", timeout=10_000)
    return PrefectUIError(f"{what} (url: {page.url}, screenshot: {path})", path)


def catalog_names(
    page: Page, base_url: str, search: str, shots: Path, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[str]:
    """The names of the block types the catalog lists for `search` (its own search box)."""
    page.goto(base_url.rstrip("/") + "/blocks/catalog")
    box = page.locator("input[type=search]")
    cards = page.locator(".block-type-card-preview")
    try:
        box.wait_for(state="visible", timeout=timeout_s * 1000)
        box.fill(search)
        cards.first.wait_for(state="visible", timeout=timeout_s * 1000)
    except PlaywrightTimeoutError:
        raise _fail(page, shots, f"the block catalog listed nothing for {search!r}") from None
    # The filter applies as typed: read once the cards stop changing.
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while time.monotonic() < deadline:
        now = [_card_name(c) for c in cards.all()]
        if now and now == seen:
            return now
        seen = now
        page.wait_for_timeout(300)
    raise _fail(page, shots, "the block catalog did not settle")


def _card_name(card: Locator) -> str:
    return card.locator(".block-type-card-preview__name").inner_text().strip()


def _field(page: Page, label: str) -> Locator:
    title = re.compile(rf"^\s*{re.escape(label)}( \(Optional\))?\s*$")
    box = page.locator(".p-label").filter(has=page.locator("label.p-label__label", has_text=title))
    return box.first.locator("input, textarea").first


def create_block(
    page: Page,
    base_url: str,
    type_slug: str,
    name: str,
    fields: dict[str, str],
    shots: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Open the create form of block type `type_slug`, type `name` and `fields` (label: text),
    press Create. The caller checks the server for the block (the UI's answer is not read)."""
    page.goto(base_url.rstrip("/") + f"/blocks/catalog/{type_slug}/create")
    create = page.get_by_role("button", name="Create", exact=True)
    try:
        create.wait_for(state="visible", timeout=timeout_s * 1000)
        for label, text in {"Block Name": name, **fields}.items():
            control = _field(page, label)
            control.wait_for(state="visible", timeout=timeout_s * 1000)
            control.fill(text)
    except PlaywrightTimeoutError:
        raise _fail(page, shots, f"the create form of {type_slug} lacks a field") from None
    create.click()


def wait_for_block(page: Page, slug: str, name: str, timeout_s: float = 30.0) -> None:
    """Poll the server for the block, letting the browser's requests through meanwhile
    (its request filter runs in this thread: time.sleep would hold the form's POST)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_block_document_by_name(name, slug, include_secrets=False)
                return
            except ObjectNotFound:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no block {slug}/{name} after the UI's Create") from None
                page.wait_for_timeout(500)
