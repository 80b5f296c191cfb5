"""Logs are structured and never carry a key, an email, a phone number or a reset link."""

from __future__ import annotations

import io
import logging
import string
from collections.abc import Iterator

import orjson
import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from consumer.observability.logging import (
    LibrdkafkaLogFilter,
    RepeatSummary,
    configure_logging,
    get_logger,
)
from consumer.observability.redact import redact_text
from consumer.settings import Settings, SettingsError, load_settings

PNF = phonenumbers.PhoneNumberFormat
# Countries whose national formats a shop's customers are likely to type.
SHOP_REGIONS = (
    "US",
    "CA",
    "GB",
    "IE",
    "DE",
    "FR",
    "NL",
    "BE",
    "ES",
    "IT",
    "SE",
    "AU",
    "NZ",
    "BR",
    "MX",
)


class _TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json", log_level="INFO"), stream=stream)
    yield stream
    logging.getLogger().handlers.clear()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def _example_phones() -> list[str]:
    found = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        number = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        if number is None:
            continue
        found += [phonenumbers.format_number(number, PNF.E164)]
        found += [phonenumbers.format_number(number, PNF.INTERNATIONAL)]
        if region in SHOP_REGIONS:
            found.append(phonenumbers.format_number(number, PNF.NATIONAL))
    return found


PHONES = _example_phones()
API_KEYS = st.text(string.ascii_letters + string.digits, min_size=20, max_size=40).map(
    lambda s: "pk_" + s
)
TOKENS = st.text(string.ascii_letters + string.digits + "-_", min_size=20, max_size=64)
RESET_LINKS = st.builds(
    lambda host, token, style: style.format(host=host, token=token),
    st.sampled_from(["shop.example", "www.example-store.co.uk", "accounts.example.com"]),
    TOKENS,
    st.sampled_from(
        [
            "https://{host}/account/reset?token={token}",
            "https://{host}/password/reset/{token}",
            "https://{host}/r/{token}",
            "https://{host}/a/b#token={token}",
        ]
    ),
)


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


@pytest.mark.parametrize("phone", PHONES)
def test_every_example_phone_number_is_masked(phone: str) -> None:
    out = redact_text(f"could not send SMS to {phone}, giving up")
    assert "[phone]" in out
    assert _digits(phone) not in _digits(out)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    email=st.emails(),
    key=API_KEYS,
    phone=st.sampled_from(PHONES),
    link=RESET_LINKS,
    bearer=TOKENS,
)
def test_no_secret_or_personal_data_in_any_log_line(
    email: str, key: str, phone: str, link: str, bearer: str
) -> None:
    for mode, stream in (("json", io.StringIO()), ("console", _TtyStream())):
        configure_logging(Settings(log_format="auto" if mode == "console" else mode), stream=stream)
        log = get_logger("consumer.test")
        log.warning(
            f"Klaviyo rejected profile {email} / {phone}",
            topic="shop.accounts.password-reset-requested",
            detail={"properties": {"reset_link": link, "note": f"see {link}"}, "to": [email]},
            headers={"Authorization": f"Klaviyo-API-Key {key}", "X-Other": f"Bearer {bearer}"},
            api_key=SecretStr(key),
            phone_number=phone,
        )
        try:
            raise ValueError(f"bad payload for {email}: key={key} link={link}")
        except ValueError:
            log.exception("dead-lettered", stage="send", reason="invalid_event")
        # Libraries log through the stdlib; the same redaction must apply.
        logging.getLogger("aiohttp.client").error(
            "GET %s with Bearer %s for %s", link, bearer, email
        )
        text = stream.getvalue()
        assert len(text.splitlines()) >= 3
        for secret in (email, key, link, bearer):
            assert secret not in text, f"{mode}: leaked {secret!r}"
        # The phone's digits never appear as a run, whatever separators were used.
        assert _digits(phone) not in _digits(text.replace("\n", " ")), f"{mode}: leaked {phone!r}"
        assert "[redacted]" in text and "[email]" in text
    logging.getLogger().handlers.clear()


