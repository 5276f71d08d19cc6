"""The stage order is images/stages.yaml's `parent:` links - no list in code repeats it."""
from __future__ import annotations

from pathlib import Path

import pytest

from minibuild.image.stages import ImageBuildError, carries_python, load_stages, stage_chain, top_stage

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "stages.yaml"
    p.write_text(text)
    return p


def test_the_order_comes_from_the_parents() -> None:
    stages = load_stages(REPO / "images/stages.yaml")
    assert stage_chain(stages, "all") == stage_chain(stages, top_stage(stages))
    assert stage_chain(stages, "all")[0] == next(n for n, s in stages.items() if not s.get("parent"))
    assert [n for n in stages if carries_python(stages[n])] == [stage_chain(stages, "all")[-1]]


def test_a_new_stage_in_the_data_changes_what_all_builds(tmp_path: Path) -> None:
    p = _write(tmp_path, "base: {parent: null}\nmid: {parent: base}\nside: {parent: base}\n"
                         "top: {parent: mid, layers: [{kind: python}]}\n")
    stages = load_stages(p)
    assert top_stage(stages) == "top" and stage_chain(stages, "all") == ["base", "mid", "top"]
    assert stage_chain(stages, "side") == ["base", "side"] and carries_python(stages["top"])


@pytest.mark.parametrize("text, msg", [
    ("a: {parent: b}\n", "names parent 'b', which is not defined"),
    ("a: {parent: b}\nb: {parent: a}\n", "form a cycle"),
])
def test_bad_parents_are_named(tmp_path: Path, text: str, msg: str) -> None:
    with pytest.raises(ImageBuildError, match=msg):
        load_stages(_write(tmp_path, text))
    with pytest.raises(ImageBuildError, match="unknown stage 'nope'"):
        stage_chain(load_stages(REPO / "images/stages.yaml"), "nope")
