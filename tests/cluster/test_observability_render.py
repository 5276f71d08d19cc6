"""Monitors, autoscalers and the Karpenter GPU pool as rendered by `invoke rollout`; every object passes the
real `kubernetes-validate --strict` with the CRD schemas vendored in cluster/schemas/ (an overlay package,
see minibuild/cluster/crd_schemas.py); the committed Grafana dashboard is what its spec generates.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from minibuild.cluster import autoscale, dashboard
from minibuild.cluster.crd_schemas import file_name, run_validate, vendored
from minibuild.cluster.render import render_kubernetes, to_yaml
from minibuild.cluster.render_stack import render_stack
from minibuild.cluster.settings import RolloutError, make_plan
from minibuild.cluster.stack import with_stack
from minibuild.config import ConfigError, load_config, parse_config, read_document

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "972488948509.dkr.ecr.eu-west-2.amazonaws.com/engineering/inference/mini-vllm-server@sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "build_config.yaml")


def _with(**sections):
    """The checkout's config with cluster.<section> keys replaced: _with(monitoring={"monitor": "none"})."""
    doc = read_document(ROOT / "build_config.yaml")
    for name, values in sections.items():
        doc["cluster"][name].update(values)
    return parse_config(doc, ROOT)


def _objs(cfg, target, tp=1, autoscale_mode=None):
    """What `invoke rollout` applies (render_stack: the model objects, and router / gateway when asked)."""
    return render_stack(cfg, make_plan(cfg, target, tp, image=IMAGE, autoscale=autoscale_mode))


def _kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def test_pod_monitor_and_scrape_annotations(cfg):
    objs = _objs(cfg, "hyperpod", 2)
    dep, = _kind(objs, "Deployment")
    pm, = _kind(objs, "PodMonitor")
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "8000" and ann["prometheus.io/path"] == "/metrics"
    assert pm["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    port = pm["spec"]["podMetricsEndpoints"][0]["port"]
    assert port in [p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]]
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["metadata"]["namespace"] == dep["metadata"]["namespace"]
    assert objs.index(pm) > objs.index(dep)          # applied after what it watches
    assert dep["spec"]["replicas"] == 1              # no autoscaler: a fixed count


def test_router_pods_get_their_own_monitor(cfg):
    plan = with_stack(cfg, make_plan(cfg, "eks", 1, image=IMAGE), replicas=2, router="cache_aware")
    monitors = _kind(render_kubernetes(cfg, plan), "PodMonitor")
    assert [(m["metadata"]["name"], m["spec"]["podMetricsEndpoints"][0]["port"]) for m in monitors] == [
        (plan.name, "http"), (f"{plan.name}-router", "metrics")]
    assert monitors[1]["spec"]["selector"]["matchLabels"] == {"app": f"{plan.name}-router"}


