"""Drive the Prefect UI that ships with the server in headless Debian Chromium, for tests.

Only what tests need: log in through the UI's own password page, read a run's artifacts, read a
waiting (paused or suspended) run's Resume form and approve it through that form. Works with
both bundled UIs of Prefect 3.9:

* v1, the older Vue UI, served at `/`. `/runs/flow-run/<id>` (the link Prefect logs) is served
  by v1 whatever the default UI setting is; only `/` redirects to the default.
* v2, the new React UI, served at `/v2/` and the default for `/` (`server.ui.v2_enabled`).

`ui="auto"` (the default everywhere) opens `/runs/flow-run/<id>` and drives whichever UI
answers. Every wait has a deadline; a timeout raises `PrefectUIError` naming a screenshot.
Screenshots are numbered PNG files (`01-v1-login-page.png`, ...) in the screenshots directory.

Typical use::

    with prefect_ui.browser(tmp_path / "shots") as page:
        prefect_ui.login(page, base_url, "secret")
        assert "Change summary" in prefect_ui.read_artifacts_text(page, base_url, run_id)
        form = prefect_ui.read_resume_form(page, base_url, run_id, ui="v2")
        assert form.values["Digest"] == digest  # a field the form fills in
        result = prefect_ui.approve_waiting_run(
            page, base_url, run_id,
            {"decision": "approve", "digest": digest, "approver": "alice"}, shots,
            expect_description=["Change summary"],
        )

A text field that already holds the value asked for is left as it is (confirmed): both UIs
fill in a `const` field such as the digest an approval names, and v1 lets no one change it.

The server must tell the UI its real API address: `prefect server start --port N` does not,
so start it with `PREFECT_UI_API_URL=http://127.0.0.1:N/api` (`login` checks this).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import inspect
import re
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urljoin, urlsplit

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, Route, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# The run page's timeline graph is WebGL; Chromium renders it in software, which kept 2 busy
# cores saturated and made every UI step 5-10 times slower. Tests do not need the graph.
NO_WEBGL_ARGS = ("--disable-webgl", "--disable-3d-apis")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
DEFAULT_TIMEOUT_S = 20.0
# A resume the server answered with 503 is submitted again at most this often.
MAX_RESUBMITS = 2

UI = Literal["auto", "v1", "v2"]
# The state names of a run waiting for input: paused in its process, or suspended.
WAITING = ("Paused", "Suspended")
FieldValue = str | bool


class PrefectUIError(AssertionError):
    """A UI step failed or timed out; `screenshot` is the picture taken at that moment."""

    def __init__(self, message: str, screenshot: Path | None = None):
        super().__init__(message)
        self.screenshot = screenshot


@dataclass
class _PageState:
    screenshots_dir: Path
    blocked: list[str] = field(default_factory=list)
    api_errors: deque[str] = field(default_factory=lambda: deque(maxlen=10))
    unauthorized: int = 0  # API answers 401 seen so far
    resume_unavailable: int = 0  # API answers 503 to a resume seen so far


_STATE: weakref.WeakKeyDictionary[Page, _PageState] = weakref.WeakKeyDictionary()


@dataclass
class ApprovalResult:
    ui: Literal["v1", "v2"]
    description_text: str  # the Markdown description as rendered above the form
    dialog_text: str  # everything the Resume dialog showed before submitting
    final_state: str  # the run's state badge after the resume ("Running", "Completed", ...)
    screenshots: list[Path]
    timings: dict[str, float]  # seconds per step, in order
    resubmits: int = 0  # Submit clicked again after the server answered the resume with 503


# --- browser -----------------------------------------------------------------------------


@contextlib.contextmanager
def browser(
    screenshots_dir: Path,
    *,
    viewport: tuple[int, int] = (1400, 1000),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    chromium: Path = CHROMIUM,
    webgl: bool = False,
) -> Iterator[Page]:
    """Headless Debian Chromium with a fresh profile that can reach only 127.0.0.1/localhost.

    WebGL is off unless `webgl=True`: the run page's timeline graph then stays empty.
    """
    screenshots_dir = Path(screenshots_dir)
    screenshots_dir.mkdir(parents=True, exist_ok=True)
    state = _PageState(screenshots_dir)

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:  # the UIs try analytics (amplitude) and outside logos
            state.blocked.append(route.request.url)
            route.abort()

    with (
        tempfile.TemporaryDirectory(prefix="fluid-chromium-") as user_data,
        sync_playwright() as pw,
    ):
        ctx = pw.chromium.launch_persistent_context(
            user_data,
            executable_path=str(chromium),
            headless=True,
            args=list(CHROMIUM_ARGS) + ([] if webgl else list(NO_WEBGL_ARGS)),
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            ctx.set_default_timeout(timeout_s * 1000)
            ctx.set_default_navigation_timeout(timeout_s * 1000)
            ctx.route("**/*", only_loopback)
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            _STATE[page] = state
            page.on("response", lambda r: _note_response(state, r))
            try:
                yield page
            except Exception:
                _screenshot(page, screenshots_dir, "exception", required=False)
                raise
        finally:
            ctx.unroute_all(behavior="ignoreErrors")
            ctx.close()


def _note_response(state: _PageState, response) -> None:
    if "/api/" in response.url and response.status >= 400:
        state.unauthorized += response.status == 401
        state.resume_unavailable += response.status == 503 and response.url.endswith("/resume")
        state.api_errors.append(f"{response.status} {response.request.method} {response.url}")


def blocked_requests(page: Page) -> list[str]:
    """Requests to hosts other than 127.0.0.1/localhost that the browser was kept from."""
    return list(_STATE[page].blocked) if page in _STATE else []


def _explained(fn):
    """Turn a bare Playwright error (a click or goto past its deadline) into a PrefectUIError."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(page: Page, *args, **kwargs):
        try:
            return fn(page, *args, **kwargs)
        except PlaywrightError as e:
            given = signature.bind_partial(page, *args, **kwargs).arguments.get("screenshots_dir")
            shots = _shots_dir(page, given)
            raise _failure(page, shots, f"{fn.__name__}: {e}", "playwright-error") from e

    return wrapper


