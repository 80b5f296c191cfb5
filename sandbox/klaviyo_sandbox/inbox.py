"""The sandbox's inbox: a web page showing what Klaviyo would have received.

Like Mailpit for an SMTP server: ``GET /`` (or ``/_sandbox/``) lists the profiles with their
identifiers and properties and, per profile, the events accepted in order (deduplicated
repeats and ``backfill`` marked), then the rejected requests with their error codes and
pointers and the rate-limit windows as they stand. The page is rendered here, on the server;
its script only re-fetches the same rendering (``GET /_sandbox/inbox``) every second or two
and on filter changes, so there is no client-side templating and no build step.

Everything shown that came from a request is user data, so every value goes through
:func:`html.escape`, and the page is served with a Content-Security-Policy that allows only
its own script and stylesheet (no inline code).
"""

from __future__ import annotations

import html
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from klaviyo_sandbox.fixed_windows import FixedWindow
from klaviyo_sandbox.store import IDENTIFIERS, JSONObject, Profile
from klaviyo_sandbox.validation import parse_time

if TYPE_CHECKING:
    from klaviyo_sandbox.app import Sandbox

# Beyond this the page gets slow to read anyway; the filters narrow it down.
PROFILES_SHOWN = 200
_STATIC = resources.files("klaviyo_sandbox") / "inbox_static"
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
# Read once: the page is served from the event loop, which must not wait on the disk.
_TEMPLATE = string.Template(_STATIC.joinpath("inbox.html").read_text(encoding="utf-8"))
_FILES = {
    name: (_STATIC.joinpath(name).read_bytes(), f"{kind}; charset=utf-8")
    for name, kind in (("inbox.css", "text/css"), ("inbox.js", "text/javascript"))
}
_NAME_FIELDS = ("first_name", "last_name", "organization", "title", "locale")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: Any) -> str:
    """An RFC 3339 time as ``YYYY-MM-DD HH:MM:SS`` in UTC (the raw text if it is not one)."""
    moment = parse_time(value) if isinstance(value, str) else None
    return str(value) if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}"


def _pretty(value: Any) -> str:
    return _e(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())


@dataclass(frozen=True)
class Filters:
    """What the person typed: case-insensitive substrings of the email and the metric."""

    email: str = ""
    metric: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Filters:
        return cls(query.get("email", "").strip(), query.get("metric", "").strip())

    def profile_matches(self, profile: Profile) -> bool:
        email = str(profile.attributes.get("email") or "")
        return self.email.lower() in email.lower()

    def event_matches(self, event: JSONObject) -> bool:
        return self.metric.lower() in str(event["metric"]).lower()


