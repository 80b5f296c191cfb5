"""The sandbox over real HTTP: what Klaviyo accepts, what it rejects (status, code, pointer),
headers, gzip, bulk, dedup, dropped test domains and profiles."""

from __future__ import annotations

from typing import Any

import pytest

from klaviyo_sandbox import SandboxOptions
from tests.fixtures.sandbox import (
    ATTRS,
    BULK_BASE,
    HEADERS,
    REJECTED,
    Api,
    bulk_body,
    event_attributes,
    event_body,
    import_body,
    mutated,
    patch_body,
    profile_data,
    sandbox_api,
)


@pytest.fixture
async def api() -> Any:
    async with sandbox_api(SandboxOptions(seed=7)) as client:
        yield client


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        node = {"n": node}
    return node


async def test_accepts_a_valid_event_and_records_it(api: Api) -> None:
    body = event_body(
        profile_data(
            email="john.smith@shopmail.io",
            phone_number="+15551234567",
            external_id="cust-1001",
            first_name="John",
            location={"city": "Boston", "zip": "02110"},
            properties={"Tier": "gold"},
        ),
        properties={"OrderId": "1234", "Items": [{"SKU": "W"}], "Nested": _nested(9)},
        value=9.99,
        value_currency="USD",
    )
    reply = await api.event(body)
    assert reply.status == 202, reply.raw
    assert reply.raw == b""
    [stored] = (await api.inspect("events"))["data"]
    assert stored["metric"] == "Placed Order"
    assert stored["unique_id"] == "evt-1"
    assert stored["properties"] == body["data"]["attributes"]["properties"]
    assert stored["time"] == "2023-10-15T00:00:00Z"
    assert stored["value"] == 9.99
    assert stored["profile"]["email"] == "john.smith@shopmail.io"
    assert stored["duplicate_count"] == 0
    [profile] = (await api.inspect("profiles"))["data"]
    assert profile["id"] == stored["profile_id"]
    assert profile["attributes"]["properties"] == {"Tier": "gold"}
    assert profile["attributes"]["location"]["city"] == "Boston"


async def test_accepts_nulls_where_the_schema_allows_them(api: Api) -> None:
    body = event_body(time=None, unique_id=None, value=None, value_currency=None)
    body["data"]["attributes"].update({"time": None, "unique_id": None})
    assert (await api.event(body)).status == 202


@pytest.mark.parametrize(
    ("change", "pointer"), [(c, p) for _, c, p in REJECTED], ids=[r[0] for r in REJECTED]
)
async def test_rejects_what_klaviyo_rejects(api: Api, change: Any, pointer: str) -> None:
    reply = await api.event(mutated(event_body(), change))
    assert reply.status == 400, reply.raw
    assert pointer in reply.pointers, reply.errors
    for error in reply.errors:
        assert error["status"] == 400 and error["code"] == "invalid"
        assert error["id"] and error["title"] and error["detail"]
    assert (await api.inspect("events"))["data"] == []


async def test_nesting_deeper_than_ten_is_rejected_ten_is_not(api: Api) -> None:
    ok = event_body(properties={"Deep": _nested(9)}, unique_id="ok")
    assert (await api.event(ok)).status == 202
    too_deep = event_body(properties={"Deep": _nested(10)}, unique_id="deep")
    reply = await api.event(too_deep)
    assert reply.status == 400
    assert reply.pointers[0].startswith(f"{ATTRS}/properties/Deep/n/n")


async def test_limits_at_their_edges_are_accepted(api: Api) -> None:
    body = event_body(
        properties={
            "Big": "x" * (100 * 1024),
            "L": list(range(4000)),
            **{f"p{i}": i for i in range(398)},
        },
        metric="m" * 127,
        unique_id="u" * 255,
        time="1990-01-01T00:00:00+00:00",
    )
    assert (await api.event(body)).status == 202, (await api.event(body)).raw


