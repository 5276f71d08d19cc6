"""The Kubernetes client path - server-side apply, read back, wait with diagnosis, dry-run diff, delete -
through the real kubernetes Python client against an emulated API server over HTTP (kube_emulator.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster_helpers import free_port
from kube_emulator import KubeEmulator
from minibuild.cluster import rollout
from minibuild.cluster.render import render_kubernetes
from minibuild.cluster.settings import make_plan
from minibuild.config import parse_config, read_document

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "972488948509.dkr.ecr.eu-west-2.amazonaws.com/engineering/inference/mini-vllm-server@sha256:" + "ab" * 32
NS = "hyperpod-ns-inference"
NAME = "mini-vllm-gpt-oss-20b"


@pytest.fixture()
def cfg():
    return _config()


def _config(**hyperpod):
    doc = read_document(ROOT / "build_config.yaml")
    for t in ("hyperpod", "eks"):
        doc["cluster"]["targets"][t].update(poll_s=0.02, wait_timeout_s=10)
    doc["cluster"]["targets"]["hyperpod"].update(hyperpod)
    return parse_config(doc, ROOT)


@pytest.fixture()
def emu(tmp_path, monkeypatch):
    with KubeEmulator() as e:
        monkeypatch.setenv("KUBECONFIG", str(e.kubeconfig(tmp_path / "kubeconfig")))
        yield e


def _pod(phase: str, hash_: str = "h1", **status) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{NAME}-{hash_}-abcde", "namespace": NS,
                         "labels": {"app": NAME, "pod-template-hash": hash_}},
            "spec": {"containers": [{"name": "server"}], **status.pop("spec", {})},
            "status": {"phase": phase, **status}}


def _controller(steps):
    """Play the Deployment controller: each poll applies the next step (status, pods) to the store."""
    it = iter(steps)

    def on_poll(emu: KubeEmulator) -> None:
        step = next(it, None)
        if step is None:
            return
        status, pods = step
        dep = emu.get("deployments", NS, NAME)
        dep["status"] = {"observedGeneration": dep["metadata"]["generation"], **status}
        emu.put("deployments", dep)
        for p in pods:
            emu.put("pods", p)
    return on_poll


def test_apply_then_wait_through_kueue_queue_to_ready(cfg, emu, capsys):
    emu.on_poll = _controller([
        ({"replicas": 1, "updatedReplicas": 1}, [_pod("Pending", spec={"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]})]),
        ({"replicas": 1, "updatedReplicas": 1}, [_pod("Running", containerStatuses=[{"name": "server", "ready": False, "restartCount": 0, "state": {"running": {}}}])]),
        ({"replicas": 1, "updatedReplicas": 1, "availableReplicas": 1, "readyReplicas": 1}, []),
    ])
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE) is True
    err = capsys.readouterr().err
    assert "queued by Kueue" in err and "successfully rolled out" in err
    applies = [r for r in emu.requests if r["method"] == "PATCH"]
    assert [r["path"].rsplit("/", 2)[-2] for r in applies] == ["services", "deployments", "podmonitors"]
    assert all(r["content_type"] == "application/apply-patch+yaml" and r["query"] == {"fieldManager": "mini-vllm", "force": "true"}
               for r in applies)
    live = emu.get("deployments", NS, NAME)
    want = next(o for o in render_kubernetes(cfg, make_plan(cfg, "hyperpod", 2, image=IMAGE)) if o["kind"] == "Deployment")
    assert live["spec"] == want["spec"]
    assert live["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "hyperpod-ns-inference-localqueue"
    assert live["metadata"]["managedFields"][0]["manager"] == "mini-vllm"


def test_crash_loop_fails_with_last_log_lines(cfg, emu, capsys):
    crash = _pod("Running", containerStatuses=[{
        "name": "server", "ready": False, "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}])
    emu.logs[(NS, crash["metadata"]["name"])] = ["loading model", "FileNotFoundError: /mnt/s3/inference/models/gpt-oss-20b/config.json"]
    emu.on_poll = _controller([({"replicas": 1, "updatedReplicas": 1}, [crash])])
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE) is False
    err = capsys.readouterr().err
    assert "crash_loop" in err and "FileNotFoundError: /mnt/s3/inference/models/gpt-oss-20b/config.json" in err


def test_wait_gives_up_while_unschedulable(cfg, emu, capsys):
    cfg = _config(wait_timeout_s=0.3)
    pod = _pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                       "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}])
    emu.on_poll = _controller([({"replicas": 1, "updatedReplicas": 1}, [pod])])
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE) is False
    assert "gave up after" in capsys.readouterr().err


def test_reapply_same_is_a_noop_and_new_image_bumps_generation(cfg, emu):
    emu.on_poll = lambda e: e.put("deployments", {**e.get("deployments", NS, NAME), "status": {
        "observedGeneration": e.get("deployments", NS, NAME)["metadata"]["generation"],
        "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}})
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE)
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE)
    assert emu.get("deployments", NS, NAME)["metadata"]["generation"] == 1
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE.replace("ab" * 32, "cd" * 32))
    assert emu.get("deployments", NS, NAME)["metadata"]["generation"] == 2


def test_dry_run_prints_yaml_and_diff_against_live(cfg, emu, capsys):
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE, dry_run=True)
    out = capsys.readouterr()
    assert "kind: Deployment" in out.out and "Deployment/mini-vllm-gpt-oss-20b: new" in out.err
    assert not [r for r in emu.requests if r["method"] != "GET"]          # a dry run changes nothing
    for obj in render_kubernetes(cfg, make_plan(cfg, "hyperpod", 2, image=IMAGE)):
        emu._apply((obj["kind"].lower() + "s", NS, obj["metadata"]["name"]), json.loads(json.dumps(obj)), "mini-vllm")
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE, dry_run=True)
    assert "Deployment/mini-vllm-gpt-oss-20b: unchanged" in capsys.readouterr().err
    new = IMAGE.replace("ab" * 32, "cd" * 32)
    assert rollout(cfg, target="hyperpod", tp=2, image=new, dry_run=True)
    out = capsys.readouterr()
    assert "Deployment/mini-vllm-gpt-oss-20b: changes" in out.err
    assert f"-        image: {IMAGE}" in out.out and f"+        image: {new}" in out.out


def test_dry_run_without_a_cluster_says_so(cfg, tmp_path, monkeypatch, capsys):
    port = free_port()
    emu = KubeEmulator()   # only for its kubeconfig writer; pointed at a closed port
    emu.server.server_close()
    cfgfile = emu.kubeconfig(tmp_path / "kc")
    cfgfile.write_text(cfgfile.read_text().replace(emu.url, f"http://127.0.0.1:{port}"))
    monkeypatch.setenv("KUBECONFIG", str(cfgfile))
    assert rollout(cfg, target="eks", tp=1, image=IMAGE, dry_run=True)
    out = capsys.readouterr()
    assert "kind: Deployment" in out.out and "no cluster reachable" in out.err
    assert rollout(cfg, target="eks", tp=1, image=IMAGE) is False          # a real apply fails clearly


def test_delete_removes_what_rollout_made_by_label(cfg, emu):
    emu.on_poll = lambda e: e.put("deployments", {**e.get("deployments", "default", "mini-vllm-gpt-oss-20b"), "status": {
        "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}})
    assert rollout(cfg, target="eks", tp=1, image=IMAGE)
    emu.put("services", {"metadata": {"name": "someone-else", "namespace": "default", "labels": {"app": "other"}}})
    assert {k[0] for k in emu.objects} == {"deployments", "services", "persistentvolumeclaims", "podmonitors",
                                           "nodepools", "ec2nodeclasses"}
    assert rollout(cfg, target="eks", tp=1, delete=True)
    # kept: the model cache, the shared GPU pool, and what is not ours
    assert sorted(k[:1] + k[2:] for k in emu.objects) == [("ec2nodeclasses", "gpu-inference"), ("nodepools", "gpu-inference"),
                                                          ("persistentvolumeclaims", "mini-vllm-model-cache"),
                                                          ("services", "someone-else")]


def test_missing_monitoring_crd_warns_missing_autoscaler_crd_fails(cfg, emu, capsys):
    def ready(e):
        dep = e.get("deployments", NS, NAME)
        e.put("deployments", {**dep, "status": {"observedGeneration": dep["metadata"]["generation"], "replicas": 1,
                                                "updatedReplicas": 1, "availableReplicas": 1}})
    emu.on_poll = ready
    emu.missing = {"podmonitors", "scaledobjects"}
    assert rollout(cfg, target="hyperpod", tp=1, image=IMAGE)          # serving matters; scraping is optional
    err = capsys.readouterr().err
    assert f"PodMonitor/{NAME} not applied" in err and "kube-prometheus-stack" in err
    assert not rollout(cfg, target="hyperpod", tp=1, image=IMAGE, autoscale="keda")   # asked for: must not pass silently
    err = capsys.readouterr().err
    assert f"ScaledObject/{NAME}: the cluster does not serve keda.sh/v1alpha1" in err and "KEDA" in err
    emu.missing = set()
    assert rollout(cfg, target="hyperpod", tp=1, image=IMAGE, autoscale="keda")
    assert emu.get("scaledobjects", NS, NAME)["spec"]["scaleTargetRef"]["name"] == NAME
    assert "replicas" not in emu.get("deployments", NS, NAME)["spec"]
    assert rollout(cfg, target="hyperpod", tp=1, delete=True)
    assert not [k for k in emu.objects if k[0] in ("scaledobjects", "podmonitors", "deployments")]


def test_wrong_token_is_a_clear_error(cfg, emu, tmp_path, monkeypatch, capsys):
    kc = emu.kubeconfig(tmp_path / "bad")
    kc.write_text(kc.read_text().replace("test-token", "wrong"))
    monkeypatch.setenv("KUBECONFIG", str(kc))
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE) is False
    assert "401" in capsys.readouterr().err


def _ready(e: KubeEmulator, name: str, ns: str = NS) -> None:
    e.put("deployments", {**e.get("deployments", ns, name), "status": {
        "observedGeneration": e.get("deployments", ns, name)["metadata"]["generation"],
        "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}})


def test_two_models_side_by_side_then_delete_one(cfg, emu, capsys):
    from minibuild.cluster import status

    emu.on_poll = lambda e: [_ready(e, k[2]) for k in list(e.objects) if k[0] == "deployments"]
    assert rollout(cfg, target="hyperpod", tp=1, image=IMAGE, model="/mnt/s3/inference/models/gpt-oss-20b")
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE, model="/mnt/s3/inference/models/gpt-oss-120b")
    deps = {k[2] for k in emu.objects if k[0] == "deployments"}
    assert deps == {"mini-vllm-gpt-oss-20b", "mini-vllm-gpt-oss-120b"}
    big = emu.get("deployments", NS, "mini-vllm-gpt-oss-120b")["spec"]["template"]["spec"]["containers"][0]
    assert big["command"][big["command"].index("--served-model-name") + 1] == "gpt-oss-120b"
    assert big["resources"]["limits"]["nvidia.com/gpu"] == 2
    capsys.readouterr()
    status(cfg, target="hyperpod")
    err = capsys.readouterr().err
    assert "mini-vllm-gpt-oss-20b: ready" in err and "mini-vllm-gpt-oss-120b: ready" in err
    assert rollout(cfg, target="hyperpod", delete=True, served_name="gpt-oss-20b")
    assert {k[2] for k in emu.objects if k[0] in ("deployments", "services")} == {"mini-vllm-gpt-oss-120b"}


def test_logs_follow_streams_lines_as_they_come(cfg, emu, capsys):
    import threading
    import time

    from minibuild.cluster import logs

    pod = _pod("Running", conditions=[{"type": "Ready", "status": "True"}])
    emu.put("deployments", {"metadata": {"name": NAME, "namespace": NS, "labels": {"app": NAME}}, "spec": {}})
    emu.put("pods", pod)
    key = (NS, pod["metadata"]["name"])
    emu.logs[key] = ["old 1", "old 2"]

    def writer() -> None:
        for i in range(3):
            time.sleep(0.3)
            with emu.lock:
                emu.logs[key].append(f"new {i}")
        time.sleep(0.2)
        emu.ended.add(key)           # the container stops: the stream ends, as kubectl logs -f does

    t = threading.Thread(target=writer)
    t.start()
    start = time.monotonic()
    logs(cfg, target="hyperpod", served_name="gpt-oss-20b", tail=1, follow=True)
    t.join()
    assert capsys.readouterr().out.splitlines() == ["old 2", "new 0", "new 1", "new 2"]
    assert time.monotonic() - start >= 0.9          # it waited for the lines, it did not read once
    follow = [r for r in emu.requests if r["path"].endswith("/log")][-1]
    assert follow["query"] == {"container": "server", "tailLines": "1", "follow": "true"}


def test_status_and_logs_read_the_live_objects(cfg, emu, capsys):
    from minibuild.cluster import logs, status

    pod = _pod("Running", conditions=[{"type": "Ready", "status": "True"}],
               containerStatuses=[{"name": "server", "ready": True, "restartCount": 0, "state": {"running": {}}}])
    emu.logs[(NS, pod["metadata"]["name"])] = ["INFO model gpt-oss-20b ready in 812.4 s"]
    emu.on_poll = _controller([({"replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}, [pod])])
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE)
    capsys.readouterr()
    status(cfg, target="hyperpod")
    out = capsys.readouterr()
    assert "ready" in out.err and pod["metadata"]["name"] in out.out
    logs(cfg, target="hyperpod", tail=10)
    assert "ready in 812.4 s" in capsys.readouterr().out


def test_status_of_a_deployment_scaled_past_the_kueue_quota_says_queued(cfg, emu, capsys, monkeypatch):
    from minibuild.cluster import status

    monkeypatch.setenv("COLUMNS", "200")   # the pod table unwrapped

    ready = _pod("Running", "h1", conditions=[{"type": "Ready", "status": "True"}],
                 containerStatuses=[{"name": "server", "ready": True, "restartCount": 0, "state": {"running": {}}}])
    emu.on_poll = _controller([({"replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}, [ready])])
    assert rollout(cfg, target="hyperpod", tp=2, image=IMAGE, autoscale="keda")
    # the autoscaler raised the count to 3; Kueue admits no more pods: two wait at the admission gate,
    # and the progress deadline runs out while they wait
    dep = emu.get("deployments", NS, NAME)
    dep["spec"]["replicas"] = 3
    dep["status"] = {"observedGeneration": dep["metadata"]["generation"], "replicas": 3, "updatedReplicas": 3,
                     "availableReplicas": 1, "conditions": [{"type": "Progressing", "status": "False",
                                                             "reason": "ProgressDeadlineExceeded"}]}
    emu.put("deployments", dep)
    for suffix in ("b", "c"):
        gated = _pod("Pending", "h1", spec={"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]})
        gated["metadata"]["name"] += suffix
        gated["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "hyperpod-ns-inference-localqueue"
        emu.put("pods", gated)
    emu.on_poll = None
    capsys.readouterr()
    status(cfg, target="hyperpod")
    out = capsys.readouterr()
    assert "serving on 1 of 3 replicas; 2 pod(s) queued by Kueue (waiting for quota, not failed)" in out.err
    assert "deadline" not in out.err and "failed" not in out.err.replace("not failed", "")
    assert out.out.count("Pending (queued by Kueue)") == 2