def test_service_monitor_or_none(cfg):
    objs = _objs(_with(monitoring={"monitor": "servicemonitor"}), "eks")
    sm, = _kind(objs, "ServiceMonitor")
    svc, = _kind(objs, "Service")
    assert sm["spec"]["selector"]["matchLabels"]["app"] == svc["metadata"]["labels"]["app"]
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    objs = _objs(_with(monitoring={"monitor": "none"}), "eks")
    assert not _kind(objs, "ServiceMonitor") and not _kind(objs, "PodMonitor")
    assert _kind(objs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_keda_scaled_object(cfg):
    objs = _objs(cfg, "hyperpod", 1, "keda")
    so, = _kind(objs, "ScaledObject")
    dep, = _kind(objs, "Deployment")
    auto = cfg.cluster.autoscale
    assert "replicas" not in dep["spec"]                     # the autoscaler owns the count
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (auto.min_replicas, auto.max_replicas)
    trig, = so["spec"]["triggers"]
    assert trig["type"] == "prometheus"
    name = dep["metadata"]["name"]
    assert trig["metadata"]["query"] == 'sum(vllm:num_requests_waiting{namespace="hyperpod-ns-inference",app="%s"})' % name
    assert trig["metadata"]["threshold"] == "5" and auto.waiting_per_replica == 5
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": auto.scale_up_period_s}]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == auto.scale_down_window_s >= 300
    # a new replica may not be scaled away while it still loads: the initial cooldown covers the startup window
    probes = cfg.cluster.probes
    assert so["spec"]["initialCooldownPeriod"] == probes["startup_period_s"] * probes["startup_failure_threshold"]


def test_autoscaled_eks_pods_each_get_their_own_model_cache(cfg):
    # one ReadWriteOnce EBS claim cannot follow pods the autoscaler adds on other nodes: a StatefulSet
    # with a claim template gives each its own, and the autoscaler scales that
    objs = _objs(cfg, "eks", 1, "keda")
    sts, = _kind(objs, "StatefulSet")
    so, = _kind(objs, "ScaledObject")
    assert not _kind(objs, "Deployment") and not _kind(objs, "PersistentVolumeClaim")
    assert "replicas" not in sts["spec"] and sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "model"
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"]}


def test_hpa_and_adapter_rule(cfg):
    objs = _objs(cfg, "eks", 1, "hpa")
    hpa, = _kind(objs, "HorizontalPodAutoscaler")
    cm, = _kind(objs, "ConfigMap")
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    assert [r["name"]["as"] for r in rules] == [metric] == ["vllm_num_requests_waiting"]
    assert rules[0]["seriesQuery"].startswith("vllm:num_requests_waiting{")
    assert hpa["spec"]["metrics"][0]["pods"]["target"] == {"type": "AverageValue", "averageValue": "5"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == cfg.cluster.autoscale.scale_down_window_s
    assert (cm["metadata"]["namespace"], cm["metadata"]["name"]) == ("monitoring", "prometheus-adapter")


def test_karpenter_pool_matches_what_the_pod_selects(cfg):
    objs = _objs(cfg, "eks", 8)
    pool, = _kind(objs, "NodePool")
    cls, = _kind(objs, "EC2NodeClass")
    dep, = _kind(objs, "Deployment")
    pod = dep["spec"]["template"]
    assert objs.index(pool) == 0 and objs.index(cls) == 1      # nodes first
    assert pod["spec"]["nodeSelector"]["karpenter.sh/nodepool"] == pool["metadata"]["name"] == cls["metadata"]["name"]
    assert pool["spec"]["template"]["spec"]["nodeClassRef"]["name"] == cls["metadata"]["name"]
    taint, = pool["spec"]["template"]["spec"]["taints"]
    assert any(t["key"] == taint["key"] and t["effect"] == taint["effect"] for t in pod["spec"]["tolerations"])
    req = {r["key"]: r["values"] for r in pool["spec"]["template"]["spec"]["requirements"]}
    k = cfg.cluster.targets["eks"]["karpenter"]
    assert req["karpenter.k8s.aws/instance-family"] == k["instance_families"]
    assert req["karpenter.sh/capacity-type"] == k["capacity_types"]
    assert pool["spec"]["disruption"] == {"consolidationPolicy": k["consolidation_policy"], "consolidateAfter": k["consolidate_after"]}
    assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert cls["spec"]["role"] == f"KarpenterNodeRole-{k['cluster_name']}"
    assert not _kind(_objs(cfg, "hyperpod"), "NodePool")        # HyperPod nodes are not Karpenter's


def test_every_rendered_object_passes_strict_validation_with_crd_schemas(cfg, tmp_path):
    files, count = [], 0
    for target in ("hyperpod", "eks"):
        for mode in (None, "keda", "hpa"):
            for monitor in ("podmonitor", "servicemonitor"):
                objs = _objs(_with(monitoring={"monitor": monitor}), target, 2, mode)
                count += len(objs)
                f = tmp_path / f"{target}-{mode}-{monitor}.yaml"
                f.write_text(to_yaml(objs))
                files.append(f)
    r = run_validate(files)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARN" not in r.stdout, r.stdout                 # no kind went unchecked for want of a schema
    assert r.stdout.count(" passed for resource ") == count
    for kind in ("podmonitor", "servicemonitor", "scaledobject", "horizontalpodautoscaler", "configmap", "nodepool",
                 "ec2nodeclass"):
        assert f"resource {kind}/" in r.stdout


@pytest.mark.parametrize("kind,path,value", [
    ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "pathh"), "/metrics"),
    ("ScaledObject", ("spec", "triggers", 0, "metadata", "threshold"), 5),           # must be a string
    ("NodePool", ("spec", "disruption", "consolidationPolicy"), "Sometimes"),       # enum
    ("EC2NodeClass", ("spec", "blockDeviceMappings", 0, "ebs", "volumeType"), "gp9"),
])
def test_vendored_schemas_reject_what_the_api_server_would(cfg, tmp_path, kind, path, value):
    objs = _objs(cfg, "eks", 1, "keda")
    obj = copy.deepcopy(_kind(objs, kind)[0])
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    f = tmp_path / "bad.yaml"
    f.write_text(to_yaml([obj]))
    r = run_validate([f])
    assert r.returncode != 0 and f"did not validate for resource {kind.lower()}/" in r.stdout, r.stdout


