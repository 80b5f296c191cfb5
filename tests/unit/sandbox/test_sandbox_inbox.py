"""The sandbox's inbox page in a real browser: headless Chromium (Debian's) driven by Selenium.

The sandbox receives what the relay sends for the demo's sample (``dev.sample_events``,
planned by the relay's own handlers and sent as the client sends them), then a repeated event,
a backfilled one, a request Klaviyo would refuse and an event whose properties carry markup.
The page is then read as a person reads it: the profile by its email, its events in order,
the marks, the rejected request with its code and pointer, the filters, and an event that
arrives while the page is open.

Set ``INBOX_SCREENSHOT=docs/sandbox-inbox.png`` to refresh the README's screenshot.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from consumer.codec import DecodedEvent
from consumer.errors import EventRejected
from consumer.handlers.registry import HandlerRegistry
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.plain_json import from_plain_json
from consumer.settings import load_settings
from dev.sample_events import Planted, sample
from klaviyo_sandbox import SandboxOptions
from klaviyo_sandbox.facts import PUBLISHED_LIMITS
from klaviyo_sandbox.store import REJECTED_KEPT
from tests.fixtures.sandbox import (
    Api,
    Reply,
    bulk_body,
    event_attributes,
    event_body,
    sandbox_api,
    send_plan,
)

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')"
)
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_SECONDS = 20
T = TypeVar("T")


# --- without a browser: what the page is made of ----------------------------------------------


async def test_rejected_requests_are_kept_with_their_errors_and_bounded() -> None:
    async with sandbox_api() as api:
        assert (await api.event(event_body(metric=""))).status == 400
        assert (await api.event(event_body(), headers={"Authorization": None})).status == 401
        listed = await api.inspect("rejected")
        assert [(r["status"], r["endpoint"], r["path"]) for r in listed["data"]] == [
            (400, "create_event", "/api/events"),
            (401, "create_event", "/api/events"),
        ]
        assert listed["data"][0]["errors"][0]["code"] == "invalid"
        assert listed["data"][0]["errors"][0]["pointer"] == (
            "/data/attributes/metric/data/attributes/name"
        )
        for _ in range(REJECTED_KEPT):
            await api.event(event_body(metric=""))
        listed = await api.inspect("rejected")
        assert len(listed["data"]) == REJECTED_KEPT
        assert listed["meta"]["count"] == REJECTED_KEPT + 2
        await api.session.post(f"{api.base_url}/_sandbox/reset")
        assert (await api.inspect("rejected"))["data"] == []


async def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    async with sandbox_api() as api:
        for path in ("/", "/_sandbox/", "/_sandbox/inbox"):
            async with api.session.get(api.base_url + path) as response:
                assert response.status == 200, path
                assert response.content_type == "text/html"
                assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        for name, kind in (("inbox.css", "text/css"), ("inbox.js", "text/javascript")):
            async with api.session.get(f"{api.base_url}/_sandbox/static/{name}") as response:
                assert (response.status, response.content_type) == (200, kind)
        async with api.session.get(f"{api.base_url}/_sandbox/static/inbox.html") as response:
            assert response.status == 404


# --- a sandbox on its own loop, so the (blocking) browser driver never stalls it -------------


class SandboxThread:
    """The sandbox and a client of it on their own loop, so the blocking browser driver never
    stalls them; the test calls in with :meth:`run`."""

    def __init__(self) -> None:
        self._started: Future[Api] = Future()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        options = SandboxOptions(seed=11, rate_limits=dict(PUBLISHED_LIMITS))
        try:
            async with sandbox_api(options) as api:
                self._started.set_result(api)
                await self._stop.wait()
        except BaseException as exc:
            if not self._started.done():
                self._started.set_exception(exc)
            raise

    def start(self) -> None:
        self._thread.start()
        self.api = self._started.result(timeout=30)
        self.base_url = self.api.base_url

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=60)

    def call(self, method: str, path: str, body: Any = None) -> Reply:
        return self.run(self.api.call(method, path, body))

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


def demo_requests(now: datetime) -> list[list[KlaviyoRequest]]:
    """The relay's plans for the demo's sample, without the records it dead-letters."""
    registry = HandlerRegistry.from_settings(load_settings())
    plans = []
    for record in sample(now, per_topic=2):
        if record.event is None or record.planted in (Planted.LIMIT_EXCEEDED, Planted.EXPIRED):
            continue
        name = registry.record_for(record.topic)
        event = DecodedEvent(name, from_plain_json(name, record.event))
        with suppress(EventRejected):
            plans.append(list(registry.plan(record.topic, event, now).requests))
    return plans


def sent_events(plans: list[list[KlaviyoRequest]]) -> list[dict[str, Any]]:
    return [
        r.body["data"]["attributes"]
        for requests in plans
        for r in requests
        if r.endpoint is Endpoint.CREATE_EVENT and r.body is not None
    ]


# --- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("no Chromium: apt-get install chromium chromium-driver (Debian) to run it")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1440,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    thread = SandboxThread()
    try:
        thread.start()
        yield thread
    finally:
        thread.stop()


def wait_for(driver: Any, condition: Callable[[Any], T], message: str) -> T:
    """``condition``'s first truthy value; the live refresh may swap the content under a
    lookup (a stale element), which is retried like a missing one."""
    result: T = WebDriverWait(
        driver,
        WAIT_SECONDS,
        poll_frequency=0.1,
        ignored_exceptions=(StaleElementReferenceException,),
    ).until(condition, message)
    return result


def read(driver: Any, look: Callable[[Any], T]) -> T:
    """What ``look`` sees on the page, read again if the content was swapped meanwhile."""
    seen: list[T] = []

    def attempt(d: Any) -> bool:
        seen.append(look(d))
        return True

    wait_for(driver, attempt, "the page kept changing under the test")
    return seen[-1]


def profile_card(driver: Any, email: str) -> WebElement:
    cards: list[WebElement] = [
        c
        for c in driver.find_elements(By.CSS_SELECTOR, "article.profile")
        if c.get_attribute("data-email") == email
    ]
    assert len(cards) == 1, f"{email}: {len(cards)} profile cards"
    return cards[0]


def click(driver: Any, element: WebElement) -> None:
    """Scroll it to the middle first, as a person would: the sticky bar covers the top."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def text_in(element: Any, selector: str) -> str:
    text: str = element.find_element(By.CSS_SELECTOR, selector).text
    return text


