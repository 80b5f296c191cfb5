"""The chart passes ``relay.topicPriorities`` to the relay as TOPIC_PRIORITIES, and its schema
refuses a class the relay does not know before anything is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.priorities import PriorityClass
from consumer.settings import load_settings
from tests.fixtures.helm import CHART, FULLNAME, HELM, KUBE_VERSION, by_kind, render, run_helm

needs_helm = pytest.mark.skipif(HELM is None, reason="helm not found: run dev/install-tools.sh")


@needs_helm
def test_topic_priorities_reach_the_relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"relay": {"topicPriorities": {"shop.order.placed": "urgent"}}}
    docs = render(values=values, tmp=tmp_path)
    (config,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == FULLNAME]
    monkeypatch.setenv("TOPIC_PRIORITIES", config["data"]["TOPIC_PRIORITIES"])
    settings = load_settings()
    assert settings.topic_priorities["shop.order.placed"] is PriorityClass.URGENT
    assert settings.topic_priorities["shop.lead.captured"] is PriorityClass.LOWEST
    # Unset, the relay keeps its built-in classes (no key in the ConfigMap).
    (default,) = [d for d in by_kind(render(), "ConfigMap") if d["metadata"]["name"] == FULLNAME]
    assert "TOPIC_PRIORITIES" not in default["data"]


@needs_helm
def test_an_unknown_priority_class_fails_the_install(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("relay:\n  topicPriorities:\n    shop.order.placed: vip\n")
    result = run_helm(
        "template", "relay", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(values)
    )
    assert result.returncode != 0
    assert "topicPriorities" in result.stderr