def test_vendored_schemas_are_pinned_and_named_as_the_validator_expects():
    crds = vendored()
    assert {(c["kind"], c["apiVersion"]) for c in crds} >= {
        ("PodMonitor", "monitoring.coreos.com/v1"), ("ServiceMonitor", "monitoring.coreos.com/v1"),
        ("ScaledObject", "keda.sh/v1alpha1"), ("NodePool", "karpenter.sh/v1"), ("EC2NodeClass", "karpenter.k8s.aws/v1")}
    for c in crds:
        assert (ROOT / "cluster/schemas" / file_name(c["kind"], c["apiVersion"])).exists()
        assert len(c["source"].split("(")[1].split(")")[0]) == 40          # a commit, not a branch


def test_autoscale_errors_are_one_clear_line(cfg):
    with pytest.raises(RolloutError, match="choose keda or hpa"):
        make_plan(cfg, "local", 1, autoscale="keda")
    with pytest.raises(RolloutError, match="choose keda or hpa"):
        make_plan(cfg, "eks", 1, image=IMAGE, autoscale="vpa")
    with pytest.raises(ConfigError, match="min_replicas <= max_replicas"):
        _with(autoscale={"max_replicas": 0})
    with pytest.raises(ConfigError, match="cluster.monitoring.monitor"):
        _with(monitoring={"monitor": "prometheus"})


def test_desired_replicas_is_what_keda_and_the_hpa_compute():
    assert autoscale.desired_replicas(0, 5, 1, 4) == 1
    assert autoscale.desired_replicas(5, 5, 1, 4) == 1
    assert autoscale.desired_replicas(6, 5, 1, 4) == 2
    assert autoscale.desired_replicas(100, 5, 1, 4) == 4


def test_committed_dashboard_is_generated_from_its_spec():
    assert dashboard.JSON_PATH.read_text() == dashboard.render_json(dashboard.load_spec()), \
        "run `python -m minibuild.cluster.dashboard --write`"
    d = json.loads(dashboard.JSON_PATH.read_text())
    titles = [p["title"] for p in d["panels"] if p["type"] != "row"]
    for want in ("Output tokens/s", "Prompt tokens/s", "Time to first token", "Inter-token latency",
                 "End-to-end request latency", "Running requests", "Waiting requests", "KV-cache usage",
                 "Prefix-cache hit rate", "Preemptions/s"):
        for half in (" - total", " - per replica"):
            assert any(t.startswith(want) and t.endswith(half) for t in titles), want + half
    assert any(t.startswith("Router requests/s") for t in titles)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_file_sd_entries_name_replica_and_deployment():
    from minibuild.cluster.monitoring import file_sd

    parts = [{"name": "m-r1", "app": "m", "url": "http://10.0.0.5:8001"},
             {"name": "m-router", "app": "m-router", "url": "http://10.0.0.6:29000/metrics"}]
    sd = file_sd(parts, "slurm", "/metrics")
    assert sd[0] == {"targets": ["10.0.0.5:8001"], "labels": {"app": "m", "instance": "m-r1@10.0.0.5:8001",
                                                             "mini_vllm_target": "slurm", "__metrics_path__": "/metrics"}}
    assert sd[1]["targets"] == ["10.0.0.6:29000"] and sd[1]["labels"]["__metrics_path__"] == "/metrics"
