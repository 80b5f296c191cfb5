"""The Klaviyo stand-in: an aiohttp application that answers like Klaviyo.

Every ``/api/*`` request goes through one gate, in Klaviyo's order: injected faults (an outage
in front of the API) → authentication (401) → ``revision`` header (400) → the endpoint's fixed
windows (429 + ``Retry-After``) → ``Content-Type`` on writes (415) → size and JSON → the
endpoint's own checks (400 with pointers, 404, 409) → the store. Answers other than 401 and
429 carry ``RateLimit-Limit/Remaining/Reset`` of the steady window; with ``rate_limits=None``
(no limits) they are left out, since there is no window to describe.

Injected faults include Cloudflare's bot challenge (403 HTML, ``cf-mitigated: challenge``); a
Create Event may also be accepted with ``X-Klaviyo-Partial-Failure`` (see ``faults``).

The hot path is kept lean for benchmarks: no middleware, no jsonschema, orjson, and fault
injection skipped entirely while no fault is set.

Inspection (no auth, no faults, no quota): ``GET /_sandbox/events[?include=dropped&metric=M]``,
``GET /_sandbox/profiles``, ``GET /_sandbox/stats``, ``GET|POST /_sandbox/faults``,
``POST /_sandbox/reset`` (forget everything, faults back to the options),
``GET|POST /_sandbox/oauth`` (the OAuth token endpoint ``/oauth/token``, see
:mod:`klaviyo_sandbox.oauth`); the inbox page at
``/`` and ``/_sandbox/`` (:mod:`klaviyo_sandbox.inbox`) with ``GET /_sandbox/rejected``.

Klaviyo's facts (paths, methods, limits, revision) come from :mod:`klaviyo_sandbox.facts`,
never from the relay: the sandbox imports nothing from ``consumer``.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson
from aiohttp import web

from klaviyo_sandbox import inbox, jsonapi
from klaviyo_sandbox.facts import (
    BURST_SECONDS,
    LATEST_REVISION,
    OPERATIONS,
    PARTIAL_FAILURE_HEADER,
    STEADY_SECONDS,
    Limit,
    Operation,
)
from klaviyo_sandbox.faults import FaultError, Faults
from klaviyo_sandbox.fixed_windows import FixedWindowQuota, RateObserver
from klaviyo_sandbox.oauth import OAuthError, OAuthOptions, OAuthServer
from klaviyo_sandbox.store import DuplicateProfile, ProfileNotFound, SandboxState
from klaviyo_sandbox.validation import (
    BULK_ENTRIES,
    EVENT_PAYLOAD_BYTES,
    PROFILE_PAYLOAD_BYTES,
    Problem,
    validate_bulk_create_events,
    validate_create_event,
    validate_profile_import,
    validate_update_profile,
)

Handler = Callable[[web.Request, Any, dict[str, str] | None], web.Response]

_REVISION = re.compile(r"^(\d{4}-\d{2}-\d{2})(\.pre|\.beta)?$")
_FILTER = re.compile(
    r"""^equals\((id|email|phone_number|external_id),\s*(?:"([^"]*)"|'([^']*)')\)$"""
)
# Fixed paths of the operations served: another method there is a 405, not a 404.
_API_PATHS = frozenset(facts.path for facts in OPERATIONS.values() if "{" not in facts.path)
_CHALLENGE_PAGE = (
    b'<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title></head>'
    b"<body><noscript>Enable JavaScript and cookies to continue</noscript></body></html>"
)
_HOLD_SECONDS = 3600.0  # longer than any client timeout; cancelled on disconnect or shutdown


