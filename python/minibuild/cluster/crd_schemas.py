"""Validate custom resources (PodMonitor, ServiceMonitor, ScaledObject, NodePool, EC2NodeClass) with the
real, unmodified `kubernetes-validate --strict`, using CRD schemas vendored as data in cluster/schemas/.

Why this shape: kubernetes-validate has no option for extra schemas - it reads
`kubernetes-json-schema/v<version>-local[-strict]/<kind>-<group>-<version>.json` from its own package
through importlib.resources, and only warns ("couldn't find schema") for a kind it lacks, which
would let any typo in a CRD object pass. So `overlay()` builds, in a scratch directory, a package
`kubernetes_validate` whose files link to the installed ones and whose newest schema directories
also hold our CRD schemas; running the tool with that directory first on PYTHONPATH validates CRD
objects exactly as it validates built-in kinds (Draft 2020-12, `metadata` against Kubernetes'
ObjectMeta, unknown fields rejected under --strict).

The vendored files are each CRD's `openAPIV3Schema` (descriptions dropped) with its source pin;
`to_json_schema` turns one into the validator's format: `nullable` -> a null type,
`x-kubernetes-int-or-string` -> integer or string, and under strict every object with declared
properties (and without `x-kubernetes-preserve-unknown-fields`) gets `additionalProperties: false`,
which is what the API server's structural-schema pruning makes of an unknown field. CEL rules
(`x-kubernetes-validations`) are not evaluated. Regenerate with
`python -m minibuild.cluster.crd_schemas vendor CRD.yaml... --source "repo@tag commit"`.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "cluster" / "schemas"
OBJECT_META = "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def file_name(kind: str, api_version: str) -> str:
    """kubernetes-validate's file naming: monitoring.coreos.com/v1 PodMonitor -> podmonitor-monitoring-v1.json."""
    group, _, version = api_version.rpartition("/")
    return f"{kind.lower()}-{group.split('.')[0]}-{version}.json" if group else f"{kind.lower()}-{version}.json"


def _convert(node: Any, strict: bool) -> Any:
    if isinstance(node, list):
        return [_convert(x, strict) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _convert(v, strict) for k, v in node.items()
           if k not in ("description", "nullable", "x-kubernetes-int-or-string") and not k.startswith("x-kubernetes-")}
    if "properties" in node and isinstance(node["properties"], dict):
        out["properties"] = {k: _convert(v, strict) for k, v in node["properties"].items()}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.pop("anyOf", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    if (strict and out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def to_json_schema(vendored: dict[str, Any], strict: bool) -> dict[str, Any]:
    """A vendored CRD version (apiVersion, kind, openAPIV3Schema) as a kubernetes-validate schema."""
    schema = _convert(copy.deepcopy(vendored["openAPIV3Schema"]), strict)
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "enum": [vendored["apiVersion"]]}
    props["kind"] = {"type": "string", "enum": [vendored["kind"]]}
    props["metadata"] = {"$ref": OBJECT_META}
    schema["required"] = sorted(set(schema.get("required") or []) | {"apiVersion", "kind", "metadata"})
    schema["type"] = "object"
    if strict:
        schema["additionalProperties"] = False
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    # the id makes the ObjectMeta reference resolve against the tool's _definitions.json, as its own schemas do
    schema["$id"] = f"https://kubernetes.io/api/{vendored['kind'].lower()}/{vendored['apiVersion']}"
    return schema


def vendored() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(SCHEMA_DIR.glob("*.json"))]


def _installed() -> Path:
    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None or not spec.origin:
        raise RuntimeError("kubernetes-validate is not installed (it is in the `test` extra: pip install -e .[test])")
    return Path(spec.origin).parent


def overlay(dest: Path) -> Path:
    """Build the overlay package under dest; returns the directory to put first on PYTHONPATH."""
    src = _installed()
    pkg = dest / "kubernetes_validate"
    pkg.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name not in ("kubernetes-json-schema", "__pycache__"):
            (pkg / entry.name).symlink_to(entry)
    schemas = pkg / "kubernetes-json-schema"
    schemas.mkdir()
    dirs = sorted((d for d in (src / "kubernetes-json-schema").iterdir() if d.is_dir()),
                  key=lambda d: [int(x) for x in d.name[1:].split("-")[0].split(".")])
    newest = dirs[-1].name.split("-")[0]
    crds = vendored()
    for d in dirs:
        if not d.name.startswith(newest + "-"):
            (schemas / d.name).symlink_to(d)
            continue
        mine = schemas / d.name
        mine.mkdir()
        for f in d.iterdir():
            (mine / f.name).symlink_to(f)
        for crd in crds:
            schema = to_json_schema(crd, strict=d.name.endswith("-strict"))
            (mine / file_name(crd["kind"], crd["apiVersion"])).write_text(json.dumps(schema))
    return dest


def run_validate(files: list[str | Path], strict: bool = True, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`kubernetes-validate [--strict] FILE...` with the CRD schemas available; output captured."""
    with tempfile.TemporaryDirectory(prefix="kv-overlay-") as tmp:
        path = overlay(Path(tmp))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(path), os.environ.get("PYTHONPATH")) if p))
        argv = [sys.executable, "-m", "kubernetes_validate", *(["--strict"] if strict else []), *extra, *map(str, files)]
        return subprocess.run(argv, capture_output=True, text=True, env=env)


def vendor(crd_files: list[Path], source: str, out: Path = SCHEMA_DIR) -> list[Path]:
    """Write each served version of each CRD as cluster/schemas/<kind>-<group>-<version>.json."""
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for f in crd_files:
        for crd in (d for d in yaml.safe_load_all(f.read_text()) if d and d.get("kind") == "CustomResourceDefinition"):
            spec = crd["spec"]
            for v in spec["versions"]:
                if not v.get("served", True):
                    continue
                api_version = f"{spec['group']}/{v['name']}"
                data = {"apiVersion": api_version, "kind": spec["names"]["kind"], "crd": crd["metadata"]["name"],
                        "source": f"{source} {f.name}",
                        "openAPIV3Schema": _strip(v["schema"]["openAPIV3Schema"])}
                p = out / file_name(data["kind"], api_version)
                p.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
                written.append(p)
    return written


def _strip(node: Any) -> Any:
    """Drop descriptions (most of a CRD's bytes); keep everything that constrains a value."""
    if isinstance(node, list):
        return [_strip(x) for x in node]
    if isinstance(node, dict):
        return {k: (_strip(v) if k != "properties" else {pk: _strip(pv) for pk, pv in v.items()})
                for k, v in node.items() if k != "description"}
    return node


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minibuild.cluster.crd_schemas", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="kubernetes-validate --strict with the vendored CRD schemas")
    v.add_argument("files", nargs="+")
    g = sub.add_parser("vendor", help="(re)write cluster/schemas/ from CRD YAML files")
    g.add_argument("crds", nargs="+", type=Path)
    g.add_argument("--source", required=True, help='where the CRDs came from, e.g. "kedacore/keda v2.20.2 <commit>"')
    a = ap.parse_args(argv)
    if a.cmd == "vendor":
        for p in vendor(a.crds, a.source):
            print(p)
        return 0
    r = run_validate(a.files)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.returncode


if __name__ == "__main__":
    raise SystemExit(main())
