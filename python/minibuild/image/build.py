"""`invoke image`: build stages (essentials -> cuda -> server) into an OCI layout, optionally push.

Why this shape: every layer is a graph task (same store, same keys, same `--explain` as the kernels),
and every stage is a task too whose inputs are its parent's manifest digest, its layers' digests and
its settings. So a Python-only change re-keys the server layer alone; an unchanged checkout hits every
key and does no work ("up to date"); and `--explain` prints which input changed. Results go to
`<out_dir>/oci` (refs = stage names) and `<out_dir>/<stage>.json`, which `invoke rollout` reads.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any


from .. import ui
from ..actions import Input, Task, explain, lookup, run_task
from ..atomic import atomic_write_bytes
from ..config import Config, ConfigError, SourcePin
from ..store import Store
from . import oci
from .layers import WRITER_VERSION, Context, Recipe, recipe_for, torch_version
from .pull import pull_base
from .stages import ImageBuildError, carries_python, load_stages
from .tarlayer import Layer, write_layer

def make_context(cfg: Config, store: Store | None = None, profile: str | None = None) -> Context:
    """The build context of one profile (default: images.profile, environment applied by config)."""
    try:
        prof = cfg.images.select(profile)
    except ConfigError as exc:
        raise ImageBuildError(str(exc)) from None
    store = store or Store.from_config(cfg.store)
    return Context(cfg=cfg, root=cfg.root, store=store, profile_name=prof.name, profile=prof,
                   stat=store.stat_cache, stages=load_stages(cfg.path(cfg.images.stages)),
                   refuse=list(cfg.images.refuse))


def git_revision(root: Path) -> str:
    """HEAD of the checkout, '+dirty' when git's index (what the server layer packs) differs from HEAD
    under python/; 'unknown' outside git."""
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--cached", "--name-only", "--", "python"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def default_tag(root: Path) -> str:
    """The tag pushes get unless --push names one: the first 12 hex of HEAD ('-dirty' as above)."""
    rev = git_revision(root)
    return "latest" if rev == "unknown" else rev[:12] + ("-dirty" if rev.endswith("+dirty") else "")


def source_annotations(sources: Mapping[str, SourcePin]) -> dict[str, str]:
    """io.mini-vllm.source.<name>.commit for every pinned source of build_config `sources:`."""
    return {f"io.mini-vllm.source.{name}.commit": pin.commit for name, pin in sorted(sources.items())}


class StageBuilder:
    """Builds the stages of one profile; remembers results so that a stage's child can use them."""

    def __init__(self, ctx: Context, explain: bool = False, dry_run: bool = False):
        self.ctx, self.icfg, self.explain, self.dry_run = ctx, ctx.cfg.images, explain, dry_run
        self.stages = ctx.stages
        self.built: dict[str, tuple[oci.ImageSpec, oci.BuiltImage, str]] = {}
        self.ran: list[str] = []       # what did real work (layers and stages)
        self.pending: set[str] = set()  # dry run: stages that would be built

    def _layer_task(self, r: Recipe) -> Task:
        common = [Input("config", "source_date_epoch", self.icfg.epoch),
                  Input("config", "gzip_level", self.icfg.gzip_level),
                  Input("toolchain", "layer_writer", WRITER_VERSION)]
        return Task(name=f"image-layer:{self.ctx.profile_name}:{r.name}", kind="layer", inputs=r.inputs + common)

    def _say_why(self, task: Task, what: str) -> None:
        if self.explain:
            for reason in explain(self.ctx.store, task):
                ui.info(f"  {what}: {reason}")

    def layer(self, r: Recipe) -> Layer | None:
        task = self._layer_task(r)
        hit = lookup(self.ctx.store, task)
        if hit is not None:
            return Layer(hit["digest"], hit["size"], hit["diff_id"])
        ui.info(f"layer {r.name}: {'would build' if self.dry_run else 'building'} ({r.created_by})")
        self._say_why(task, f"layer {r.name}")
        if r.note:
            ui.warn(r.note)
        if self.dry_run:
            return None

        def action() -> dict[str, Any]:
            try:
                lay = write_layer(self.ctx.store, r.entries(), mtime=self.icfg.epoch,
                                  level=self.icfg.gzip_level, label=f"layer {r.name}")
            finally:
                if r.cleanup:
                    r.cleanup()
            return {"blobs": [lay.digest], **lay.as_record()}

        rec, ran = run_task(self.ctx.store, task, action)
        if ran:
            self.ran.append(f"layer:{r.name}")
            ui.info(f"layer {r.name}: sha256:{rec['digest'][:12]} ({rec['size'] / 1e6:.1f} MB)")
        return Layer(rec["digest"], rec["size"], rec["diff_id"])

    def stage(self, name: str) -> oci.BuiltImage | None:
        if name in self.built:
            return self.built[name][1]
        sdef = self.stages[name]
        parent = sdef.get("parent")
        pspec: oci.ImageSpec | None = None
        waiting = False                # dry run: the parent would be built; still report our own layers
        if parent:
            if parent in self.pending or self.stage(parent) is None:
                waiting = True
            else:
                pspec = self.built[parent][0]
        base = self.ctx.profile.base
        pulled: tuple[list[Layer], list[str], dict[str, str], str] = ([], [], {}, "")
        recipes = []
        for lspec in sdef.get("layers") or []:
            if lspec["kind"] == "base" and base.kind == "registry":
                pulled = pull_base(self.ctx.store, self.ctx.path(base.lock))
            else:
                r = recipe_for(self.ctx, lspec)
                if r is not None:      # a wheels layer that selects nothing in this profile's lock
                    recipes.append(r)
        layers = [self.layer(r) for r in recipes]
        if waiting or any(lay is None for lay in layers):
            self.pending.add(name)
            return None
        spec = oci.ImageSpec(
            layers=(pspec.layers if pspec else []) + pulled[0] + [lay for lay in layers if lay],
            history=(pspec.history if pspec else []) + pulled[1] + [r.created_by for r in recipes],
            env={**(pspec.env if pspec else {}), **pulled[2],
                 **{k: str(v) for k, v in (sdef.get("env") or {}).items()}},
            entrypoint=sdef.get("entrypoint") or (pspec.entrypoint if pspec else None),
            cmd=sdef.get("cmd") or (pspec.cmd if pspec else None),
            user=sdef.get("user") or (pspec.user if pspec else None),
            workdir=sdef.get("workdir") or (pspec.workdir if pspec else None),
            exposed_ports=list(sdef.get("exposed_ports") or (pspec.exposed_ports if pspec else [])),
            epoch=self.icfg.epoch)
        ann = self._annotations(name, sdef)
        # Fine-grained inputs so that --explain names what changed (a layer, one annotation, Env...).
        inputs = [Input("artefact", f"parent image {parent}", self.built[parent][1].digest)] if parent else []
        if pulled[0]:
            inputs.append(Input("artefact", "base image", pulled[3]))
        inputs += [Input("artefact", f"layer {r.name}", lay.digest) for r, lay in zip(recipes, layers) if lay]
        doc = json.loads(oci.canonical(spec.config_doc()))
        inputs += [Input("config", f"image config {k}", v) for k, v in doc["config"].items()]
        inputs += [Input("config", "history", doc["history"]), Input("config", "created", doc["created"])]
        inputs += [Input("config", f"annotation {k}", v) for k, v in ann.items()]
        task = Task(name=f"image-stage:{self.ctx.profile_name}:{name}", kind="image", inputs=inputs)
        ann["io.mini-vllm.inputs"] = f"sha256:{task.key}"
        spec.labels = dict(ann)
        img = oci.assemble(spec, ann)
        hit = lookup(self.ctx.store, task)
        if hit is None:
            self._say_why(task, f"stage {name}")
            oci.save_documents(self.ctx.store, img)
            rec, ran = run_task(self.ctx.store, task, lambda: {"blobs": [img.config_digest, img.digest],
                                                              "digest": img.digest})
            self.ran.append(f"stage:{name}")
            if rec["digest"] != img.digest:
                raise ImageBuildError(f"stage {name}: cached manifest differs from the rebuilt one")
        self.built[name] = (spec, img, task.key)
        return img

    def _annotations(self, name: str, sdef: dict[str, Any]) -> dict[str, str]:
        ann = {"org.opencontainers.image.title": f"{self.ctx.cfg.project_name}-{name}",
               "org.opencontainers.image.description": str(sdef.get("title", name)),
               "org.opencontainers.image.created": oci.created_at(self.icfg.epoch),
               "io.mini-vllm.stage": name, "io.mini-vllm.profile": self.ctx.profile_name,
               "io.mini-vllm.torch": torch_version(self.ctx),
               "io.mini-vllm.cuda-arch": self.icfg.cuda_arch}
        ann.update(source_annotations(self.ctx.cfg.sources))
        if carries_python(sdef):  # only the image that carries python/ names the revision
            ann["org.opencontainers.image.revision"] = git_revision(self.ctx.root)
        return ann

    def write_outputs(self, out_dir: Path, name: str, reference: str | None = None) -> dict[str, Any]:
        spec, img, key = self.built[name]
        if reference is None:   # an unchanged image keeps the reference it was pushed under
            try:
                prev = json.loads((out_dir / f"{name}.json").read_text())
                if prev.get("digest") == f"sha256:{img.digest}":
                    reference = prev.get("reference")
            except (OSError, ValueError):
                pass
        layout = oci.Layout(out_dir / "oci")
        layout.write_image(self.ctx.store, img, name)
        result = {"stage": name, "digest": f"sha256:{img.digest}", "reference": reference,
                  "layout": str(layout.root), "inputs": f"sha256:{key}", "profile": self.ctx.profile_name}
        atomic_write_bytes(out_dir / f"{name}.json", (json.dumps(result, indent=1) + "\n").encode(), fsync=False)
        self.ctx.store.set_root(f"image:{name}", blobs=img.blob_digests() + [img.digest])
        return result