async def test_an_identifier_alone_is_enough(api: Api) -> None:
    for i, profile in enumerate(
        [
            profile_data(id="01H81WC034AKRMQJQARPEEBHJE"),
            profile_data(phone_number="+442071234567"),
            profile_data(external_id="cust-9"),
            profile_data(anonymous_id="anon-1"),
        ]
    ):
        assert (await api.event(event_body(profile, unique_id=f"e{i}"))).status == 202
    assert len((await api.inspect("events"))["data"]) == 4


async def test_wrong_content_type_is_415(api: Api) -> None:
    reply = await api.event(event_body(), headers={"Content-Type": "application/json"})
    assert reply.status == 415
    assert reply.errors[0]["code"] == "unsupported_media_type"


async def test_content_type_parameters_are_fine(api: Api) -> None:
    headers: dict[str, str | None] = {"Content-Type": "application/vnd.api+json; charset=utf-8"}
    assert (await api.event(event_body(), headers=headers)).status == 202


@pytest.mark.parametrize("revision", [None, "", "15-07-2026", "2026-13-01", "2099-01-01"])
async def test_missing_or_unknown_revision_is_400(api: Api, revision: str | None) -> None:
    reply = await api.event(event_body(), headers={"revision": revision})
    assert reply.status == 400
    assert reply.errors[0]["source"] == {"parameter": "revision"}


async def test_older_revisions_are_accepted(api: Api) -> None:
    for i, revision in enumerate(["2024-10-15", "2025-01-15.pre"]):
        reply = await api.event(event_body(unique_id=f"r{i}"), headers={"revision": revision})
        assert reply.status == 202


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "not_authenticated"),
        ("pk_sandbox", "not_authenticated"),
        ("Klaviyo-API-Key pk_wrong", "authentication_failed"),
        ("Bearer nope", "authentication_failed"),
    ],
)
async def test_bad_credentials_are_401(api: Api, authorization: str | None, code: str) -> None:
    reply = await api.event(event_body(), headers={"Authorization": authorization})
    assert reply.status == 401
    assert reply.errors[0]["code"] == code
    assert "RateLimit-Limit" not in reply.headers
    assert (await api.inspect("events"))["data"] == []


async def test_every_configured_key_and_bearer_are_accepted() -> None:
    async with sandbox_api(SandboxOptions(api_keys=("pk_one", "pk_two"))) as api:
        for i, auth in enumerate(
            ["Klaviyo-API-Key pk_one", "Klaviyo-API-Key pk_two", "Bearer pk_one"]
        ):
            reply = await api.event(event_body(unique_id=f"k{i}"), headers={"Authorization": auth})
            assert reply.status == 202
        reply = await api.event(
            event_body(), headers={"Authorization": f"Klaviyo-API-Key {HEADERS['Authorization']}"}
        )
        assert reply.status == 401


async def test_gzip_bodies_are_read(api: Api) -> None:
    reply = await api.event(event_body(properties={"Text": "abc" * 1000}), compress=True)
    assert reply.status == 202
    [stored] = (await api.inspect("events"))["data"]
    assert stored["properties"]["Text"] == "abc" * 1000


async def test_malformed_json_is_400(api: Api) -> None:
    reply = await api.call("POST", "/api/events", raw=b'{"data": ')
    assert reply.status == 400
    assert reply.errors[0]["source"]["pointer"] == "/"


async def test_payload_over_5_mb_is_rejected(api: Api) -> None:
    # Strings stay under 100 KB each; the body as a whole is over 5 MB.
    chunk = "x" * (100 * 1024 - 10)
    props = {f"p{i}": chunk for i in range(53)}
    reply = await api.event(event_body(properties=props))
    assert reply.status == 400
    assert reply.pointers == ["/"]


async def test_profile_endpoints_take_at_most_100_kb(api: Api) -> None:
    body = import_body(email="big@shopmail.io", properties={"Note": "x" * (100 * 1024)})
    reply = await api.call("POST", "/api/profile-import", body)
    assert reply.status == 400
    assert reply.pointers == ["/"]


