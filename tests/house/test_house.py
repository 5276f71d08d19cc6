"""The house rules, checked from the source: one-way arrows, small modules, no copied blocks, a true picture."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / "python"
sys.path.insert(0, str(Path(__file__).parent))

from house_checks import duplicate_blocks  # noqa: E402
from minibuild import arch  # noqa: E402

MAX_LINES = 400


def _files(pkg: str) -> list[Path]:
    return sorted(p for p in (PYTHON / pkg).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("pkg, other", [("minibuild", "mini_vllm"), ("mini_vllm", "minibuild")])
def test_builder_and_server_never_import_each_other(pkg: str, other: str) -> None:
    offenders = []
    for path in _files(pkg):
        mod = arch.module_name(PYTHON, path)
        hits = sorted(n for n in arch.imported_names(path, mod) if n == other or n.startswith(other + "."))
        if hits:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(hits)}")
    assert offenders == [], "one-way arrows: run the other side as a process or pass data, never import it"


def test_the_import_parser_sees_what_it_must(tmp_path: Path) -> None:
    pkg = tmp_path / "minibuild" / "sub"
    pkg.mkdir(parents=True)
    f = pkg / "m.py"
    f.write_text("import os\nfrom ..config import load\nfrom . import sibling\n"
                 "def later():\n    from mini_vllm.model.tiny import main\n    import mini_vllm\n")
    names = arch.imported_names(f, "minibuild.sub.m")
    assert {"minibuild.config", "minibuild.sub.sibling", "mini_vllm.model.tiny", "mini_vllm"} <= names
    _, imports, _ = arch.house(tmp_path)
    assert ("minibuild.sub", "mini_vllm") in imports and arch.crossings(imports)


def test_no_module_over_400_lines() -> None:
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in _files("minibuild") + _files("mini_vllm")
           if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert big == [], "split these by job"


def test_no_duplicated_blocks_of_six_lines() -> None:
    found = [f"{Path(a).relative_to(ROOT)}:{la} = {Path(b).relative_to(ROOT)}:{lb} ({n} lines)"
             for a, la, b, lb, n in duplicate_blocks(_files("minibuild") + _files("mini_vllm"))]
    assert found == [], "a block repeated: give it one home and call it"


def test_the_checker_finds_a_copied_block(tmp_path: Path) -> None:
    body = "".join(f"    total = total + values[{i}] * {i}\n" for i in range(7))
    (tmp_path / "a.py").write_text("def f(values):\n    total = 0\n" + body + "    return total\n")
    (tmp_path / "b.py").write_text("class C:\n    def g(self, values):\n        # copied\n\n" +
                                   body.replace("    ", "        ", 1) + "\n")
    (tmp_path / "c.py").write_text("import os\nimport re\nimport sys\nimport json\nimport time\nimport shutil\n")
    (tmp_path / "d.py").write_text("import os\nimport re\nimport sys\nimport json\nimport time\nimport shutil\n")
    found = duplicate_blocks(sorted(tmp_path.glob("*.py")))
    assert [(Path(a).name, Path(b).name, n) for a, _, b, _, n in found] == [("a.py", "b.py", 7)]


def test_the_picture_matches_the_code(tmp_path: Path) -> None:
    want = arch.to_dot(*arch.house(PYTHON, ROOT / "tasks.py"))
    have = (ROOT / "docs" / "architecture.dot").read_text()
    assert have == want, "docs/architecture.dot is stale: run `invoke graph --imports` and commit docs/architecture.*"
    assert "architecture.svg" in (ROOT / "docs" / "architecture.md").read_text()
    rooms, imports, runs = arch.house(PYTHON, ROOT / "tasks.py")
    assert arch.crossings(imports) == []
    assert ("minibuild.server_entry", "mini_vllm.model") in runs and ("minibuild.cluster", "mini_vllm.cli") in runs


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed (./dev installs it)")
def test_the_task_redraws_the_picture(tmp_path: Path) -> None:
    text = arch.draw(ROOT, tmp_path / "a.dot", tmp_path / "a.svg")
    assert (tmp_path / "a.dot").read_text() == text
    svg = (tmp_path / "a.svg").read_text()
    assert svg.startswith("<?xml") and "python/minibuild" in svg and "python/mini_vllm" in svg