def shown_events(card: WebElement) -> list[tuple[str, str]]:
    """(metric, unique_id) of each event in the card, top to bottom, as displayed."""
    return [
        (
            e.find_element(By.CSS_SELECTOR, ".metric").text,
            e.find_element(By.CSS_SELECTOR, ".unique-id").text,
        )
        for e in card.find_elements(By.CSS_SELECTOR, "li.event")
    ]


def visible_emails(driver: Any) -> list[str]:
    return [
        c.get_attribute("data-email") or ""
        for c in driver.find_elements(By.CSS_SELECTOR, "article.profile")
    ]


def type_filter(driver: Any, name: str, text: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#filters input[name={name}]")
    field.clear()
    if text:
        field.send_keys(text)
    else:  # clear() alone fires no input event
        driver.execute_script(
            "arguments[0].dispatchEvent(new Event('input', {bubbles: true}))", field
        )


def test_the_inbox_shows_what_klaviyo_received(browser: Any, sandbox: SandboxThread) -> None:
    now = datetime.now(UTC)
    plans = demo_requests(now)
    for requests in plans:
        sandbox.run(send_plan(sandbox.api, requests))
    events = sent_events(plans)
    assert len(events) >= 10, "the demo's sample should make a good number of events"

    # The person with the most events, and what the relay sent for them, in order.
    by_email: dict[str, list[tuple[str, str]]] = {}
    for attrs in events:
        email = attrs["profile"]["data"]["attributes"].get("email")
        if email:
            by_email.setdefault(email, []).append(
                (attrs["metric"]["data"]["attributes"]["name"], attrs["unique_id"])
            )
    email, expected = max(by_email.items(), key=lambda item: len(item[1]))
    assert len({metric for metric, _ in expected}) >= 2, expected

    # Klaviyo's dedup: the relay retries a Create Event after a lost answer.
    repeated = next(
        r for requests in plans for r in requests if r.endpoint is Endpoint.CREATE_EVENT
    )
    assert repeated.body is not None
    repeated_attrs = repeated.body["data"]["attributes"]
    repeated_email = repeated_attrs["profile"]["data"]["attributes"]["email"]
    repeated_uid = repeated_attrs["unique_id"]
    assert sandbox.call(repeated.method, repeated.target, repeated.body).status == 202

    # A replayed old event goes through Bulk Create Events as a backfill.
    backfilled = event_attributes(
        "Placed Order", "backfill-1", "2024-01-05T10:00:00Z", {"OrderId": "B-77"}, backfill=True
    )
    backfill_profile = {"type": "profile", "attributes": {"email": "backfill.buyer@shopmail.io"}}
    bulk = sandbox.call(
        "POST", "/api/event-bulk-create-jobs", bulk_body([(backfill_profile, [backfilled])])
    )
    assert bulk.status == 202, bulk.raw

    # A request Klaviyo refuses: a metric without a name.
    bad = event_body(metric="")
    refused = sandbox.call("POST", "/api/events", bad)
    assert refused.status == 400
    pointer = refused.pointers[0]
    code = refused.errors[0]["code"]

    browser.get(sandbox.base_url + "/")
    wait_for(browser, lambda d: profile_card(d, email), f"no profile card for {email}")
    title = read(browser, lambda d: text_in(profile_card(d, email), ".profile-title"))
    assert title == email
    assert read(browser, lambda d: shown_events(profile_card(d, email))) == expected

    def dedup_mark(d: Any) -> str:
        for event in profile_card(d, repeated_email).find_elements(By.CSS_SELECTOR, "li.event"):
            if text_in(event, ".unique-id") == repeated_uid:
                return text_in(event, ".marks")
        raise AssertionError(f"no event {repeated_uid}")

    assert "deduplicated ×2" in read(browser, dedup_mark)
    marks = read(
        browser, lambda d: text_in(profile_card(d, "backfill.buyer@shopmail.io"), ".marks")
    )
    assert "backfill" in marks

    # Properties expand on a click (and stay open through the live refresh).
    read(
        browser,
        lambda d: click(
            d, profile_card(d, email).find_element(By.CSS_SELECTOR, "li.event summary")
        ),
    )
    wait_for(
        browser,
        lambda d: (
            profile_card(d, email).find_element(By.CSS_SELECTOR, "li.event pre").is_displayed()
        ),
        "the event's properties did not expand",
    )

    rejected = read(
        browser,
        lambda d: [
            text_in(d, f"#rejected li.rejected {c}") for c in (".status", ".code", ".pointer")
        ],
    )
    assert rejected == ["400", code, pointer]

    windows = read(browser, lambda d: text_in(d, "#windows tr[data-endpoint=create_event]"))
    assert windows.startswith("create_event"), windows
    assert "/" in windows  # used/limit of the enforced windows

    screenshot = os.environ.get("INBOX_SCREENSHOT")
    if screenshot:
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1440, min(int(height) + 40, 2400))
        browser.execute_script("window.scrollTo(0, 0)")
        Path(screenshot).write_bytes(browser.get_screenshot_as_png())
        browser.set_window_size(1440, 1000)

    # Filters narrow the list while the page stays open.
    everyone = read(browser, visible_emails)
    assert len(everyone) > 2
    type_filter(browser, "email", email.split("@")[0].upper())
    wait_for(browser, lambda d: visible_emails(d) == [email], "the email filter did not narrow")
    type_filter(browser, "email", "")
    wait_for(browser, lambda d: len(visible_emails(d)) == len(everyone), "filter not cleared")
    metric = expected[0][0]
    type_filter(browser, "metric", metric)
    wait_for(browser, lambda d: len(visible_emails(d)) < len(everyone), "metric filter")
    shown = read(
        browser, lambda d: [m.text for m in d.find_elements(By.CSS_SELECTOR, "li.event .metric")]
    )
    assert shown and all(metric.lower() in m.lower() for m in shown), shown
    assert "metric=" in browser.current_url  # the filtered view can be bookmarked
    type_filter(browser, "metric", "")
    wait_for(browser, lambda d: len(visible_emails(d)) == len(everyone), "filter not cleared")

    accepted = read(browser, lambda d: text_in(d, "[data-figure=accepted]"))
    assert int(accepted) == len(events) + 1  # and the backfill


