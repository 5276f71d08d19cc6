"""The rollout waiter's verdicts on hand-written API objects (shapes as the real API returns them)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from minibuild.cluster.waiter import assess, crashlooping, rollout_progress

FIXTURES = sorted((Path(__file__).parent / "fixtures/rollout").glob("*.yaml"))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_verdict(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    want = case["expect"]
    v = assess(case["deployment"], case.get("replicasets") or [], case.get("pods") or [],
               case.get("events") or [], case.get("logs"))
    assert v.state == want["state"], v
    assert v.done == want["done"]
    assert v.ok == want.get("ok", False)
    assert want["contains"] in v.message
    assert len(v.logs) == want.get("logs", 0)


def test_every_failure_kind_has_a_fixture() -> None:
    states = {yaml.safe_load(p.read_text())["expect"]["state"] for p in FIXTURES}
    assert {"queued", "unschedulable", "image_pull", "crash_loop", "deadline", "ready", "progressing"} <= states


def test_deadline_names_what_held_it_up() -> None:
    case = yaml.safe_load((Path(__file__).parent / "fixtures/rollout/deadline.yaml").read_text())
    stuck = yaml.safe_load((Path(__file__).parent / "fixtures/rollout/unschedulable.yaml").read_text())
    v = assess(case["deployment"], [], stuck["pods"], stuck["events"])
    assert v.state == "deadline" and v.done and "Insufficient nvidia.com/gpu" in v.message


def test_waiting_for_kueue_quota_is_never_failed_even_past_the_deadline() -> None:
    case = yaml.safe_load((Path(__file__).parent / "fixtures/rollout/deadline.yaml").read_text())
    gated = yaml.safe_load((Path(__file__).parent / "fixtures/rollout/queued_kueue.yaml").read_text())["pods"]
    v = assess(case["deployment"], [], gated, [])
    assert v.state == "queued" and not v.failed and "queued by Kueue" in v.message and "not failed" in v.message


def test_scaled_down_old_replicas_pending() -> None:
    dep = {"metadata": {"name": "d", "generation": 1}, "spec": {"replicas": 1},
           "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1}}
    assert rollout_progress(dep).message == "1 old replicas are pending termination"


def test_crashlooping_selects_pods_for_logs() -> None:
    case = yaml.safe_load((Path(__file__).parent / "fixtures/rollout/crash_loop.yaml").read_text())
    assert crashlooping(case["pods"]) == ["mini-vllm-gptoss-tp2-6d5c4-p0o9i"]
    ok = yaml.safe_load((Path(__file__).parent / "fixtures/rollout/success.yaml").read_text())
    assert crashlooping(ok["pods"]) == []