def test_json_lines_keep_operational_fields(json_log: io.StringIO) -> None:
    log = get_logger("consumer.pipeline.deadletter")
    event_id = "123e4567-e89b-12d3-a456-426614174000"
    log.info(
        "dead-lettered",
        topic="shop.orders.placed",
        partition=3,
        offset=1234567890123,
        event_id=event_id,
        base_url="https://a.klaviyo.com/api/events",
        broker="10.20.30.40:9092",
        occurred_at="2026-07-15T10:00:00.123Z",
    )
    (line,) = _lines(json_log)
    assert line["message"] == "dead-lettered"
    assert line["level"] == "info"
    assert line["logger"] == "consumer.pipeline.deadletter"
    assert str(line["timestamp"]).endswith("Z")
    assert line["topic"] == "shop.orders.placed"
    assert (line["partition"], line["offset"], line["event_id"]) == (3, 1234567890123, event_id)
    assert line["base_url"] == "https://a.klaviyo.com/api/events"
    assert line["broker"] == "10.20.30.40:9092"
    assert line["occurred_at"] == "2026-07-15T10:00:00.123Z"


def test_a_message_field_is_not_overwritten_by_the_event(json_log: io.StringIO) -> None:
    log = get_logger("consumer.pipeline.relay")
    log.warning("event dead-lettered", reason="bad_magic", message="bad_magic: first byte 0x67")
    log.warning("x", detail="taken", message="kept too")
    first, second = _lines(json_log)
    assert first["message"] == "event dead-lettered" and first["reason"] == "bad_magic"
    assert first["detail"] == "bad_magic: first byte 0x67"
    assert (second["detail"], second["message_field"]) == ("taken", "kept too")


def test_level_filtering_and_quiet_access_log(json_log: io.StringIO) -> None:
    log = get_logger("consumer.pipeline")
    log.debug("accepted", topic="t")  # per-success lines are DEBUG, hidden at INFO
    logging.getLogger("aiohttp.access").info("GET /metrics 200")
    log.info("partition assigned", topic="t", partition=0)
    assert [line["message"] for line in _lines(json_log)] == ["partition assigned"]


def test_console_format_on_a_terminal() -> None:
    stream = _TtyStream()
    configure_logging(Settings(log_format="auto"), stream=stream)
    get_logger("consumer.cli").info("relay halted", reason="401", email="x@example.com")
    text = stream.getvalue()
    assert "relay halted" in text and "reason" in text
    assert "x@example.com" not in text
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    logging.getLogger().handlers.clear()


def test_unknown_log_level_is_refused() -> None:
    # By the settings, so check refuses it as run does (not only once logging is configured).
    with pytest.raises(SettingsError, match="LOG_LEVEL"):
        load_settings(log_level="LOUD")


def test_repeats_are_let_through_once_per_interval_and_counted() -> None:
    now = [0.0]
    summary = RepeatSummary(30.0, clock=lambda: now[0])
    assert summary.admit("down") == 0
    assert [summary.admit("down") for _ in range(5)] == [None] * 5
    assert summary.admit("other") == 0  # each kind on its own
    now[0] = 30.0
    assert summary.admit("down") == 5
    assert summary.admit("down") is None


def test_librdkafka_lines_are_summarised_and_duplicates_dropped() -> None:
    now = [0.0]
    keep = LibrdkafkaLogFilter(RepeatSummary(10.0, clock=lambda: now[0]))
    drop = LibrdkafkaLogFilter(drop_facilities=frozenset({"FAIL"}))

    def record(after_ms: int) -> logging.LogRecord:
        text = (
            "FAIL [rdkafka#producer-2] [thrd:h:1/bootstrap]: h:1/bootstrap: Connect to ipv4#h:1"
            f" failed: Connection refused (after {after_ms}ms in state CONNECT)"
        )
        return logging.LogRecord("x", logging.ERROR, __file__, 1, text, None, None)

    assert keep.filter(record(0)) is True
    assert [keep.filter(record(n)) for n in range(1, 40)] == [False] * 39
    now[0] = 10.0
    later = record(7)
    assert keep.filter(later) is True
    assert later.getMessage().endswith("(and 39 more like it held back)")
    assert drop.filter(record(0)) is False


@pytest.mark.parametrize(
    "url",
    [
        "https://shop.example/r/a00000000000000-a000",  # found by hypothesis: looked like a word
        "https://shop.example/aaaaaaaaaaaaaaa-aaaa",
        "https://shop.example/api/r/abcdefghijklmnopqrstuvwxyz1234",
    ],
)
def test_a_link_outside_the_apis_we_call_keeps_no_path(url: str) -> None:
    out = redact_text(f"link {url} sent")
    assert out == "link https://shop.example/[redacted] sent"


def test_the_paths_of_the_apis_we_call_stay_readable() -> None:
    kept = "https://a.klaviyo.com/api/event-bulk-create-jobs"
    assert redact_text(f"POST {kept} failed") == f"POST {kept} failed"