def test_an_event_appears_live_and_its_markup_is_shown_not_run(
    browser: Any, sandbox: SandboxThread
) -> None:
    first = event_body(metric="Placed Order", unique_id="first-1")
    assert sandbox.call("POST", "/api/events", first).status == 202
    browser.get(sandbox.base_url + "/")
    assert read(browser, visible_emails) == ["john.smith@shopmail.io"]
    browser.execute_script("window.__stillHere = true")  # a reload would lose it

    # Properties are the shop's data: markup in them is shown, never run.
    markup = '<img src=x onerror="document.title=\'owned\'"><script>document.title="owned"</script>'
    hostile = "mallory@shopmail.io"
    body = event_body(
        {"type": "profile", "attributes": {"email": hostile}},
        metric="Viewed <b>Product</b>",
        unique_id="xss-1",
        properties={"Note": markup},
    )
    assert sandbox.call("POST", "/api/events", body).status == 202

    shown = wait_for(
        browser,
        lambda d: shown_events(profile_card(d, hostile)) if hostile in visible_emails(d) else None,
        "the new event did not appear without a reload",
    )
    assert shown == [("Viewed <b>Product</b>", "xss-1")]
    assert read(browser, visible_emails) == [hostile, "john.smith@shopmail.io"]  # latest first
    assert browser.execute_script("return window.__stillHere") is True
    read(
        browser,
        lambda d: click(d, profile_card(d, hostile).find_element(By.CSS_SELECTOR, "summary")),
    )
    properties = wait_for(
        browser, lambda d: text_in(profile_card(d, hostile), "pre"), "properties not expanded"
    )
    assert f'"Note": {orjson.dumps(markup).decode()}' in properties  # as JSON, verbatim
    assert browser.find_elements(By.CSS_SELECTOR, "#content img, #content script, b") == []
    assert browser.title != "owned"

    # Klaviyo accepts test domains and drops them: listed apart, never as a profile.
    tester = event_body(
        {"type": "profile", "attributes": {"email": "qa@example.com"}}, unique_id="qa-1"
    )
    assert sandbox.call("POST", "/api/events", tester).status == 202
    dropped = wait_for(browser, lambda d: text_in(d, "#dropped ul"), "no dropped event shown")
    assert dropped == "qa@example.com Placed Order"
    assert "qa@example.com" not in read(browser, visible_emails)


def test_an_empty_sandbox_says_how_to_point_the_relay_at_it(
    browser: Any, sandbox: SandboxThread
) -> None:
    browser.get(sandbox.base_url + "/_sandbox/")
    empty = browser.find_element(By.CSS_SELECTOR, "#content .empty")
    assert "KLAVIYO_BASE_URL" in empty.text
    assert browser.find_element(By.CSS_SELECTOR, "#rejected").text.endswith("None so far.")