@dataclass
class SandboxOptions:
    api_keys: tuple[str, ...] = ("pk_sandbox",)
    revision: str = LATEST_REVISION
    rate_limits: dict[str, Limit] | None = None
    error_rates: dict[int, float] = field(default_factory=dict)
    latency_ms: tuple[float, float] = (0.0, 0.0)
    timeout_rate: float = 0.0
    seed: int | None = None
    fail_auth: bool = False
    challenge_rate: float = 0.0
    partial_failure_rate: float = 0.0
    # False: count accepted events without keeping them (memory stays flat in long benchmarks).
    keep_events: bool = True
    # The OAuth token endpoint and the bearer tokens it issues (off when None).
    oauth: OAuthOptions | None = None

    def initial_faults(self) -> Faults:
        faults = Faults()
        faults.update(
            {
                "error_rates": dict(self.error_rates),
                "latency_ms": list(self.latency_ms),
                "timeout_rate": self.timeout_rate,
                "fail_auth": self.fail_auth,
                "challenge_rate": self.challenge_rate,
                "partial_failure_rate": self.partial_failure_rate,
            }
        )
        return faults


class Sandbox:
    """The application's state and request handlers (one per application)."""

    def __init__(self, options: SandboxOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        self.rng = random.Random(options.seed)
        self.state = SandboxState(rng=self.rng, keep_events=options.keep_events)
        self.faults = options.initial_faults()
        self._credentials = frozenset(
            f"{scheme} {key}"
            for key in options.api_keys
            for scheme in ("Klaviyo-API-Key", "Bearer")
        )
        self._good_revisions = {options.revision}
        self.oauth = self._oauth_server()
        self._held: set[asyncio.Task[Any]] = set()
        self._reset_counters()

    def _reset_counters(self) -> None:
        limits = self.options.rate_limits
        self.quotas = {name: FixedWindowQuota(limit) for name, limit in (limits or {}).items()}
        self.observers = {e.value: RateObserver(*self._window_lengths(e.value)) for e in Operation}
        self.counts: dict[str, dict[int, int]] = {e.value: {} for e in Operation}
        self.throttled: dict[str, int] = {e.value: 0 for e in Operation}
        self.injected: dict[int, int] = {}
        self.challenged = 0
        self.partial_failures = 0

    def _window_lengths(self, endpoint: str) -> tuple[float, float]:
        limit = (self.options.rate_limits or {}).get(endpoint)
        return (
            (limit.burst.seconds, limit.steady.seconds)
            if limit
            else (BURST_SECONDS, STEADY_SECONDS)
        )

    def _oauth_server(self) -> OAuthServer | None:
        oauth = self.options.oauth
        return OAuthServer(oauth, self.clock) if oauth is not None else None

    def reset(self) -> None:
        self.state.reset()
        self.oauth = self._oauth_server()
        self.faults = self.options.initial_faults()
        self._reset_counters()

    # --- the gate ----------------------------------------------------------------------------

    async def _serve(
        self,
        request: web.Request,
        endpoint: str,
        handle: Handler,
        *,
        write: bool = True,
        max_bytes: int = EVENT_PAYLOAD_BYTES,
    ) -> web.Response:
        response = None
        if self.faults.active:
            response = await self._inject(request)
        if response is None:
            response = await self._process(request, endpoint, handle, write, max_bytes)
        counts = self.counts[endpoint]
        counts[response.status] = counts.get(response.status, 0) + 1
        if response.status >= 400:
            body = response.body if isinstance(response.body, bytes) else None
            self.state.record_rejection(
                endpoint, request.method, request.path, response.status, body
            )
        return response

    async def _inject(self, request: web.Request) -> web.Response | None:
        faults, rng = self.faults, self.rng
        if faults.timeout_rate and rng.random() < faults.timeout_rate:
            await self._hold()
        delay = faults.draw_latency(rng)
        if delay > 0:
            await asyncio.sleep(delay)
        if faults.challenge_rate and rng.random() < faults.challenge_rate:
            self.challenged += 1
            return _challenge()
        if faults.fail_auth:
            return jsonapi.errors_response(
                401,
                [
                    jsonapi.error(
                        401,
                        "Incorrect authentication credentials.",
                        code="authentication_failed",
                        title="Incorrect authentication credentials.",
                    )
                ],
            )
        status = faults.draw_error(rng)
        if status is None and faults.fail_matching:
            status = faults.matching(await request.read())
        if status is None:
            return None
        self.injected[status] = self.injected.get(status, 0) + 1
        headers = {"Retry-After": "1"} if status == 429 else None
        return jsonapi.errors_response(
            status, [jsonapi.error(status, "Injected by the sandbox.")], headers
        )

    async def _hold(self) -> None:
        """Never answer (until the client gives up or the sandbox stops)."""
        task = asyncio.current_task()
        assert task is not None
        self._held.add(task)
        try:
            await asyncio.sleep(_HOLD_SECONDS)
        finally:
            self._held.discard(task)

    def release_held(self) -> None:
        for task in list(self._held):
            task.cancel()

    async def _process(
        self, request: web.Request, endpoint: str, handle: Handler, write: bool, max_bytes: int
    ) -> web.Response:
        auth = request.headers.get("Authorization")
        if auth not in self._credentials:
            admitted = self.oauth.admits(auth) if self.oauth is not None else False
            if isinstance(admitted, web.Response):
                return admitted
            if not admitted:
                return self._unauthenticated(auth)
        revision = request.headers.get("revision")
        if revision not in self._good_revisions:
            problem = self._revision_problem(revision)
            if problem is not None:
                return jsonapi.errors_response(
                    400, [jsonapi.error(400, problem, parameter="revision")]
                )
            self._good_revisions.add(revision or "")
        now = self.clock()
        self.observers[endpoint].arrive(now)
        quota = self.quotas.get(endpoint)
        headers = None
        if quota is not None:
            retry_after = quota.take(now)
            if retry_after is not None:
                self.throttled[endpoint] += 1
                return self._throttled(retry_after)
            headers = quota.headers(now)
        if not write:
            return handle(request, None, headers)
        # The exact header is the common case; parsing it (parameters, case) only otherwise.
        if (
            request.headers.get("Content-Type") != jsonapi.CONTENT_TYPE
            and request.content_type != jsonapi.CONTENT_TYPE
        ):
            detail = f'Unsupported media type "{request.content_type}" in request.'
            return jsonapi.errors_response(415, [jsonapi.error(415, detail)], headers)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raw = b""
            too_large = True
        else:
            too_large = len(raw) > max_bytes
        if too_large:
            detail = f"The payload may be at most {max_bytes // 1024} KB."
            return jsonapi.problems_response([Problem((), detail)], headers)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return jsonapi.errors_response(
                400,
                [jsonapi.error(400, "Malformed JSON.", code="parse_error", pointer="/")],
                headers,
            )
        return handle(request, body, headers)

    def _revision_problem(self, revision: str | None) -> str | None:
        if not revision:
            return "The 'revision' header is required (for example revision: 2026-07-15)."
        match = _REVISION.match(revision)
        try:
            day = date.fromisoformat(match.group(1)) if match else None
        except ValueError:
            day = None
        if day is None:
            return f"'{revision}' is not a valid revision (YYYY-MM-DD)."
        if day > date.fromisoformat(self.options.revision):
            return f"Revision '{revision}' does not exist."
        return None

    @staticmethod
    def _unauthenticated(auth: str | None) -> web.Response:
        if not auth or not auth.startswith(("Klaviyo-API-Key ", "Bearer ")):
            err = jsonapi.error(
                401,
                "Missing or invalid authorization scheme. Please use Klaviyo-API-Key.",
            )
        else:
            err = jsonapi.error(
                401,
                "Incorrect authentication credentials.",
                code="authentication_failed",
                title="Incorrect authentication credentials.",
            )
        return jsonapi.errors_response(401, [err])

    @staticmethod
    def _throttled(retry_after: int) -> web.Response:
        unit = "second" if retry_after == 1 else "seconds"
        err = jsonapi.error(
            429,
            f"Request was throttled. Expected available in {retry_after} {unit}.",
            pointer="/data/",
        )
        return jsonapi.errors_response(429, [err], {"Retry-After": str(retry_after)})

    # --- /api endpoints ----------------------------------------------------------------------

    async def create_event(self, request: web.Request) -> web.Response:
        return await self._serve(request, Operation.CREATE_EVENT, self._create_event)

    def _create_event(
        self, request: web.Request, body: Any, headers: dict[str, str] | None
    ) -> web.Response:
        problems = validate_create_event(body)
        if problems:
            return jsonapi.problems_response(problems, headers)
        attrs = body["data"]["attributes"]
        self.state.record_event(Operation.CREATE_EVENT, attrs, attrs["profile"]["data"])
        rate = self.faults.partial_failure_rate
        if rate and self.rng.random() < rate:
            # Klaviyo took the event but ignored a field (an invalid phone, say).
            self.partial_failures += 1
            headers = {**(headers or {}), PARTIAL_FAILURE_HEADER: "phone_number"}
        return web.Response(status=202, headers=headers)

    async def bulk_create_events(self, request: web.Request) -> web.Response:
        return await self._serve(request, Operation.BULK_CREATE_EVENTS, self._bulk_create_events)

    def _bulk_create_events(
        self, request: web.Request, body: Any, headers: dict[str, str] | None
    ) -> web.Response:
        problems = validate_bulk_create_events(body)
        if problems:
            return jsonapi.problems_response(problems, headers)
        entries = body
        for part in BULK_ENTRIES:
            entries = entries[part]
        for entry in entries:
            attrs = entry["attributes"]
            profile = attrs["profile"]["data"]
            backfill = bool(attrs.get("backfill"))
            for event in attrs["events"]["data"]:
                self.state.record_event(
                    Operation.BULK_CREATE_EVENTS, event["attributes"], profile, backfill
                )
        # As the spec (2026-07-15) has it: 202 without a body.
        return web.Response(status=202, headers=headers)

    async def update_profile(self, request: web.Request) -> web.Response:
        return await self._serve(
            request,
            Operation.UPDATE_PROFILE,
            self._update_profile,
            max_bytes=PROFILE_PAYLOAD_BYTES,
        )

    def _update_profile(
        self, request: web.Request, body: Any, headers: dict[str, str] | None
    ) -> web.Response:
        problems = validate_update_profile(body)
        profile_id = request.match_info["id"]
        if not problems and body["data"]["id"] != profile_id:
            problems = [Problem(("data", "id"), "The id in the body must match the id in the URL.")]
        if problems:
            return jsonapi.problems_response(problems, headers)
        try:
            profile = self.state.update_profile(profile_id, body["data"])
        except ProfileNotFound:
            return self._profile_not_found(profile_id, headers)
        except DuplicateProfile as exc:
            return self._duplicate(exc, headers)
        return self._profile_document(request, 200, profile.resource(_origin(request)), headers)

    async def profile_import(self, request: web.Request) -> web.Response:
        return await self._serve(
            request,
            Operation.CREATE_OR_UPDATE_PROFILE,
            self._profile_import,
            max_bytes=PROFILE_PAYLOAD_BYTES,
        )

    def _profile_import(
        self, request: web.Request, body: Any, headers: dict[str, str] | None
    ) -> web.Response:
        problems = validate_profile_import(body)
        if problems:
            return jsonapi.problems_response(problems, headers)
        try:
            profile, created = self.state.import_profile(body["data"])
        except ProfileNotFound:
            return self._profile_not_found(body["data"]["id"], headers)
        except DuplicateProfile as exc:
            return self._duplicate(exc, headers)
        resource = profile.resource(_origin(request))
        return self._profile_document(request, 201 if created else 200, resource, headers)

    async def get_profiles(self, request: web.Request) -> web.Response:
        return await self._serve(request, Operation.GET_PROFILES, self._get_profiles, write=False)

    def _get_profiles(
        self, request: web.Request, body: Any, headers: dict[str, str] | None
    ) -> web.Response:
        query = request.query
        raw_size = query.get("page[size]", "20")
        size = int(raw_size) if raw_size.isdigit() else 0
        if not 1 <= size <= 100:
            return jsonapi.errors_response(
                400,
                [jsonapi.error(400, "page[size] must be 1 to 100.", parameter="page[size]")],
                headers,
            )
        profiles = list(self.state.profiles.values())
        raw_filter = query.get("filter")
        if raw_filter is not None:
            match = _FILTER.match(raw_filter.strip())
            if match is None:
                detail = (
                    'Unsupported filter; use equals(email,"...") or id, phone_number, external_id.'
                )
                return jsonapi.errors_response(
                    400, [jsonapi.error(400, detail, parameter="filter")], headers
                )
            name, value = match.group(1), match.group(2) or match.group(3) or ""
            found = self.state.find(name, value)
            profiles = [found] if found is not None else []
        origin = _origin(request)
        payload = {
            "data": [p.resource(origin) for p in profiles[:size]],
            "links": {"self": str(request.url), "next": None, "prev": None},
        }
        return jsonapi.document(200, payload, headers)

    @staticmethod
    def _profile_document(
        request: web.Request, status: int, resource: dict[str, Any], headers: dict[str, str] | None
    ) -> web.Response:
        return jsonapi.document(
            status, {"data": resource, "links": {"self": str(request.url)}}, headers
        )

    @staticmethod
    def _profile_not_found(profile_id: str, headers: dict[str, str] | None) -> web.Response:
        detail = f"A profile with id {profile_id} does not exist."
        return jsonapi.errors_response(404, [jsonapi.error(404, detail, parameter="id")], headers)

    @staticmethod
    def _duplicate(exc: DuplicateProfile, headers: dict[str, str] | None) -> web.Response:
        err = jsonapi.error(
            409,
            "A profile already exists with one of these identifiers.",
            code="duplicate_profile",
            title="Conflict.",
            pointer=f"/data/attributes/{exc.identifier}",
            meta={"duplicate_profile_id": exc.profile_id},
        )
        return jsonapi.errors_response(409, [err], headers)

    async def unknown_route(self, request: web.Request) -> web.Response:
        path = request.path.rstrip("/")
        if path in _API_PATHS or path.startswith("/api/profiles/"):
            detail = f'Method "{request.method}" not allowed.'
            return jsonapi.errors_response(405, [jsonapi.error(405, detail)])
        return jsonapi.errors_response(404, [jsonapi.error(404, "Not found.")])

    # --- inspection --------------------------------------------------------------------------

    async def inspect_events(self, request: web.Request) -> web.Response:
        metric = request.query.get("metric")
        events = self.state.events
        if metric is not None:
            events = [e for e in events if e["metric"] == metric]
        payload: dict[str, Any] = {
            "data": events,
            "meta": {
                "count": len(events),
                "accepted": self.state.accepted,
                "dropped": self.state.dropped_count,
                "duplicates": self.state.duplicates,
            },
        }
        if "dropped" in request.query.getall("include", []):
            payload["dropped"] = self.state.dropped
        return _json(payload)

    async def inspect_profiles(self, request: web.Request) -> web.Response:
        origin = _origin(request)
        return _json({"data": [p.resource(origin) for p in self.state.profiles.values()]})

    async def inspect_stats(self, request: web.Request) -> web.Response:
        return _json(
            {
                "requests": {
                    e: {str(s): n for s, n in sorted(c.items())} for e, c in self.counts.items()
                },
                "throttled": self.throttled,
                "injected": {str(s): n for s, n in sorted(self.injected.items())},
                "challenged": self.challenged,
                "partial_failures": self.partial_failures,
                "observed": {e: o.to_json() for e, o in self.observers.items()},
                "held": len(self._held),
                "events": self.state.accepted,
                "dropped": self.state.dropped_count,
                "duplicates": self.state.duplicates,
                "profiles": len(self.state.profiles),
            }
        )

    async def inspect_faults(self, request: web.Request) -> web.Response:
        return _json(self.faults.to_json())

    async def change_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults.update(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, FaultError) as exc:
            return _json({"error": str(exc)}, status=400)
        return _json(self.faults.to_json())

    async def oauth_token(self, request: web.Request) -> web.Response:
        if self.oauth is None:
            return await self.unknown_route(request)
        return await self.oauth.token(request)

    async def inspect_oauth(self, request: web.Request) -> web.Response:
        return _json(self.oauth.to_json() if self.oauth is not None else {"enabled": False})

    async def change_oauth(self, request: web.Request) -> web.Response:
        if self.oauth is None:
            return _json({"error": "OAuth is off (start with --oauth-client)"}, status=400)
        try:
            self.oauth.update(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, OAuthError) as exc:
            return _json({"error": str(exc)}, status=400)
        return _json(self.oauth.to_json())

    async def reset_all(self, request: web.Request) -> web.Response:
        self.release_held()
        self.reset()
        return web.Response(status=204)


SANDBOX_KEY = web.AppKey("sandbox", Sandbox)


def _challenge() -> web.Response:
    """What Cloudflare in front of Klaviyo answers a client it wants to challenge."""
    return web.Response(
        status=403,
        body=_CHALLENGE_PAGE,
        headers={"Content-Type": "text/html; charset=UTF-8", "cf-mitigated": "challenge"},
    )


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), headers={"Content-Type": "application/json"}
    )