async def test_unknown_routes_and_methods_answer_json_api(api: Api) -> None:
    missing = await api.call("GET", "/api/nothing")
    assert missing.status == 404 and missing.errors[0]["code"] == "not_found"
    wrong = await api.call("GET", "/api/events")
    assert wrong.status == 405 and wrong.errors[0]["code"] == "method_not_allowed"


# --- bulk ----------------------------------------------------------------------------------------


async def test_bulk_accepts_and_records_every_event(api: Api) -> None:
    body = bulk_body(
        [
            (
                profile_data(email="a@shopmail.io"),
                [
                    event_attributes(unique_id="a1"),
                    event_attributes(metric="Ordered Product", unique_id="a2"),
                ],
            ),
            (profile_data(phone_number="+15551230000"), [event_attributes(unique_id="b1")]),
        ]
    )
    reply = await api.call("POST", "/api/event-bulk-create-jobs", body)
    assert reply.status == 202, reply.raw
    events = (await api.inspect("events"))["data"]
    assert [(e["unique_id"], e["endpoint"]) for e in events] == [
        ("a1", "bulk_create_events"),
        ("a2", "bulk_create_events"),
        ("b1", "bulk_create_events"),
    ]
    assert events[0]["profile_id"] == events[1]["profile_id"] != events[2]["profile_id"]


async def test_bulk_errors_point_inside_and_reject_the_whole_request(api: Api) -> None:
    body = bulk_body(
        [
            (
                profile_data(email="a@shopmail.io"),
                [
                    event_attributes(unique_id="a1"),
                    event_attributes(unique_id="a2", time="2023-10-15T00:00:00"),
                ],
            ),
            (profile_data(phone_number="555-1234"), [event_attributes(unique_id="b1")]),
            (
                profile_data(email="c@shopmail.io"),
                [
                    event_attributes(unique_id="c1"),
                    event_attributes(unique_id="c2", metric="m" * 200),
                ],
            ),
        ]
    )
    reply = await api.call("POST", "/api/event-bulk-create-jobs", body)
    assert reply.status == 400
    assert sorted(reply.pointers) == sorted(
        [
            f"{BULK_BASE}/0/attributes/events/data/1/attributes/time",
            f"{BULK_BASE}/1/attributes/profile/data/attributes/phone_number",
            f"{BULK_BASE}/2/attributes/events/data/1/attributes/metric/data/attributes/name",
        ]
    )
    assert (await api.inspect("events"))["data"] == []


async def test_bulk_shape_errors_point_inside_too(api: Api) -> None:
    body = bulk_body([(profile_data(email="a@shopmail.io"), [event_attributes()])])
    del body["data"]["attributes"]["events-bulk-create"]["data"][0]["attributes"]["events"]["data"][
        0
    ]["attributes"]["metric"]
    reply = await api.call("POST", "/api/event-bulk-create-jobs", body)
    assert reply.status == 400
    assert reply.pointers == [f"{BULK_BASE}/0/attributes/events/data/0/attributes/metric"]


async def test_bulk_takes_at_most_1000_events(api: Api) -> None:
    def body(n: int) -> dict[str, Any]:
        events = [event_attributes(unique_id=f"u{i}", properties={}) for i in range(n)]
        return bulk_body([(profile_data(email="a@shopmail.io"), events)])

    assert (await api.call("POST", "/api/event-bulk-create-jobs", body(1000))).status == 202
    reply = await api.call("POST", "/api/event-bulk-create-jobs", body(1001))
    assert reply.status == 400
    assert reply.pointers == [BULK_BASE]


async def test_a_unique_id_repeated_in_one_bulk_request_fails_it_whole(api: Api) -> None:
    body = bulk_body(
        [
            (
                profile_data(email="a@shopmail.io"),
                [event_attributes(unique_id="a1"), event_attributes(unique_id="a2")],
            ),
            (profile_data(email="b@shopmail.io"), [event_attributes(unique_id="b1")]),
            # The same person again (email case differs), the same metric, a1 again.
            (
                profile_data(email="A@shopmail.io", external_id="cust-a"),
                [event_attributes(unique_id="a1")],
            ),
        ]
    )
    reply = await api.call("POST", "/api/event-bulk-create-jobs", body)
    assert reply.status == 400
    [error] = reply.errors
    unique_id = "attributes/events/data/0/attributes/unique_id"
    repeated, first = f"{BULK_BASE}/2/{unique_id}", f"{BULK_BASE}/0/{unique_id}"
    assert error["source"]["pointer"] == repeated
    assert first in error["detail"]
    assert (await api.inspect("events"))["data"] == []


