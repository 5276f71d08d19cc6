"""Decide, from recorded API objects, where a Deployment's rollout stands - as pure functions.

`kubectl rollout status` only says "waiting"; a GPU rollout needs to know *why*: queued by Kueue
(waiting for quota - normal, not a failure), unschedulable (the scheduler's message), an image that
cannot be pulled, a crash loop (with the last log lines), or a progress deadline that ran out. Keeping
this free of I/O means every case is tested on JSON shaped like the real API's, and the client
(kube.py) only fetches objects and prints verdicts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
KUEUE_GATE = "kueue.x-k8s.io/admission"
_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


@dataclass(frozen=True)
class Verdict:
    state: str                 # ready | progressing | queued | unschedulable | image_pull | crash_loop | config_error | deadline
    message: str
    done: bool = False         # stop waiting (success or a failure that will not fix itself)
    ok: bool = False
    pod: str | None = None
    logs: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.done and not self.ok


def _cond(obj: Obj, kind: str) -> Obj | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return None


def rollout_progress(dep: Obj) -> Verdict:
    """kubectl's DeploymentStatusViewer: observedGeneration, updated/available replicas, Progressing."""
    meta, spec, status = dep.get("metadata") or {}, dep.get("spec") or {}, dep.get("status") or {}
    name = meta.get("name", "?")
    if meta.get("generation", 0) > status.get("observedGeneration", 0):
        return Verdict("progressing", f"waiting for deployment {name} spec update to be observed")
    prog = _cond(dep, "Progressing")
    if prog and prog.get("reason") == "ProgressDeadlineExceeded":
        return Verdict("deadline", f"deployment {name} exceeded its progress deadline "
                       f"({spec.get('progressDeadlineSeconds', '?')} s): {prog.get('message', '')}".rstrip(": "),
                       done=True)
    want = spec.get("replicas", 1)
    updated, total = status.get("updatedReplicas", 0), status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < want:
        return Verdict("progressing", f"{updated} out of {want} new replicas have been updated")
    if total > updated:
        return Verdict("progressing", f"{total - updated} old replicas are pending termination")
    if available < updated:
        return Verdict("progressing", f"{available} of {updated} updated replicas are available")
    return Verdict("ready", f"deployment {name} successfully rolled out", done=True, ok=True)


def current_pods(dep: Obj, replicasets: list[Obj], pods: list[Obj]) -> list[Obj]:
    """Pods of the Deployment's newest ReplicaSet (highest revision); all pods if that is unknown."""
    uid = (dep.get("metadata") or {}).get("uid")
    owned = [rs for rs in replicasets
             if not uid or any(o.get("uid") == uid for o in (rs.get("metadata") or {}).get("ownerReferences") or [])]
    if not owned:
        return pods
    newest = max(owned, key=lambda rs: int(((rs.get("metadata") or {}).get("annotations") or {})
                                           .get("deployment.kubernetes.io/revision", "0")))
    h = ((newest.get("metadata") or {}).get("labels") or {}).get("pod-template-hash")
    return [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get("pod-template-hash") == h] or pods


def _events_for(events: list[Obj], pod: str) -> list[Obj]:
    mine = [e for e in events if (e.get("involvedObject") or {}).get("name") == pod]
    return sorted(mine, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def crashlooping(pods: list[Obj]) -> list[str]:
    """Names of pods whose logs a diagnosis wants (containers in CrashLoopBackOff or restarted)."""
    out = []
    for p in pods:
        for cs in (p.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "CrashLoopBackOff" or cs.get("restartCount", 0) > 0:
                out.append(p["metadata"]["name"])
                break
    return out


def diagnose_pod(pod: Obj, events: list[Obj], logs: list[str] | None = None) -> Verdict | None:
    """Why one pod is not ready, or None when nothing is wrong (yet)."""
    name = pod["metadata"]["name"]
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if kueue_gated(pod):
        queue = ((pod.get("metadata") or {}).get("labels") or {}).get("kueue.x-k8s.io/queue-name", "?")
        return Verdict("queued", f"pod {name} is queued by Kueue in {queue} (waiting for quota, not failed)", pod=name)
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason, msg = waiting.get("reason"), waiting.get("message", "")
        if reason in _PULL_REASONS:
            return Verdict("image_pull", f"pod {name}: {reason} for {cs.get('image', '?')}: {msg}".rstrip(": "),
                           done=True, pod=name)
        if reason == "CrashLoopBackOff":
            last = (cs.get("lastState") or {}).get("terminated") or {}
            why = f"exit code {last.get('exitCode', '?')}" + (f" ({last['reason']})" if last.get("reason") else "")
            return Verdict("crash_loop", f"pod {name}: container {cs.get('name')} is in CrashLoopBackOff, "
                           f"{cs.get('restartCount', 0)} restarts, last {why}", done=True, pod=name,
                           logs=list(logs or []))
        if reason in _CONFIG_REASONS:
            return Verdict("config_error", f"pod {name}: {reason}: {msg}", done=True, pod=name)
    sched = _cond(pod, "PodScheduled")
    if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
        return Verdict("unschedulable", f"pod {name} is unschedulable: {sched.get('message', '')}", pod=name)
    for e in reversed(_events_for(events, name)):
        if e.get("type") == "Warning" and e.get("reason") in ("FailedScheduling", "FailedMount", "FailedAttachVolume"):
            state = "unschedulable" if e["reason"] == "FailedScheduling" else "progressing"
            return Verdict(state, f"pod {name}: {e['reason']}: {e.get('message', '')}", pod=name)
    return None


def kueue_gated(pod: Obj) -> bool:
    return KUEUE_GATE in [g.get("name") for g in (pod.get("spec") or {}).get("schedulingGates") or []]


def assess(dep: Obj, replicasets: list[Obj], pods: list[Obj], events: list[Obj],
           logs: dict[str, list[str]] | None = None) -> Verdict:
    """The rollout's verdict: a pod problem explains a waiting rollout; the deadline and success are final.

    Pods that wait for Kueue quota are queued, never failed - also past the progress deadline (a
    scale-up beyond the quota, e.g. by the autoscaler, starts that clock too). When some replicas
    serve and every missing one is only queued, the deployment serves: done, with the queue said."""
    progress = rollout_progress(dep)
    if progress.ok:
        return progress
    current = current_pods(dep, replicasets, pods)
    verdicts = [v for v in (diagnose_pod(p, events, (logs or {}).get(p["metadata"]["name"])) for p in current) if v]
    problems = [v for v in verdicts if v.state != "queued"]
    queued = [v for v in verdicts if v.state == "queued"]
    if queued and not problems:
        available = int((dep.get("status") or {}).get("availableReplicas") or 0)
        want = (dep.get("spec") or {}).get("replicas", 1)
        if available >= 1:
            return Verdict("queued", f"serving on {available} of {want} replicas; {len(queued)} pod(s) queued by Kueue "
                           f"(waiting for quota, not failed): {queued[0].message}", done=True, ok=True, pod=queued[0].pod)
        return queued[0]
    for verdict in problems + queued:
        if progress.state == "deadline":   # the deadline is final; say what held it up
            return Verdict("deadline", f"{progress.message}; {verdict.message}", done=True,
                           pod=verdict.pod, logs=verdict.logs)
        return verdict
    return progress
