"""`invoke up`'s orchestration: every step runs, a failed step is named, dependants are skipped.

The real steps run end to end in `./dev invoke up` (docs/rollout.md has a measured run); here the
step table is swapped for functions that succeed or raise, to pin down the reporting rules.
"""
from __future__ import annotations

from minibuild import pipeline


def _ok(cfg, root):
    return "fine"


def _skip(cfg, root):
    return "SKIP: no nvcc"


def _boom(cfg, root):
    raise RuntimeError("local rollout failed")


def _missing(cfg, root):
    raise ImportError("No module named 'minibuild.image'")


def test_failures_are_named_and_dependants_skipped(monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "STEPS", [("tiny model", _ok, ()), ("kernels", _skip, ()), ("images", _missing, ()),
                                            ("rollout local", _boom, ("tiny model",)), ("verify", _ok, ("rollout local",))])
    rows = {name: (result, detail) for name, result, _, detail in pipeline.run_steps({}, ".")}
    assert rows == {"tiny model": ("ok", "fine"), "kernels": ("skipped", "no nvcc"),
                    "images": ("FAILED", "not available yet: No module named 'minibuild.image'"),
                    "rollout local": ("FAILED", "RuntimeError: local rollout failed"),
                    "verify": ("skipped", "needs rollout local")}
    assert pipeline.up({}, ".") is False
    assert "the server keeps running" not in capsys.readouterr().out


def test_all_ok(monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "STEPS", [("tiny model", _ok, ()), ("kernels", _skip, ()), ("verify", _ok, ("tiny model",))])
    assert pipeline.up({}, ".") is True
    assert "the server keeps running" in capsys.readouterr().out