async def test_a_unique_id_shared_by_other_profiles_or_metrics_is_no_repeat(api: Api) -> None:
    body = bulk_body(
        [
            (
                profile_data(email="a@shopmail.io"),
                [
                    event_attributes(unique_id="x"),
                    event_attributes(unique_id="x", metric="Ordered Product"),
                    event_attributes(unique_id=None, time="2023-10-15T00:00:01Z"),
                    event_attributes(unique_id=None, time="2023-10-15T00:00:02Z"),
                ],
            ),
            (profile_data(email="b@shopmail.io"), [event_attributes(unique_id="x")]),
        ]
    )
    reply = await api.call("POST", "/api/event-bulk-create-jobs", body)
    assert reply.status == 202, reply.raw
    assert len((await api.inspect("events"))["data"]) == 5


# --- dedup and dropped ---------------------------------------------------------------------------


async def test_a_repeated_unique_id_is_recorded_once(api: Api) -> None:
    body = event_body(unique_id="evt-1")
    assert (await api.event(body)).status == 202
    assert (await api.event(body)).status == 202
    [stored] = (await api.inspect("events"))["data"]
    assert stored["duplicate_count"] == 1
    # Same unique_id, another metric: another event.
    assert (await api.event(event_body(unique_id="evt-1", metric="Ordered Product"))).status == 202
    assert len((await api.inspect("events"))["data"]) == 2


async def test_dedup_follows_the_person_not_the_identifier(api: Api) -> None:
    full = profile_data(
        email="john.smith@shopmail.io", phone_number="+15551234567", external_id="cust-1001"
    )
    await api.event(event_body(full, unique_id="e1"))
    for other in (
        profile_data(phone_number="+15551234567"),
        profile_data(external_id="cust-1001"),
        profile_data(email="JOHN.SMITH@shopmail.io"),
    ):
        assert (await api.event(event_body(other, unique_id="e1"))).status == 202
    stored = (await api.inspect("events"))["data"]
    assert len(stored) == 1 and stored[0]["duplicate_count"] == 3
    # Another person, same unique_id: recorded.
    await api.event(event_body(profile_data(email="jane@shopmail.io"), unique_id="e1"))
    assert len((await api.inspect("events"))["data"]) == 2


async def test_without_unique_id_the_second_is_the_key(api: Api) -> None:
    await api.event(event_body(unique_id=None, time="2023-10-15T00:00:00.100Z"))
    await api.event(event_body(unique_id=None, time="2023-10-15T00:00:00.900+00:00"))
    await api.event(event_body(unique_id=None, time="2023-10-15T00:00:01Z"))
    stored = (await api.inspect("events"))["data"]
    assert [e["duplicate_count"] for e in stored] == [1, 0]


async def test_test_domains_are_accepted_then_dropped(api: Api) -> None:
    for i, email in enumerate(["someone@example.com", "x@TEST.com"]):
        reply = await api.event(event_body(profile_data(email=email), unique_id=f"d{i}"))
        assert reply.status == 202
    seen = await api.inspect("events?include=dropped")
    assert seen["data"] == []
    assert [d["unique_id"] for d in seen["dropped"]] == ["d0", "d1"]
    assert "dropped" not in await api.inspect("events")
    assert (await api.inspect("profiles"))["data"] == []


async def test_reset_forgets_everything(api: Api) -> None:
    await api.event(event_body())
    async with api.session.post(f"{api.base_url}/_sandbox/reset") as response:
        assert response.status == 204
    assert (await api.inspect("events"))["data"] == []
    assert (await api.inspect("profiles"))["data"] == []
    assert (await api.inspect("stats"))["requests"]["create_event"] == {}
    assert (await api.event(event_body())).status == 202
    assert len((await api.inspect("events"))["data"]) == 1