class Inbox:
    """Renders one sandbox's state as HTML."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    # --- the page ----------------------------------------------------------------------------

    def content(self, filters: Filters) -> str:
        """Everything below the filter form (what the script swaps in when it changes)."""
        state = self.sandbox.state
        by_profile: dict[str, list[tuple[int, JSONObject]]] = {}
        for number, event in enumerate(state.events, 1):
            by_profile.setdefault(event["profile_id"], []).append((number, event))
        rows = []
        for profile in state.profiles.values():
            events = [(n, e) for n, e in by_profile.get(profile.id, []) if filters.event_matches(e)]
            if not filters.profile_matches(profile) or (filters.metric and not events):
                continue
            latest = events[-1][1]["received_at"] if events else profile.updated
            rows.append((latest, profile, events))
        rows.sort(key=lambda row: row[0], reverse=True)  # the latest activity first
        metrics = sorted({str(e["metric"]) for e in state.events})
        parts = [
            self._summary(len(rows)),
            '<datalist id="metric-names">',
            *(f'<option value="{_e(m)}">' for m in metrics),
            "</datalist>",
            '<div class="columns"><section class="profiles" aria-label="Profiles">',
        ]
        if not rows:
            parts.append(self._empty(filters))
        parts.extend(self._profile(p, events) for _, p, events in rows[:PROFILES_SHOWN])
        if len(rows) > PROFILES_SHOWN:
            parts.append(
                f'<p class="note">{PROFILES_SHOWN} of {len(rows)} profiles shown:'
                " filter to narrow.</p>"
            )
        parts.append('</section><aside class="side">')
        parts.append(self._rejected())
        parts.append(self._windows())
        parts.append(self._dropped())
        parts.append("</aside></div>")
        return "".join(parts)

    def page(self, filters: Filters) -> str:
        return _TEMPLATE.substitute(
            email=_e(filters.email), metric=_e(filters.metric), content=self.content(filters)
        )

    def _summary(self, shown: int) -> str:
        state = self.sandbox.state
        figures = [
            (
                "profiles",
                f"{shown} of {len(state.profiles)}" if shown != len(state.profiles) else str(shown),
                "profiles",
            ),
            ("accepted", str(state.accepted), "events accepted"),
            ("duplicates", str(state.duplicates), "deduplicated"),
            ("dropped", str(state.dropped_count), "dropped (test domains)"),
            ("rejected", str(state.rejected_count), "rejected requests"),
        ]
        cells = "".join(
            f'<li class="figure figure-{key}"><strong data-figure="{key}">{_e(value)}</strong>'
            f" {_e(label)}</li>"
            for key, value, label in figures
        )
        return f'<ul class="summary">{cells}<li class="utc">times in UTC</li></ul>'

    @staticmethod
    def _empty(filters: Filters) -> str:
        if filters.email or filters.metric:
            return '<p class="empty">No profile matches the filters.</p>'
        return (
            '<p class="empty">Nothing received yet. Point the relay here with'
            " <code>KLAVIYO_BASE_URL</code> and one of the sandbox's API keys;"
            " this page updates by itself.</p>"
        )

    def _profile(self, profile: Profile, events: list[tuple[int, JSONObject]]) -> str:
        attrs = profile.attributes
        title = next((attrs[n] for n in IDENTIFIERS if attrs.get(n)), profile.id)
        shown_ids = [("id", profile.id), *((n, attrs[n]) for n in IDENTIFIERS if attrs.get(n))]
        ids = "".join(
            f'<div><dt>{_e(name)}</dt><dd data-identifier="{_e(name)}">{_e(value)}</dd></div>'
            for name, value in shown_ids
        )
        names = " · ".join(_e(attrs[n]) for n in _NAME_FIELDS if attrs.get(n))
        props = attrs.get("properties") or {}
        location = attrs.get("location") or {}
        extra = {**({"location": location} if location else {}), **props}
        details = (
            f'<details class="props" data-key="profile:{_e(profile.id)}">'
            f"<summary>Profile properties ({len(extra)})</summary>"
            f"<pre>{_pretty(extra)}</pre></details>"
            if extra
            else ""
        )
        items = "".join(self._event(number, event) for number, event in events)
        listing = f'<ol class="events">{items}</ol>' if items else '<p class="note">No events.</p>'
        return (
            f'<article class="profile" data-profile-id="{_e(profile.id)}"'
            f' data-email="{_e(attrs.get("email"))}">'
            f'<header><h2 class="profile-title">{_e(title)}</h2>'
            f'<span class="names">{names}</span>'
            f'<span class="count">{len(events)} event{"" if len(events) == 1 else "s"},'
            " in the order received</span>"
            f'</header><dl class="ids">{ids}</dl>{details}{listing}</article>'
        )

    @staticmethod
    def _event(number: int, event: JSONObject) -> str:
        marks = []
        if event.get("duplicate_count"):
            count = event["duplicate_count"]
            marks.append(
                f'<span class="mark mark-dedup" title="sent {count + 1} times, kept once'
                f' (same unique_id)">deduplicated ×{count + 1}</span>'
            )
        if event.get("backfill"):
            marks.append('<span class="mark mark-backfill">backfill</span>')
        if event.get("endpoint") == "bulk_create_events":
            marks.append('<span class="mark mark-bulk">bulk</span>')
        value = event.get("value")
        shown_value = "" if value is None else f"{value} {event.get('value_currency') or ''}"
        properties = event.get("properties") or {}
        return (
            f'<li class="event" data-metric="{_e(event["metric"])}" data-number="{number}">'
            f'<div class="event-line"><span class="number">#{number}</span>'
            f'<time datetime="{_e(event["time"])}"'
            f' title="time {_e(event["time"])}, received {_e(event["received_at"])}">'
            f"{_e(_when(event['time']))}</time>"
            f'<span class="metric">{_e(event["metric"])}</span>'
            f'<code class="unique-id" title="unique_id">{_e(event.get("unique_id") or "—")}</code>'
            f'<span class="value">{_e(shown_value.strip())}</span>'
            f'<span class="marks">{"".join(marks)}</span></div>'
            f'<details class="props" data-key="event:{number}">'
            f"<summary>properties ({len(properties)})</summary>"
            f"<pre>{_pretty(properties)}</pre></details></li>"
        )

    def _rejected(self) -> str:
        state = self.sandbox.state
        items = []
        for item in reversed(state.rejected):  # newest first
            errors = "".join(
                f'<li><code class="code">{_e(error.get("code"))}</code>'
                f' <code class="pointer">{_e(_source(error))}</code>'
                f'<div class="detail">{_e(error.get("detail"))}</div></li>'
                for error in item["errors"]
            )
            items.append(
                f'<li class="rejected"><div class="request">'
                f'<span class="status">{_e(item["status"])}</span>'
                f' <span class="method">{_e(item["method"])}</span> {_e(item["path"])}'
                f'<time title="received {_e(item["received_at"])}">'
                f"{_e(_when(item['received_at']))}</time></div>"
                f'<ul class="errors">{errors}</ul></li>'
            )
        if not items:
            body = '<p class="note">None so far.</p>'
        else:
            body = f'<ol class="rejected-list">{"".join(items)}</ol>'
            if state.rejected_count > len(state.rejected):
                body += f'<p class="note">The last {len(state.rejected)} are kept.</p>'
        return f'<section class="panel" id="rejected"><h2>Rejected requests</h2>{body}</section>'

    def _windows(self) -> str:
        sandbox = self.sandbox
        now = sandbox.clock()
        rows = []
        for endpoint, observer in sandbox.observers.items():
            quota = sandbox.quotas.get(endpoint)
            answers = ", ".join(
                f"{status}×{n}" for status, n in sorted(sandbox.counts[endpoint].items())
            )
            if quota is not None:
                burst, steady = _window(quota.burst, now), _window(quota.steady, now)
            else:
                burst = _window(observer.burst, now, limited=False)
                steady = _window(observer.steady, now, limited=False)
            rows.append(
                f'<tr data-endpoint="{_e(endpoint)}"><td>{_e(endpoint)}</td><td>{burst}</td>'
                f"<td>{steady}</td><td>{sandbox.throttled[endpoint]}</td>"
                f"<td>{_e(answers or '—')}</td></tr>"
            )
        note = (
            ""
            if sandbox.quotas
            else '<p class="note">No limits enforced (started without rate limits):'
            " requests that arrived in the current windows.</p>"
        )
        return (
            '<section class="panel" id="windows"><h2>Rate-limit windows</h2>'
            '<table class="windows"><thead><tr><th>Endpoint</th><th>Burst</th><th>Steady</th>'
            "<th>Throttled</th><th>Answers</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{note}</section>"
        )

    def _dropped(self) -> str:
        dropped = self.sandbox.state.dropped
        if not dropped:
            return ""
        items = "".join(
            f"<li><code>{_e(d['profile'].get('email'))}</code> {_e(d['metric'])}</li>"
            for d in reversed(dropped[-20:])  # the latest 20, newest first
        )
        return (
            '<section class="panel" id="dropped"><h2>Dropped (test domains)</h2>'
            f'<p class="note">{len(dropped)} accepted, then dropped as Klaviyo does for'
            f" @example.com and @test.com.</p><ul>{items}</ul></section>"
        )

    # --- handlers ----------------------------------------------------------------------------

    async def serve_page(self, request: web.Request) -> web.Response:
        return _html(self.page(Filters.from_query(request.query)))

    async def serve_content(self, request: web.Request) -> web.Response:
        return _html(self.content(Filters.from_query(request.query)))

    async def serve_rejected(self, request: web.Request) -> web.Response:
        payload = {
            "data": list(self.sandbox.state.rejected),
            "meta": {"count": self.sandbox.state.rejected_count},
        }
        return web.Response(
            body=orjson.dumps(payload), headers={"Content-Type": "application/json"}
        )

    async def serve_static(self, request: web.Request) -> web.Response:
        found = _FILES.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(
            body=body,
            headers={**_SECURITY_HEADERS, "Content-Type": content_type},
        )


def _window(window: FixedWindow, now: float, *, limited: bool = True) -> str:
    """``used/limit`` of the current window, read without rolling it (a pure look).

    The end of a window is shown as a time of day, and only while it holds requests, so an
    idle sandbox renders the same page every time and the live refresh has nothing to swap.
    """
    index = int(now // window.seconds)
    used = window.count if index == window.index else 0
    shown = f"{used}/{window.limit}" if limited else str(used)
    full = " full" if limited and used >= window.limit else ""
    span = f"per {window.seconds:g}s"
    if used:
        ends = datetime.fromtimestamp((index + 1) * window.seconds, UTC)
        span += f", until {ends:%H:%M:%S}"
    return f'<span class="window{full}">{_e(shown)}</span> <span class="resets">{_e(span)}</span>'


def _source(error: JSONObject) -> str:
    """Where the error points: a JSON pointer into the body, or ``?parameter``."""
    if error.get("pointer"):
        return str(error["pointer"])
    return f"?{error['parameter']}" if error.get("parameter") else ""


def _html(text: str) -> web.Response:
    return web.Response(
        text=text, content_type="text/html", charset="utf-8", headers=_SECURITY_HEADERS
    )


def add_routes(router: web.UrlDispatcher, sandbox: Sandbox) -> None:
    """The page at ``/`` and ``/_sandbox/``, its live content, static files, the rejected list."""
    inbox = Inbox(sandbox)
    router.add_get("/", inbox.serve_page)
    router.add_get("/_sandbox/", inbox.serve_page)
    router.add_get("/_sandbox/inbox", inbox.serve_content)
    router.add_get("/_sandbox/rejected", inbox.serve_rejected)
    router.add_get("/_sandbox/static/{name}", inbox.serve_static)
