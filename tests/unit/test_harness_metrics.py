"""The harness's reading of a relay's /metrics (:func:`dev.harness.metric_sum` and
:func:`dev.harness.metric_sums_by`), on exposition text as prometheus_client writes it."""

from __future__ import annotations

import pytest

from dev.harness import metric_sum, metric_sums_by

TEXT = """\
# HELP relay_requests_total Requests.
# TYPE relay_requests_total counter
relay_requests_total{endpoint="create_event",status_class="2xx"} 7.0
relay_requests_total{endpoint="create_event",status_class="5xx"} 2.0
relay_requests_total{endpoint="bulk_create_events",status_class="5xx"} 3.0
relay_requests_created{endpoint="create_event",status_class="2xx"} 1.7e+09
# HELP relay_share Share.
# TYPE relay_share gauge
relay_share 0.5
# HELP relay_halted Halted.
# TYPE relay_halted gauge
relay_halted{account="a"} 1.0
relay_halted{account="b"} 0.0
# HELP relay_failures_total Failures, none yet.
# TYPE relay_failures_total counter
# HELP relay_wait_seconds Waits.
# TYPE relay_wait_seconds histogram
relay_wait_seconds_bucket{endpoint="create_event",le="1.0"} 4.0
relay_wait_seconds_bucket{endpoint="create_event",le="+Inf"} 5.0
relay_wait_seconds_count{endpoint="create_event"} 5.0
relay_wait_seconds_sum{endpoint="create_event"} 2.5
"""


def test_a_counter_sums_its_total_samples_not_its_created_timestamps() -> None:
    assert metric_sum(TEXT, "relay_requests_total") == 12.0


def test_only_samples_whose_labels_include_the_given_ones_count() -> None:
    assert metric_sum(TEXT, "relay_requests_total", {"status_class": "5xx"}) == 5.0
    both = {"endpoint": "create_event", "status_class": "5xx"}
    assert metric_sum(TEXT, "relay_requests_total", both) == 2.0
    assert metric_sum(TEXT, "relay_requests_total", {"status_class": "4xx"}) == 0.0


def test_an_unlabelled_gauge_is_its_one_sample() -> None:
    assert metric_sum(TEXT, "relay_share") == 0.5


def test_a_labelled_counter_that_counted_nothing_yet_is_zero() -> None:
    assert metric_sum(TEXT, "relay_failures_total") == 0.0
    assert metric_sums_by(TEXT, "relay_failures_total", "endpoint") == {}


def test_a_histograms_series_are_named_by_their_suffix() -> None:
    assert metric_sum(TEXT, "relay_wait_seconds_count") == 5.0
    assert metric_sum(TEXT, "relay_wait_seconds_sum", {"endpoint": "create_event"}) == 2.5


def test_sums_by_one_label() -> None:
    assert metric_sums_by(TEXT, "relay_halted", "account") == {"a": 1.0, "b": 0.0}
    by_endpoint = metric_sums_by(TEXT, "relay_requests_total", "endpoint")
    assert by_endpoint == {"create_event": 9.0, "bulk_create_events": 3.0}
    fives = metric_sums_by(TEXT, "relay_requests_total", "endpoint", {"status_class": "5xx"})
    assert fives == {"create_event": 2.0, "bulk_create_events": 3.0}
    assert metric_sums_by(TEXT, "relay_share", "endpoint") == {"": 0.5}


@pytest.mark.parametrize("name", ["relay_request_total", "relay_requests", "relay_shares"])
def test_a_name_no_family_declares_is_an_error_not_a_zero(name: str) -> None:
    with pytest.raises(LookupError, match=name):
        metric_sum(TEXT, name)