# --- profiles ------------------------------------------------------------------------------------


async def test_profile_import_creates_then_updates(api: Api) -> None:
    created = await api.call(
        "POST",
        "/api/profile-import",
        import_body(email="a@shopmail.io", external_id="c-1", first_name="A"),
    )
    assert created.status == 201, created.raw
    resource = created.json["data"]
    assert resource["type"] == "profile" and resource["id"]
    assert resource["attributes"]["email"] == "a@shopmail.io"
    updated = await api.call(
        "POST",
        "/api/profile-import",
        import_body(external_id="c-1", first_name="B", last_name=None),
    )
    assert updated.status == 200
    assert updated.json["data"]["id"] == resource["id"]
    assert updated.json["data"]["attributes"]["first_name"] == "B"
    assert updated.json["data"]["attributes"]["email"] == "a@shopmail.io"


async def test_profile_import_needs_an_identifier(api: Api) -> None:
    reply = await api.call("POST", "/api/profile-import", import_body(first_name="A"))
    assert reply.status == 400 and reply.pointers == ["/data"]


async def test_lookup_by_email(api: Api) -> None:
    created = (
        await api.call("POST", "/api/profile-import", import_body(email="a@shopmail.io"))
    ).json["data"]
    found = await api.call(
        "GET",
        '/api/profiles?filter=equals(email,"a@shopmail.io")&page[size]=1',
        headers={"Content-Type": None},
    )
    assert found.status == 200
    assert [p["id"] for p in found.json["data"]] == [created["id"]]
    assert "RateLimit-Limit" not in found.headers  # no limits configured
    none = await api.call("GET", "/api/profiles?filter=equals(email,'b@shopmail.io')")
    assert none.status == 200 and none.json["data"] == []


@pytest.mark.parametrize(
    "query", ["page[size]=0", "page[size]=101", "page[size]=x", "filter=contains(email,'a')"]
)
async def test_bad_lookup_parameters_are_400(api: Api, query: str) -> None:
    reply = await api.call("GET", f"/api/profiles?{query}")
    assert reply.status == 400
    assert reply.errors[0]["source"]["parameter"] in {"page[size]", "filter"}


async def test_email_change_by_patch(api: Api) -> None:
    profile = (
        await api.call("POST", "/api/profile-import", import_body(email="old@shopmail.io"))
    ).json["data"]
    reply = await api.call(
        "PATCH",
        f"/api/profiles/{profile['id']}",
        patch_body(profile["id"], email="new@shopmail.io"),
    )
    assert reply.status == 200, reply.raw
    assert reply.json["data"]["attributes"]["email"] == "new@shopmail.io"
    old = await api.call("GET", '/api/profiles?filter=equals(email,"old@shopmail.io")')
    new = await api.call("GET", '/api/profiles?filter=equals(email,"new@shopmail.io")')
    assert old.json["data"] == [] and [p["id"] for p in new.json["data"]] == [profile["id"]]


async def test_email_change_to_a_taken_address_is_409_duplicate_profile(api: Api) -> None:
    first = (
        await api.call("POST", "/api/profile-import", import_body(email="one@shopmail.io"))
    ).json["data"]
    second = (
        await api.call("POST", "/api/profile-import", import_body(email="two@shopmail.io"))
    ).json["data"]
    reply = await api.call(
        "PATCH", f"/api/profiles/{second['id']}", patch_body(second["id"], email="one@shopmail.io")
    )
    assert reply.status == 409
    [error] = reply.errors
    assert error["code"] == "duplicate_profile"
    assert error["meta"]["duplicate_profile_id"] == first["id"]
    # Nothing changed.
    profiles = {p["id"]: p["attributes"]["email"] for p in (await api.inspect("profiles"))["data"]}
    assert profiles == {first["id"]: "one@shopmail.io", second["id"]: "two@shopmail.io"}


