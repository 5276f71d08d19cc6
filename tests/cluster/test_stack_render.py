"""The Kubernetes stack - model replicas (+ storage for N pods), vllm-router with its RBAC, the LiteLLM
gateway: every target x replicas x router policy passes `kubernetes-validate --strict`, and the whole set
is applied and deleted through the real kubernetes client against the API emulator (kube_emulator.py;
no real API server runs here, so RBAC itself and the router's pod watch are not exercised).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from kube_emulator import KubeEmulator
from minibuild.cluster import rollout, status
from minibuild.cluster.crd_schemas import run_validate
from minibuild.cluster.render import to_yaml
from minibuild.cluster.render_stack import render_stack
from minibuild.cluster.settings import RolloutError, make_plan
from minibuild.cluster.stack import with_stack
from minibuild.config import parse_config, read_document

ROOT = Path(__file__).resolve().parents[2]
REG = "972488948509.dkr.ecr.eu-west-2.amazonaws.com/engineering/inference/mini-vllm-"
IMAGE, ROUTER, GATEWAY = (f"{REG}{s}@sha256:{h * 32}" for s, h in (("server", "ab"), ("router", "cd"), ("gateway", "ef")))
POLICIES = ("cache_aware", "consistent_hash", "power_of_two", "round_robin", "random")


def config(router_image=ROUTER, **eks_volume):
    doc = read_document(ROOT / "build_config.yaml")
    for t in ("hyperpod", "eks"):
        doc["cluster"]["targets"][t].update(poll_s=0.02, wait_timeout_s=10)
    doc["cluster"]["targets"]["eks"]["model_volume"].update(eks_volume)
    env = {**os.environ, "MINI_VLLM_IMAGE_ROUTER": router_image, "MINI_VLLM_IMAGE_GATEWAY": GATEWAY}
    return parse_config(doc, ROOT, env)


@pytest.fixture()
def cfg():
    return config()


def plan(cfg, target, replicas=1, router=None, gateway=None, tp=1):
    return with_stack(cfg, make_plan(cfg, target, tp, image=IMAGE), replicas, router, gateway)


def by(objs, kind, name=None):
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def test_every_target_replicas_policy_passes_strict_validation(cfg, tmp_path):
    files, count = [], 0
    for target in ("hyperpod", "eks"):
        for replicas in (1, 3):
            for policy in (None, *POLICIES):
                objs = render_stack(cfg, plan(cfg, target, replicas, policy, "litellm" if policy else None))
                f = tmp_path / f"{target}-{replicas}-{policy}.yaml"
                f.write_text(to_yaml(objs))
                files.append(str(f))
                count += len(objs)
    r = run_validate(files)   # kubernetes-validate --strict, with the vendored CRD schemas (PodMonitor, NodePool)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARN" not in r.stdout and r.stdout.count(" passed for resource ") == count, r.stdout


@pytest.mark.parametrize("policy", POLICIES)
def test_router_discovers_model_pods_by_label_with_read_only_rbac(cfg, policy):
    objs = render_stack(cfg, plan(cfg, "hyperpod", 3, policy))
    name, ns = "mini-vllm-gpt-oss-20b-router", "hyperpod-ns-inference"
    role = by(objs, "Role", name)[0]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = by(objs, "RoleBinding", name)[0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
    assert binding["roleRef"]["name"] == name and by(objs, "ServiceAccount", name)
    dep = by(objs, "Deployment", name)[0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["serviceAccountName"] == name and c["image"] == ROUTER
    cmd = c["command"]
    assert cmd[:3] == ["python3", "-m", "vllm_router.launch_router"]
    assert cmd[cmd.index("--policy") + 1] == policy
    assert cmd[cmd.index("--selector") + 1] == "app=mini-vllm-gpt-oss-20b"
    assert cmd[cmd.index("--service-discovery-namespace") + 1] == ns
    assert cmd[cmd.index("--service-discovery-port") + 1] == "8000" and "--worker-urls" not in cmd
    assert c["readinessProbe"]["httpGet"]["path"] == "/readiness"
    svc = by(objs, "Service", name)[0]
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8080, "metrics": 29000}
    model = by(objs, "Deployment", "mini-vllm-gpt-oss-20b")[0]
    assert model["spec"]["replicas"] == 3
    assert model["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert "kueue.x-k8s.io/queue-name" in model["metadata"]["labels"]
    assert "kueue.x-k8s.io/queue-name" not in dep["metadata"]["labels"]   # CPU only: not queued for GPUs
    # HyperPod: the S3 claim is shared by all replicas as it is
    vol = next(v for v in model["spec"]["template"]["spec"]["volumes"] if v["name"] == "model")
    assert vol["persistentVolumeClaim"]["claimName"] == "inference-pvc"


def test_eks_replicas_storage_modes(cfg):
    one = render_stack(cfg, plan(cfg, "eks", 1))
    assert by(one, "PersistentVolumeClaim")[0]["spec"]["accessModes"] == ["ReadWriteOnce"] and by(one, "Deployment")
    per_pod = render_stack(cfg, plan(cfg, "eks", 3))
    assert not by(per_pod, "PersistentVolumeClaim") and not by(per_pod, "Deployment")
    sts = by(per_pod, "StatefulSet")[0]
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["serviceName"] == "mini-vllm-gpt-oss-20b"
    tpl = sts["spec"]["volumeClaimTemplates"][0]
    assert tpl["metadata"]["name"] == "model" and tpl["spec"]["resources"]["requests"]["storage"] == "900Gi"
    assert tpl["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert all(v["name"] != "model" for v in sts["spec"]["template"]["spec"]["volumes"])
    assert any(m["name"] == "model" for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"])
    cfg = config(replicas_mode="shared")
    shared = render_stack(cfg, plan(cfg, "eks", 3))
    pvc = by(shared, "PersistentVolumeClaim")[0]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"] == "efs-sc"
    dep = by(shared, "Deployment")[0]
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "model")
    assert vol["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_gateway_config_points_at_router_or_service_and_holds_no_secret(cfg):
    for router, base in (("round_robin", "http://mini-vllm-gpt-oss-20b-router:8080/v1"),
                         (None, "http://mini-vllm-gpt-oss-20b:8000/v1")):
        objs = render_stack(cfg, plan(cfg, "eks", 2, router, "litellm"))
        conf = yaml.safe_load(by(objs, "ConfigMap")[0]["data"]["config.yaml"])
        assert conf["model_list"] == [{"model_name": "gpt-oss-20b", "litellm_params": {
            "model": "hosted_vllm/gpt-oss-20b", "api_base": base, "api_key": "os.environ/MINI_VLLM_API_KEY"}}]
        assert conf["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
        c = by(objs, "Deployment", "mini-vllm-gpt-oss-20b-gateway")[0]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        assert env["LITELLM_MASTER_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "litellm-master-key", "key": "master-key"}
        assert c["image"] == GATEWAY and "sk-" not in to_yaml(objs)


def test_router_image_must_be_pinned():
    cfg = config(router_image=f"{REG}router:latest")
    with pytest.raises(RolloutError, match="not pinned by digest"):
        render_stack(cfg, plan(cfg, "hyperpod", 2, "random"))
    with pytest.raises(RolloutError, match="unknown router policy"):
        plan(cfg, "hyperpod", 2, "least_loaded")
    with pytest.raises(RolloutError, match="at least one replica"):
        plan(cfg, "hyperpod", 0)


@pytest.mark.parametrize("target", ["hyperpod", "eks"])
def test_apply_wait_status_and_delete_the_whole_set(cfg, tmp_path, monkeypatch, capsys, target):
    ns = cfg.cluster.targets[target]["namespace"]
    with KubeEmulator() as emu:
        monkeypatch.setenv("KUBECONFIG", str(emu.kubeconfig(tmp_path / "kubeconfig")))

        def controllers(e: KubeEmulator) -> None:   # everything rolls out at the first poll
            for plural in ("deployments", "statefulsets"):
                for (p, n, obj_name), obj in list(e.objects.items()):
                    if p == plural and n == ns:
                        want = obj["spec"]["replicas"]
                        obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "replicas": want,
                                         "updatedReplicas": want, "readyReplicas": want, "availableReplicas": want}
                        for i in range(want):
                            e.put("pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {
                                "name": f"{obj_name}-{i}", "namespace": ns, "labels": {"app": obj_name}},
                                "spec": {"nodeName": f"node-{i}"}, "status": {
                                "phase": "Running", "podIP": f"10.0.0.{i + 1}",
                                "conditions": [{"type": "Ready", "status": "True"}]}})
        emu.on_poll = controllers
        assert rollout(cfg, target=target, image=IMAGE, replicas=3, router="cache_aware", gateway="litellm")
        kinds = sorted({p for (p, n, _) in emu.objects if n == ns and p != "pods"})
        want = {"configmaps", "deployments", "rolebindings", "roles", "serviceaccounts", "services"}
        want |= {"statefulsets"} if target == "eks" else set()
        assert want <= set(kinds), kinds          # (+ what obs renders beside the server: PodMonitor, ...)
        err = capsys.readouterr().err
        assert "router mini-vllm-gpt-oss-20b-router: ready" in err and "gateway mini-vllm-gpt-oss-20b-gateway: ready" in err
        status(cfg, target=target, as_json=True)
        listed = json.loads(capsys.readouterr().out)
        assert [e["role"] for e in listed] == ["replica"] * 3 + ["router", "gateway"]
        assert all(e["ready"] and e["url"].startswith("http://10.0.0.") for e in listed)
        assert rollout(cfg, target=target, delete=True)
        left = sorted(k for k in emu.objects if k[0] != "pods" and k[1] == ns)
        assert left == [], left     # eks per_pod: the caches are the StatefulSet's claims, not objects of ours


def test_slurm_router_job_script(tmp_path):
    from minibuild.cluster.slurm_stack import render_router

    tools = tmp_path / "tools/vllm-router/bin"
    tools.mkdir(parents=True)
    (tools / "vllm-router").write_text("")
    cfg = parse_config(read_document(ROOT / "build_config.yaml"), ROOT,
                       {**os.environ, "MINI_VLLM_TOOLS_DIR": str(tmp_path / "tools")})
    p = with_stack(cfg, make_plan(cfg, "slurm", 1), 2, "consistent_hash")
    text = render_router(cfg, p, ["http://node1:8000", "http://node2:8001"], str(tmp_path / "r-%j.out"))
    assert "#SBATCH --job-name=mini-vllm-gpt-oss-20b-router\n" in text and "--gres" not in text
    assert f"exec {tools / 'vllm-router'} --host 0.0.0.0 --port 8080 --policy consistent_hash" in text
    assert "--worker-urls http://node1:8000 http://node2:8001" in text and "--health-check-interval-secs 1" in text
    r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr
