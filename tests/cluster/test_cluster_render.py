"""Rendering for every target x TP variant; Kubernetes objects pass `kubernetes-validate --strict`."""
from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from minibuild.cluster.batch import batch_args
from minibuild.cluster.crd_schemas import run_validate
from minibuild.cluster.render import render_kubernetes, render_slurm, server_args, to_yaml
from minibuild.cluster.settings import RolloutError, choose_port, make_plan, reserved_ports
from minibuild.cluster.slurm import job_script
from minibuild.cluster.slurm_runtime import choose, pyxis_uri
from minibuild.config import load_config, parse_config, read_document

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "972488948509.dkr.ecr.eu-west-2.amazonaws.com/engineering/inference/mini-vllm-server@sha256:" + "ab" * 32
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
TPS = (1, 2, 8)


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "build_config.yaml")


def _edited(edit):
    """The checkout's config with `edit(doc)` applied to its YAML data."""
    doc = read_document(ROOT / "build_config.yaml")
    edit(doc)
    return parse_config(doc, ROOT)


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
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"] == {"app": "mini-vllm-gpt-oss-20b"}
    assert dep["metadata"]["annotations"]["mini-vllm/served-model-name"] == "gpt-oss-20b"
    assert pod["metadata"]["labels"]["mini-vllm/model"] == "gpt-oss-20b"
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
    cfg = _edited(lambda d: d["cluster"]["targets"]["hyperpod"].update(priority_class="inference-high"))
    dep = _deployment(render_kubernetes(cfg, make_plan(cfg, "hyperpod", 2, image=IMAGE)))
    assert dep["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "inference-high"


def test_all_manifests_pass_strict_schema_validation(cfg, tmp_path):
    files, count = [], 0
    for target in ("hyperpod", "eks"):
        for tp in TPS:
            f = tmp_path / f"{target}-tp{tp}.yaml"
            objs = render_kubernetes(cfg, make_plan(cfg, target, tp, image=IMAGE))
            count += len(objs)
            f.write_text(to_yaml(objs))
            files.append(str(f))
    r = run_validate(files)   # kubernetes-validate --strict, with the vendored CRD schemas (PodMonitor, NodePool)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARN" not in r.stdout and r.stdout.count(" passed for resource ") == count, r.stdout
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
    text, runtime = job_script(cfg, plan, "serve", server_args(plan), tmp_path / "out.log", [(plan.model_path, True)])
    assert runtime.name == "venv"          # no pyxis here: the checkout's environment, said why
    assert f"#SBATCH --gres=gpu:{tp}\n" in text and f"#SBATCH --cpus-per-task={8 * tp}\n" in text
    assert "#SBATCH --job-name=mini-vllm-gpt-oss-20b\n" in text
    assert "#SBATCH --comment=mini-vllm:serve:gpt-oss-20b\n" in text
    assert f"--tensor-parallel-size {tp} " in text and "/opt/models/gpt-oss-20b" in text
    assert "--served-model-name gpt-oss-20b" in text and "-m mini_vllm.cli serve" in text
    assert f"#SBATCH --output={tmp_path / 'out.log'}" in text
    assert "--mem" not in text and "--time" not in text and "--partition" not in text   # null: not set
    r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr


def test_two_models_get_their_own_names_and_resources(cfg, tmp_path):
    cfg = _edited(lambda d: d["cluster"]["targets"]["slurm"].update(partition="gpu", account="ml", qos="high",
                                                                    time_limit="1-00:00:00"))
    small = make_plan(cfg, "slurm", 1, model="/opt/models/gpt-oss-20b")
    big = make_plan(cfg, "slurm", 2, model="/opt/models/gpt-oss-120b")
    named = make_plan(cfg, "slurm", 1, model="/opt/models/x", served_name="openai/gpt-oss-20b")
    assert (small.name, big.name, named.name) == ("mini-vllm-gpt-oss-20b", "mini-vllm-gpt-oss-120b",
                                                  "mini-vllm-openai-gpt-oss-20b")
    assert named.served_name == "openai/gpt-oss-20b"
    text = render_slurm(cfg, big, tmp_path / "o", "true", "venv", values={"runtime_reason": "test"})
    for line in ("--partition=gpu", "--account=ml", "--qos=high", "--time=1-00:00:00",
                 "--mem=400G", "--cpus-per-task=16", "--gres=gpu:2"):     # gpt-oss-120b: cluster.models overrides
        assert f"#SBATCH {line}\n" in text
    assert "--mem" not in render_slurm(cfg, small, tmp_path / "o", "true", "venv", values={"runtime_reason": "t"})
    with pytest.raises(RolloutError, match="has spaces"):
        make_plan(cfg, "slurm", 1, served_name="my model")
    long = make_plan(cfg, "local", 1, served_name="a" * 80)
    assert len(long.name) <= 63 and long.name != make_plan(cfg, "local", 1, served_name="a" * 81).name


def test_ports_are_allocated_without_clashes(cfg):
    plan = make_plan(cfg, "slurm", 1, served_name="b")
    assert choose_port(plan, None, {}) == 8000
    assert choose_port(plan, None, {8000: "mini-vllm-a", 8001: "mini-vllm-c"}) == 8002
    assert choose_port(plan, 8005, {8000: "mini-vllm-a"}) == 8005          # keeps its own on a re-rollout
    cfg = _edited(lambda d: d["cluster"].update(models={"a": {"port": 8000}, "b": {"port": 9001}}))
    assert choose_port(make_plan(cfg, "slurm", 1, served_name="c"), None, {}, reserved_ports(cfg, "c")) == 8001
    fixed = make_plan(cfg, "slurm", 1, served_name="b")
    assert fixed.port_fixed and choose_port(fixed, None, {}) == 9001
    with pytest.raises(RolloutError, match="held by mini-vllm-x"):
        choose_port(fixed, None, {9001: "mini-vllm-x"})
    assert make_plan(cfg, "hyperpod", 1, served_name="b", image=IMAGE).port == 8000   # pods: one port for all


def test_runtime_choice():
    img = "972488948509.dkr.ecr.eu-west-2.amazonaws.com/engineering/inference/mini-vllm-server@sha256:" + "ab" * 32
    pyxis_help = "  --container-image=[USER@][REGISTRY#]IMAGE[:TAG]|PATH\n"
    assert choose("auto", img, "", pyxis_help).name == "pyxis"
    assert choose("auto", img, "", "usage: srun [OPTIONS]").name == "venv"
    assert "fallback: not pushed" in choose("auto", None, "not pushed", pyxis_help).reason
    assert choose("apptainer", img, "", "").name == "apptainer" and choose("venv", img, "", pyxis_help).image is None
    with pytest.raises(RolloutError, match="needs the server image"):
        choose("podman", None, "no build/images/server.json", "")
    with pytest.raises(RolloutError, match="choose one of"):
        choose("docker", img, "", "")
    assert pyxis_uri(img) == img.replace(".com/", ".com#", 1)
    assert pyxis_uri("localhost:5000/mini-vllm-server@sha256:" + "ab" * 32).startswith("localhost:5000#")
    assert pyxis_uri("library/ubuntu@sha256:" + "ab" * 32) == "library/ubuntu@sha256:" + "ab" * 32


@pytest.mark.parametrize("name", ["pyxis", "apptainer", "podman"])
def test_container_scripts(cfg, name, tmp_path):
    cfg = _edited(lambda d: d["cluster"]["targets"]["slurm"].update(runtime=name))
    plan = make_plan(cfg, "slurm", 2, image=IMAGE)
    text, runtime = job_script(cfg, plan, "serve", server_args(plan), tmp_path / "out.log", [(plan.model_path, True)])
    assert runtime.name == name and runtime.image == IMAGE
    launch = next(line for line in text.splitlines() if line.startswith("exec "))
    assert "serve /opt/models/gpt-oss-20b --host 0.0.0.0" in launch and "PYTHONPATH" not in text   # the image's code
    want = {"pyxis": f"srun --container-image={shlex.quote(pyxis_uri(IMAGE))} --container-mounts=/opt/models/gpt-oss-20b:/opt/models/gpt-oss-20b:ro",
            "apptainer": f"apptainer exec --nv --bind /opt/models/gpt-oss-20b:/opt/models/gpt-oss-20b:ro docker://{IMAGE}",
            "podman": "-v /opt/models/gpt-oss-20b:/opt/models/gpt-oss-20b:ro"}[name]
    assert want in launch, launch
    if name == "podman":
        assert "-e CUDA_VISIBLE_DEVICES" in launch and "-e MINI_VLLM_API_KEY" in launch and f"--entrypoint mini-vllm {IMAGE} serve" in launch
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
    cfg = dataclasses.replace(cfg, root=tmp_path)
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


def test_batch_job_script_mounts_its_files(cfg, tmp_path):
    cfg = _edited(lambda d: d["cluster"]["targets"]["slurm"].update(runtime="pyxis"))
    plan = make_plan(cfg, "slurm", 1, image=IMAGE)
    src, dst = Path("/data/in/requests.jsonl"), Path("/data/out/results.jsonl")
    text, runtime = job_script(cfg, plan, "batch", batch_args(plan, src, dst), tmp_path / "o-%j.out",
                               [(plan.model_path, True), (str(src.parent), True), (str(dst.parent), False)],
                               {"input": str(src), "results": str(dst)})
    assert "#SBATCH --job-name=mini-vllm-gpt-oss-20b-batch\n" in text
    assert "#SBATCH --comment=mini-vllm:batch:gpt-oss-20b\n" in text
    assert "/data/in:/data/in:ro,/data/out:/data/out," in text      # input read-only, results writable
    same, _ = job_script(cfg, plan, "batch", batch_args(plan, src, src.with_name("out.jsonl")), tmp_path / "o",
                         [(plan.model_path, True), ("/data/in", True), ("/data/in", False)], {"input": "", "results": ""})
    assert "--container-mounts=/data/in:/data/in,/opt" in same        # one mount, writable: no duplicate
    assert f"mini-vllm batch /opt/models/gpt-oss-20b --input {src} --output {dst}" in text
    r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("model", ["openai/gpt-oss-20b", "s3://models/inference/gpt-oss-20b"])
def test_eks_fetches_a_remote_model_into_its_cache_volume(cfg, model):
    """EKS (a writable cache claim): a hub id or s3:// model downloads into the claim, so a restarted pod
    starts from the cache; HyperPod's read-only S3 claim and a local path get no --download-dir."""
    objs = render_kubernetes(cfg, make_plan(cfg, "eks", 1, image=IMAGE, model=model))
    c = _deployment(objs)["spec"]["template"]["spec"]["containers"][0]
    cmd = c["command"]
    assert cmd[cmd.index("serve") + 1] == model and cmd[cmd.index("--download-dir") + 1] == "/models"
    assert {"name": "model", "mountPath": "/models", "readOnly": False} in c["volumeMounts"]
    assert cmd[cmd.index("--served-model-name") + 1] == "gpt-oss-20b"
    for plan in (make_plan(cfg, "hyperpod", 1, image=IMAGE, model=model), make_plan(cfg, "eks", 1, image=IMAGE)):
        assert "--download-dir" not in server_args(plan)