async def test_import_joining_two_profiles_is_409(api: Api) -> None:
    """The email names one profile, the external id another: Klaviyo will not merge them."""
    await api.call("POST", "/api/profile-import", import_body(email="one@shopmail.io"))
    second = (await api.call("POST", "/api/profile-import", import_body(external_id="c-2"))).json
    reply = await api.call(
        "POST", "/api/profile-import", import_body(email="one@shopmail.io", external_id="c-2")
    )
    assert reply.status == 409
    [error] = reply.errors
    assert error["code"] == "duplicate_profile"
    assert error["meta"]["duplicate_profile_id"] == second["data"]["id"]
    assert len((await api.inspect("profiles"))["data"]) == 2


async def test_patch_of_an_unknown_profile_is_404(api: Api) -> None:
    reply = await api.call(
        "PATCH", "/api/profiles/01NOPE", patch_body("01NOPE", email="x@shopmail.io")
    )
    assert reply.status == 404 and reply.errors[0]["code"] == "not_found"


async def test_patch_of_a_klaviyo_shaped_id_finds_the_accounts_profile(api: Api) -> None:
    # Producers learn profile ids from Klaviyo, so an id of Klaviyo's shape names a profile that
    # exists in the account even when this sandbox has not seen it yet.
    profile_id = "01H81WC034AKRMQJQARPEEBHJE"
    reply = await api.call(
        "PATCH", f"/api/profiles/{profile_id}", patch_body(profile_id, email="new@shopmail.io")
    )
    assert reply.status == 200
    stored = {p["id"]: p for p in (await api.inspect("profiles"))["data"]}
    assert stored[profile_id]["attributes"]["email"] == "new@shopmail.io"


async def test_patch_id_must_match_the_url(api: Api) -> None:
    profile = (
        await api.call("POST", "/api/profile-import", import_body(email="a@shopmail.io"))
    ).json["data"]
    reply = await api.call(
        "PATCH", f"/api/profiles/{profile['id']}", patch_body("01OTHER", email="b@shopmail.io")
    )
    assert reply.status == 400 and reply.pointers == ["/data/id"]


async def test_event_profile_id_is_adopted_then_patchable(api: Api) -> None:
    """Producers carry ids of profiles that exist at Klaviyo: an unseen id stands for one."""
    pid = "01H81WC034AKRMQJQARPEEBHJE"
    await api.event(event_body(profile_data(id=pid, email="john.smith@shopmail.io")))
    reply = await api.call(
        "PATCH", f"/api/profiles/{pid}", patch_body(pid, email="john@smith.family")
    )
    assert reply.status == 200
    later = await api.event(event_body(profile_data(email="john@smith.family"), unique_id="e2"))
    assert later.status == 202
    assert {e["profile_id"] for e in (await api.inspect("events"))["data"]} == {pid}


async def test_patch_properties_meta(api: Api) -> None:
    profile = (
        await api.call(
            "POST",
            "/api/profile-import",
            import_body(email="a@shopmail.io", properties={"Keep": 1, "Drop": 2}),
        )
    ).json["data"]
    body = patch_body(profile["id"])
    body["data"]["meta"] = {"patch_properties": {"unset": "Drop", "append": {"Tags": "vip"}}}
    reply = await api.call("PATCH", f"/api/profiles/{profile['id']}", body)
    assert reply.status == 200
    assert reply.json["data"]["attributes"]["properties"] == {"Keep": 1, "Tags": ["vip"]}


async def test_count_only_mode_counts_and_dedups_without_keeping() -> None:
    async with sandbox_api(SandboxOptions(keep_events=False)) as api:
        for unique_id in ("a", "b", "a"):
            assert (await api.event(event_body(unique_id=unique_id))).status == 202
        await api.event(event_body(profile_data(email="x@example.com")))
        seen = await api.inspect("events?include=dropped")
        assert seen["data"] == [] and seen["dropped"] == []
        assert seen["meta"] == {"count": 0, "accepted": 2, "dropped": 1, "duplicates": 1}
        stats = await api.inspect("stats")
        assert (stats["events"], stats["dropped"], stats["duplicates"]) == (2, 1, 1)
