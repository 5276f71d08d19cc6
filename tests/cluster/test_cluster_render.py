"""Rendering for every target x TP variant; Kubernetes objects pass `kubernetes-validate --strict`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from minibuild.cluster.render import render_kubernetes, render_slurm, to_yaml
from minibuild.cluster.settings import RolloutError, make_plan
from minibuild.config import load_config

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "972488948509.dkr.ecr.eu-west-2.amazonaws.com/engineering/inference/mini-vllm-server@sha256:" + "ab" * 32
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
TPS = (1, 2, 8)


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "build_config.yaml")


def _deployment(objs):
    return next(o for o in objs if o["kind"] == "Deployment")


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("target", ["hyperpod", "eks"])
def test_kubernetes_objects(cfg, target, tp):
    objs = render_kubernetes(cfg, make_plan(cfg, target, tp, image=IMAGE))
    dep = _deployment(objs)
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["image"] == IMAGE
    assert c["resources"]["limits"]["nvidia.com/gpu"] == tp
    assert c["command"][c["command"].index("--tensor-parallel-size") + 1] == str(tp)
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["spec"]["progressDeadlineSeconds"] > c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 20 * 60
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    shm = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
    assert (shm[0]["emptyDir"]["medium"] == "Memory") if tp > 1 else not shm
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert set(secret_env) == {"HF_TOKEN", "MINI_VLLM_API_KEY"} and all(r["optional"] for r in secret_env.values())
    for name, value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
        assert {"name": name, "value": value} in c["env"]
    svc = next(o for o in objs if o["kind"] == "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"] == {"app": f"mini-vllm-gptoss-tp{tp}"}
    if target == "hyperpod":
        q = "hyperpod-ns-inference-localqueue"
        assert dep["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == q
        assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == q
        assert pod["spec"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "ml.p5.48xlarge"}
        model = next(v for v in pod["spec"]["volumes"] if v["name"] == "model")
        assert model["persistentVolumeClaim"] == {"claimName": "inference-pvc", "readOnly": True}
        assert "/mnt/s3/inference/models/gpt-oss-20b" in c["command"]
        assert dep["metadata"]["namespace"] == "hyperpod-ns-inference"
    else:
        assert "kueue.x-k8s.io/queue-name" not in dep["metadata"]["labels"]
        assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert "karpenter.sh/nodepool" in pod["spec"]["nodeSelector"]
        assert any(o["kind"] == "PersistentVolumeClaim" for o in objs)
    assert to_yaml(objs) == to_yaml(render_kubernetes(cfg, make_plan(cfg, target, tp, image=IMAGE)))


def test_priority_class_label(cfg):
    cfg = json.loads(json.dumps(cfg))
    cfg["cluster"]["targets"]["hyperpod"]["priority_class"] = "inference-high"
    dep = _deployment(render_kubernetes(cfg, make_plan(cfg, "hyperpod", 2, image=IMAGE)))
    assert dep["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "inference-high"


def test_all_manifests_pass_strict_schema_validation(cfg, tmp_path):
    files = []
    for target in ("hyperpod", "eks"):
        for tp in TPS:
            f = tmp_path / f"{target}-tp{tp}.yaml"
            f.write_text(to_yaml(render_kubernetes(cfg, make_plan(cfg, target, tp, image=IMAGE))))
            files.append(str(f))
    r = subprocess.run([str(VALIDATE), "--strict", *files], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" passed for resource ") == 2 * 3 + 3 * 3, r.stdout   # hyperpod: svc+dep; eks: pvc+svc+dep
    # The validator does reject what the API server would: an unknown field in a container.
    bad = yaml.safe_load_all(Path(files[0]).read_text())
    bad = list(bad)
    _deployment(bad)["spec"]["template"]["spec"]["containers"][0]["gpus"] = 2
    (tmp_path / "bad.yaml").write_text(to_yaml(bad))
    r = subprocess.run([str(VALIDATE), "--strict", str(tmp_path / "bad.yaml")], capture_output=True, text=True)
    assert r.returncode != 0 and "gpus" in r.stdout + r.stderr


@pytest.mark.parametrize("tp", TPS)
def test_slurm_script(cfg, tp, tmp_path):
    plan = make_plan(cfg, "slurm", tp)
    text = render_slurm(cfg, plan, tmp_path / "out.log", "/opt/venv/bin/python")
    assert f"#SBATCH --gres=gpu:{tp}\n" in text
    assert f"#SBATCH --job-name=mini-vllm-gptoss-tp{tp}\n" in text
    assert f"--tensor-parallel-size {tp} " in text and "/opt/models/gpt-oss-20b" in text
    assert f"#SBATCH --output={tmp_path / 'out.log'}" in text
    r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("tp", TPS)
def test_local_plan(cfg, tp):
    plan = make_plan(cfg, "local", tp)
    assert plan.model_path.endswith("build/models/tiny-gpt-oss") and plan.tp == tp and plan.image is None


def test_refuses_tag_only_image(cfg):
    with pytest.raises(RolloutError, match="not pinned by digest"):
        make_plan(cfg, "hyperpod", 2, image="972488948509.dkr.ecr.eu-west-2.amazonaws.com/x:latest")


def test_bare_digest_means_the_default_registry(cfg):
    plan = make_plan(cfg, "hyperpod", 1, image="sha256:" + "ef" * 32)
    assert plan.image == ("972488948509.dkr.ecr.eu-west-2.amazonaws.com/engineering/inference/mini-vllm-server@sha256:"
                          + "ef" * 32)
    with pytest.raises(RolloutError, match="not pinned by digest"):
        make_plan(cfg, "hyperpod", 1, image="sha256:short")


def test_image_from_build_record(cfg, tmp_path):
    cfg = dict(cfg, _root=str(tmp_path))
    with pytest.raises(RolloutError, match="no image"):
        make_plan(cfg, "eks", 1)
    rec = tmp_path / "build/images/server.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"stage": "server", "digest": "sha256:" + "cd" * 32, "reference": None}))
    with pytest.raises(RolloutError, match="not pushed"):
        make_plan(cfg, "eks", 1)
    rec.write_text(json.dumps({"stage": "server", "digest": "sha256:" + "cd" * 32, "reference": IMAGE}))
    assert make_plan(cfg, "eks", 1).image == IMAGE


def test_unknown_target_and_variant(cfg):
    with pytest.raises(RolloutError, match="unknown target"):
        make_plan(cfg, "gke", 1)
    with pytest.raises(RolloutError, match="no TP variant 3"):
        make_plan(cfg, "local", 3)