# --- login -------------------------------------------------------------------------------


def ui_settings(page: Page, base_url: str) -> dict:
    """The server's `/ui-settings` (auth mode, API URL the UI will call, default UI)."""
    response = page.request.get(_url(base_url, "/ui-settings"))
    if not response.ok:
        raise PrefectUIError(f"GET {base_url}/ui-settings answered {response.status}")
    return response.json()


def check_ui_api_url(settings: dict, base_url: str) -> None:
    want = _url(base_url, "/api")
    got = urljoin(base_url.rstrip("/") + "/", settings.get("api_url") or "/api").rstrip("/")
    if got != want:
        raise PrefectUIError(
            f"the server tells its UI to call {got}, not {want}: start the server with "
            f"PREFECT_UI_API_URL={want} (`prefect server start --port` alone leaves the UI on "
            "PREFECT_API_URL or PREFECT_SERVER_API_PORT, default 4200)"
        )


@_explained
def login(
    page: Page,
    base_url: str,
    password: str,
    *,
    ui: UI = "auto",
    screenshots_dir: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Literal["v1", "v2"]:
    """Type `password` (the server's PREFECT_SERVER_API_AUTH_STRING) into the UI's login page.

    Both UIs keep base64(password) in localStorage `prefect-password` for the origin, so one
    login serves both. `ui="auto"` uses v1's page, the UI that serves `/runs/flow-run/<id>`.
    Returns the UI used; raises unless the UI shows its logged-in navigation.
    """
    shots = _shots_dir(page, screenshots_dir)
    settings = ui_settings(page, base_url)
    check_ui_api_url(settings, base_url)
    if settings.get("auth") != "BASIC":
        raise PrefectUIError(
            f"{base_url} has no PREFECT_SERVER_API_AUTH_STRING (auth={settings.get('auth')!r}):"
            " the UI has no login page"
        )
    available = settings.get("available_uis") or ["v1", "v2"]
    if ui == "auto":
        ui = "v1" if "v1" in available else "v2"
    page.goto(_url(base_url, "/login" if ui == "v1" else "/v2/login"))
    box = page.locator("input[type=password]")
    _wait_visible(page, box, "the login page's password box", shots, timeout_s)
    _screenshot(page, shots, f"{ui}-login-page")
    box.click()
    box.press_sequentially(password)
    page.get_by_role("button", name="Login", exact=True).click()

    logged_in = (
        page.get_by_role("button", name="Dashboard", exact=True)
        if ui == "v1"
        else page.get_by_role("button", name="Logout", exact=True)
    )
    failed = page.get_by_text(
        re.compile(r"Authentication failed|Invalid credentials|Invalid password|Can't connect")
    )
    token = base64.b64encode(password.encode()).decode()

    def outcome() -> bool | str:
        if failed.count():
            return "failed: " + " | ".join(failed.all_inner_texts())
        if not urlsplit(page.url).path.rstrip("/").endswith("/login") and logged_in.count():
            stored = page.evaluate("() => localStorage.getItem('prefect-password')")
            return stored == token or "logged-in page shown but localStorage has no password"
        return False

    result = _wait_until(page, outcome, "the UI to get past its login page", shots, timeout_s)
    if result is not True:
        raise _failure(page, shots, f"login to {base_url} ({ui}) {result}", "login-failed")
    _screenshot(page, shots, f"{ui}-logged-in")
    if page in _STATE:  # the 401s before the login are no news in later errors
        _STATE[page].api_errors.clear()
    return ui


# --- run page ----------------------------------------------------------------------------


@_explained
def open_run_page(
    page: Page,
    base_url: str,
    flow_run_id: str,
    *,
    ui: UI = "auto",
    screenshots_dir: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Literal["v1", "v2"]:
    """Open the flow run's page; returns the UI that answered."""
    shots = _shots_dir(page, screenshots_dir)
    prefix = "/v2" if ui == "v2" else ""
    state = _STATE.get(page)
    unauthorized = state.unauthorized if state else 0
    page.goto(_url(base_url, f"{prefix}/runs/flow-run/{flow_run_id}"))
    tabs = _artifacts_tab(page, "v1").or_(_artifacts_tab(page, "v2"))
    login_page = page.locator("input[type=password]")

    def ready() -> bool | str:
        if login_page.count() or urlsplit(page.url).path.rstrip("/").endswith("/login"):
            return "login"
        if state and state.unauthorized > unauthorized:  # v1 shows a 404 page, not a login
            return "login"
        return tabs.count() > 0

    if _wait_until(page, ready, f"the page of flow run {flow_run_id}", shots, timeout_s) == "login":
        raise _failure(page, shots, "the UI asks for a login: call login() first", "not-logged-in")
    got = ui_of(page)
    if ui != "auto" and got != ui:
        raise _failure(page, shots, f"asked for the {ui} UI, got {got} at {page.url}", "wrong-ui")
    return got


def ui_of(page: Page) -> Literal["v1", "v2"]:
    path = urlsplit(page.url).path
    return "v2" if path == "/v2" or path.startswith("/v2/") else "v1"


def _artifacts_tab(page: Page, ui: str) -> Locator:
    if ui == "v1":  # v1 tabs are <li class="p-tab"> without an ARIA role
        return page.locator("li.p-tab").filter(has_text=re.compile(r"^\s*Artifacts\s*$"))
    return page.get_by_role("tab", name="Artifacts", exact=True)


def _state_badge(page: Page, ui: str) -> Locator:
    if ui == "v1":
        return page.locator(".page-heading-flow-run__meta .state-badge").first
    return page.locator("[data-slot=badge][class*='bg-state-']").first


def run_state_text(page: Page, ui: str) -> str:
    """The state badge of the open run page ("Paused", "Running", ...), '' if not shown."""
    badge = _state_badge(page, ui)
    return badge.inner_text().strip() if badge.count() else ""


@_explained
def read_artifacts_text(
    page: Page,
    base_url: str,
    flow_run_id: str,
    screenshots_dir: Path | None = None,
    *,
    ui: UI = "auto",
    open_artifacts: bool = True,
    expect: Iterable[str] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> str:
    """Text of the run's Artifacts tab and, with `open_artifacts`, of each artifact's page.

    The tab shows only cards (type, key, description); the rendered Markdown is on each
    artifact's own page, which this opens in turn. Leaves the browser on the last artifact.
    Raises unless every string of `expect` is in the text (whitespace-normalized).
    """
    shots = _shots_dir(page, screenshots_dir)
    ui = open_run_page(
        page, base_url, flow_run_id, ui=ui, screenshots_dir=shots, timeout_s=timeout_s
    )
    _artifacts_tab(page, ui).first.click()
    links = page.locator("a[href*='/artifacts/artifact/']")
    _wait_visible(page, links.first, "an artifact card in the Artifacts tab", shots, timeout_s)
    _screenshot(page, shots, f"{ui}-artifacts-tab")
    container = page.locator(".flow-run-artifacts") if ui == "v1" else page.get_by_role("tabpanel")
    texts = [_settled_text(page, container.first, "the Artifacts tab", shots, timeout_s)]
    if open_artifacts:
        hrefs = list(dict.fromkeys(a.get_attribute("href") for a in links.all()))
        for href in hrefs:
            page.goto(_url(base_url, href))
            body = (
                page.locator(".artifact-data-view") if ui == "v1" else page.get_by_role("tabpanel")
            ).first
            texts.append(
                _settled_text(page, body, f"the content of artifact {href}", shots, timeout_s)
            )
            _screenshot(page, shots, f"{ui}-artifact")
    text = "\n\n".join(texts)
    missing = [e for e in expect if _norm(e) not in _norm(text)]
    if missing:
        raise _failure(
            page, shots, f"not in the run's artifacts: {missing!r}; they show:\n{text}", "artifacts"
        )
    return text


def _settled_text(page: Page, element: Locator, what: str, shots: Path, timeout_s: float) -> str:
    """`element`'s text once it has content and three reads 0.2 s apart agree.

    The UIs render artifact Markdown lazily: v2 first shows only its "Show Raw Data" button.
    """
    reads: list[str] = []

    def settled() -> bool:
        reads.append(element.inner_text().strip() if element.count() else "")
        content = re.sub(r"show raw data", "", reads[-1], flags=re.IGNORECASE).strip()
        return bool(content) and len(reads) >= 3 and reads[-1] == reads[-2] == reads[-3]

    _wait_until(page, settled, what, shots, timeout_s)
    return reads[-1]


# --- approval ----------------------------------------------------------------------------


@_explained
def approve_waiting_run(
    page: Page,
    base_url: str,
    flow_run_id: str,
    fields: dict[str, FieldValue],
    screenshots_dir: Path | None = None,
    *,
    ui: UI = "auto",
    expect_description: Iterable[str] = (),
    wait_resumed: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ApprovalResult:
    """Open the run waiting for input (paused in its process, or suspended: a deployment's
    run holds no process while it waits), fill its Resume form with `fields` and submit it.

    `fields` maps RunInput field names (or their form titles) to values: a str for text
    fields and for Literal/enum dropdowns (the option's text), a bool for switches.
    Fields left out keep the form's defaults. `expect_description` lists strings that must
    be visible in the dialog (the rendered Markdown, so `## Title` shows as `Title`).
    """
    shots = _shots_dir(page, screenshots_dir)
    timings: dict[str, float] = {}
    taken: list[Path] = []
    clock = time.monotonic()

    def step(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[name] = round(now - clock, 3)
        clock = now

    def shot(label: str) -> None:
        taken.append(_screenshot(page, shots, f"{ui_of(page)}-{label}"))

    ui, dialog, description_text, dialog_text = _resume_dialog(
        page, base_url, flow_run_id, ui, expect_description, shots, timeout_s, step, shot
    )

    for name, value in fields.items():
        _set_field(page, dialog, ui, name, value, shots, timeout_s)
    step("fill form")
    shot("form-filled")

    submit = dialog.get_by_role("button", name="Submit" if ui == "v1" else "Resume", exact=True)
    toast = page.get_by_text("Flow run resumed", exact=True)
    seen_toast = False
    state = _STATE.get(page)
    unavailable = state.resume_unavailable if state else 0
    resubmits = 0

    def resumed() -> bool:
        nonlocal seen_toast
        seen_toast = seen_toast or toast.count() > 0
        return seen_toast and not dialog.is_visible()

    def answered() -> str | None:
        if resumed():
            return "resumed"
        if state and state.resume_unavailable > unavailable and dialog.is_visible():
            return "unavailable"
        return None

    submit.click()
    # Prefect's server on SQLite can answer a resume with 503 ("database is locked": its
    # resume transaction is deferred and loses to a concurrent writer), and the UI only shows
    # "Something went wrong"; a reviewer clicks Submit again, and so does this.
    while (
        _wait_until(page, answered, "the resume's answer", shots, timeout_s) == "unavailable"
        and resubmits < MAX_RESUBMITS
    ):
        resubmits += 1
        unavailable = state.resume_unavailable if state else 0
        shot(f"resume-503-{resubmits}")
        submit.click()
    _wait_until(
        page, resumed, "the 'Flow run resumed' toast and the dialog to close", shots, timeout_s
    )
    step("submit")
    shot("resumed-toast")

    final_state = run_state_text(page, ui)
    if wait_resumed:
        _wait_until(
            page,
            lambda: run_state_text(page, ui) not in ("", *WAITING),
            "the run page to leave the Paused or Suspended state",
            shots,
            timeout_s,
        )
        final_state = run_state_text(page, ui)
        step("run resumed")
        shot("after-resume")
    return ApprovalResult(ui, description_text, dialog_text, final_state, taken, timings, resubmits)


@dataclass
class ResumeForm:
    ui: Literal["v1", "v2"]
    description_text: str  # the Markdown description as rendered above the form
    dialog_text: str
    values: dict[str, str]  # each field's label (without "(Optional)") and what it holds
    description_html: str  # the rendered description's HTML, to check what elements it made


@_explained
def read_resume_form(
    page: Page,
    base_url: str,
    flow_run_id: str,
    screenshots_dir: Path | None = None,
    *,
    ui: UI = "auto",
    expect_description: Iterable[str] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ResumeForm:
    """Open the waiting run's Resume dialog, read its description and fields, and close it
    without submitting. Text and select fields report their text; switches "true"/"false"."""
    shots = _shots_dir(page, screenshots_dir)

    def shot(label: str) -> None:
        _screenshot(page, shots, f"{ui_of(page)}-{label}")

    got, dialog, description_text, dialog_text = _resume_dialog(
        page, base_url, flow_run_id, ui, expect_description, shots, timeout_s, lambda _: None, shot
    )
    labels = (
        dialog.locator(".schema-form-property__label") if got == "v1" else dialog.locator("label")
    )
    values = {}
    for text in labels.all_inner_texts():
        name = re.sub(r"\s*\(Optional\)\s*$", "", text.strip())
        control = _control(page, dialog, got, name, shots, timeout_s)
        values[name] = control.evaluate(
            """e => e.getAttribute('role') === 'switch' ? String(e.getAttribute('aria-checked'))
                 : ('value' in e && e.tagName !== 'BUTTON') ? e.value : e.innerText.trim()"""
        )
    html = _description(dialog, got).inner_html()
    dialog.get_by_role("button", name="Close" if got == "v1" else "Cancel", exact=True).click()
    _wait_until(page, lambda: not dialog.is_visible(), "the dialog to close", shots, timeout_s)
    return ResumeForm(got, description_text, dialog_text, values, html)


def _description(dialog: Locator, ui: str) -> Locator:
    return (
        dialog.locator(".p-modal__body > article.markdown-renderer")
        if ui == "v1"
        else dialog.locator(".prose")
    ).first


def _resume_dialog(
    page: Page,
    base_url: str,
    flow_run_id: str,
    ui: UI,
    expect_description: Iterable[str],
    shots: Path,
    timeout_s: float,
    step: Callable[[str], None],
    shot: Callable[[str], None],
) -> tuple[Literal["v1", "v2"], Locator, str, str]:
    """Open the waiting run's page and its Resume dialog; wait until the dialog shows every
    string of `expect_description` and has settled. (ui, dialog, description, dialog text)."""
    got = open_run_page(
        page, base_url, flow_run_id, ui=ui, screenshots_dir=shots, timeout_s=timeout_s
    )
    badge = _state_badge(page, got)
    _wait_until(
        page,
        lambda: badge.count() > 0 and badge.inner_text().strip() in WAITING,
        f"flow run {flow_run_id} to show as Paused or Suspended",
        shots,
        timeout_s,
    )
    step("open run page")
    shot("run-page")

    dialog = _open_resume_dialog(page, got, shots, timeout_s)
    description = _description(dialog, got)
    expected = [_norm(s) for s in expect_description]
    seen: list[tuple[str, str]] = []

    def settled() -> bool:
        # The Markdown and the form render separately (code blocks last): wait for the
        # expected strings, then for three equal reads in a row.
        text = description.inner_text().strip() if description.count() else ""
        seen.append((text, dialog.inner_text()))
        if any(e not in _norm(seen[-1][1]) for e in expected):
            return False
        return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]

    if not _wait_until(page, settled, "the dialog", shots, timeout_s, fail=False):
        dialog_text = seen[-1][1] if seen else ""
        missing = [e for e in expected if e not in _norm(dialog_text)]
        raise _failure(
            page,
            shots,
            f"not in the Resume dialog after {timeout_s:g} s: {missing!r}; it shows:\n"
            f"{dialog_text}",
            "description-missing",
        )
    step("open resume dialog")
    shot("resume-dialog")
    return got, dialog, seen[-1][0], seen[-1][1]


def _open_resume_dialog(page: Page, ui: str, shots: Path, timeout_s: float) -> Locator:
    if ui == "v1":
        button = page.get_by_role("button", name="Resume", exact=True)
        _wait_visible(page, button, "the Resume button", shots, timeout_s)
        button.click()
        dialog = page.get_by_role("dialog").filter(has_text="Resume Flow Run")
        form_ready = dialog.locator(".schema-form-property, .p-modal__footer").first
    else:  # v2 keeps Resume in the header's menu
        menu = page.get_by_role("button", name="Open menu", exact=True).first
        _wait_visible(page, menu, "the run header's menu button", shots, timeout_s)
        menu.click()
        item = page.get_by_role("menuitem", name="Resume", exact=True)
        _wait_visible(page, item, "the Resume menu item", shots, timeout_s)
        item.click()
        dialog = page.get_by_role("dialog", name="Resume Flow Run")
        form_ready = dialog.locator("label, [data-slot=dialog-footer]").first
    _wait_visible(page, dialog, "the Resume Flow Run dialog", shots, timeout_s)
    _wait_visible(page, form_ready, "the Resume form", shots, timeout_s)
    return dialog


def _control(
    page: Page, dialog: Locator, ui: str, name: str, shots: Path, timeout_s: float
) -> Locator:
    """The input of the form field `name` (its RunInput field name or its title)."""
    title = name if (" " in name or name != name.lower()) else name.replace("_", " ")
    label_re = re.compile(rf"^\s*{re.escape(title)}(\s*\(Optional\))?\s*$", re.IGNORECASE)
    labels = (
        dialog.locator(".schema-form-property__label") if ui == "v1" else dialog.locator("label")
    )
    label = labels.filter(has_text=label_re)
    if not _wait_until(
        page, lambda: label.count() > 0, f"the form field {name!r}", shots, timeout_s, fail=False
    ):
        raise _failure(
            page,
            shots,
            f"no field {name!r} in the Resume form; its fields are {labels.all_inner_texts()!r}",
            "no-such-field",
        )
    if ui == "v1":  # v1 labels point at ids its inputs do not have: go through the row
        row = (
            dialog.locator(".schema-form-property")
            .filter(has=page.locator(".schema-form-property__label").filter(has_text=label_re))
            .last
        )
        control = row.locator("[role=switch], .p-select-button__control, textarea, input").first
    else:
        control = dialog.locator(f"[id='{label.first.get_attribute('for')}']")
    return control


def _set_field(
    page: Page,
    dialog: Locator,
    ui: str,
    name: str,
    value: FieldValue,
    shots: Path,
    timeout_s: float,
) -> None:
    control = _control(page, dialog, ui, name, shots, timeout_s)
    kind = control.evaluate(
        """e => e.getAttribute('role') === 'switch' ? 'switch'
             : (e.getAttribute('aria-haspopup') === 'listbox'
                || e.classList.contains('p-select-button__control')) ? 'select'
             : 'text'"""
    )
    if kind == "switch":
        want = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if (control.get_attribute("aria-checked") == "true") != want:
            control.click()
        expect = "true" if want else "false"
        _wait_until(
            page,
            lambda: control.get_attribute("aria-checked") == expect,
            f"switch {name!r} to be {want}",
            shots,
            timeout_s,
        )
    elif kind == "select":
        text = str(value)
        if ui == "v1":  # v1's select ignores a synthetic click in headless Chromium
            control.press("ArrowDown")
        else:
            control.click()
        option = page.get_by_role("option", name=text, exact=True)
        if not _wait_until(
            page,
            lambda: option.count() > 0,
            f"option {text!r} of {name!r}",
            shots,
            timeout_s,
            fail=False,
        ):
            offered = page.get_by_role("option").all_inner_texts()
            raise _failure(
                page, shots, f"{name!r} offers no {text!r}; options: {offered!r}", "no-such-option"
            )
        option.first.click()
        _wait_until(
            page,
            lambda: control.inner_text().strip() == text,
            f"{name!r} to show {text!r}",
            shots,
            timeout_s,
        )
    elif control.input_value() == str(value):
        # Already holds it: a prefilled field, or one the form shows but does not let anyone
        # change (v1 greys out a `const`, such as the digest an approval names). Confirmed.
        pass
    else:
        text = str(value)
        control.click()
        control.fill("")
        control.press_sequentially(text)
        _wait_until(
            page,
            lambda: control.input_value() == text,
            f"{name!r} to hold the typed text",
            shots,
            timeout_s,
        )


# --- waiting, screenshots, errors --------------------------------------------------------


def _wait_visible(page: Page, locator: Locator, what: str, shots: Path, timeout_s: float) -> None:
    try:
        locator.wait_for(state="visible", timeout=timeout_s * 1000)
    except PlaywrightTimeoutError:
        raise _failure(
            page, shots, f"timed out after {timeout_s:g} s waiting for {what}", "timeout"
        ) from None


def _wait_until(
    page: Page,
    condition: Callable[[], object],
    what: str,
    shots: Path,
    timeout_s: float,
    *,
    interval_s: float = 0.2,
    fail: bool = True,
):
    """Poll `condition` until it returns something truthy; its value is returned."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except PlaywrightError as e:  # element replaced while re-rendering: try again
            last_error = e
        if time.monotonic() >= deadline:
            if not fail:
                return False
            detail = f" (last error: {last_error})" if last_error else ""
            raise _failure(
                page,
                shots,
                f"timed out after {timeout_s:g} s waiting for {what}{detail}",
                "timeout",
            )
        page.wait_for_timeout(interval_s * 1000)


def _failure(page: Page, shots: Path, message: str, label: str) -> PrefectUIError:
    path = _screenshot(page, shots, label, required=False)
    lines = [message, f"url: {page.url}", f"screenshot: {path}"]
    state = _STATE.get(page)
    if state and state.api_errors:
        lines.append("recent API errors: " + "; ".join(state.api_errors))
    with contextlib.suppress(PlaywrightError):
        toasts = page.locator("[data-sonner-toast], .p-toast").all_inner_texts()
        if toasts:
            lines.append("toasts: " + " | ".join(t.replace("\n", " ") for t in toasts))
    return PrefectUIError("\n".join(lines), path)


def _screenshot(page: Page, shots: Path, label: str, *, required: bool = True) -> Path:
    shots.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in shots.glob("*.png") if (m := re.match(r"(\d+)-", p.name))]
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    path = shots / f"{max(numbers, default=0) + 1:02d}-{slug}.png"
    try:  # animations="disabled" finishes the UIs' fade-ins, which otherwise shoot blank
        page.screenshot(path=str(path), animations="disabled", timeout=10_000)
    except PlaywrightError as e:
        if required:
            raise PrefectUIError(f"screenshot {path} failed: {e}") from e
    return path


def _shots_dir(page: Page, screenshots_dir: Path | None) -> Path:
    if screenshots_dir is not None:
        return Path(screenshots_dir)
    if page in _STATE:
        return _STATE[page].screenshots_dir
    return Path(tempfile.mkdtemp(prefix="prefect-ui-shots-"))


def _url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def _norm(text: str) -> str:
    return " ".join(text.split())