def create_app(
    options: SandboxOptions, *, clock: Callable[[], float] = time.time
) -> web.Application:
    """The sandbox application; ``clock`` (seconds) places the rate-limit windows."""
    sandbox = Sandbox(options, clock)
    app = web.Application(client_max_size=EVENT_PAYLOAD_BYTES)
    app[SANDBOX_KEY] = sandbox
    handlers = {
        Operation.CREATE_EVENT: sandbox.create_event,
        Operation.BULK_CREATE_EVENTS: sandbox.bulk_create_events,
        Operation.UPDATE_PROFILE: sandbox.update_profile,
        Operation.CREATE_OR_UPDATE_PROFILE: sandbox.profile_import,
        Operation.GET_PROFILES: sandbox.get_profiles,
    }
    for operation, handler in handlers.items():
        facts = OPERATIONS[operation]
        # Klaviyo's own links end in "/": accept both spellings.
        app.router.add_route(facts.method, facts.path, handler)
        app.router.add_route(facts.method, facts.path + "/", handler)
    app.router.add_get("/_sandbox/events", sandbox.inspect_events)
    app.router.add_get("/_sandbox/profiles", sandbox.inspect_profiles)
    app.router.add_get("/_sandbox/stats", sandbox.inspect_stats)
    app.router.add_get("/_sandbox/faults", sandbox.inspect_faults)
    app.router.add_post("/_sandbox/faults", sandbox.change_faults)
    app.router.add_post("/_sandbox/reset", sandbox.reset_all)
    app.router.add_post("/oauth/token", sandbox.oauth_token)
    app.router.add_get("/_sandbox/oauth", sandbox.inspect_oauth)
    app.router.add_post("/_sandbox/oauth", sandbox.change_oauth)
    inbox.add_routes(app.router, sandbox)  # the page at / (before the catch-all below)
    app.router.add_route("*", "/{tail:.*}", sandbox.unknown_route)

    async def _release(_: web.Application) -> None:
        sandbox.release_held()

    app.on_shutdown.append(_release)
    return app
