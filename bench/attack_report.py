"""Run the attack corpus (the project's own attack tests) and print tried / held per attack.

    python bench/attack_report.py                      # this checkout
    python bench/attack_report.py --against 2ec5510    # ... and the same tests on the code of 2ec5510
    python bench/attack_report.py --against c7b85d6 --tests-from 5c58c8d FILES...
                                  # code from before issue 11, with the attack tests as they were at 5c58c8d
                                  # (later tests use a config API that old code lacks)

Every row is one attack test; each parametrised case counts as one attack tried, and it held when its
test passed (a failure or an error - e.g. a flag the old code lacks - counts as not held). With
--against, REV's tree is exported (git archive) to a temp dir, the attack test files and their helpers
(this checkout's, or those of --tests-from REV2) are copied in, and the tests run on REV's code: the
"before" columns of docs/reliability.md come from that. Needs what the tests need (nvcc, moto, unshare; root for mounts).
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTACK_TESTS = ["tests/api/test_hardening.py", "tests/build/test_attack_archives.py",
                "tests/build/test_attack_builds.py", "tests/build/test_attack_store.py"]
HELPERS = ["tests/build/archive_attacks.py", "tests/server_process.py"]


def run_corpus(tree: Path, files: list[str]) -> dict[str, list[bool]]:
    """test function -> [held?] per case, from a pytest run in `tree` on its own python/."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "python"), str(tree / "tests")])}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                        "--timeout=300", "--continue-on-collection-errors", *files], cwd=tree, env=env,
                       stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        rows: dict[str, list[bool]] = collections.defaultdict(list)
        for case in ET.parse(xml).iter("testcase"):
            name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name', '').split('[')[0]}"
            rows[name].append(not any(child.tag in ("failure", "error", "skipped") for child in case))
    return rows


def export(rev: str, dest: Path, files: list[str], tests_from: str | None) -> None:
    """REV's tree in dest, with the attack tests and helpers (this checkout's or TESTS_FROM's) over it."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for rel in files + HELPERS:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if tests_from:
            shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{tests_from}:{rel}"], capture_output=True)
            if shown.returncode == 0:
                (dest / rel).write_bytes(shown.stdout)
        else:
            shutil.copy(ROOT / rel, dest / rel)
    if (ROOT / ".venv").exists() and not (dest / ".venv").exists():
        (dest / ".venv").symlink_to((ROOT / ".venv").resolve())   # tests that start `invoke` use it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", help="also run the corpus on the code of this git revision (default: no)")
    ap.add_argument("--tests-from", help="with --against: the attack tests of this revision (default: this checkout's)")
    ap.add_argument("files", nargs="*", default=ATTACK_TESTS, help="attack test files (default: all four)")
    a = ap.parse_args()
    files = [f for f in a.files if (ROOT / f).exists()]
    now = run_corpus(ROOT, files)
    before: dict[str, list[bool]] = {}
    if a.against:
        with tempfile.TemporaryDirectory() as tmp:
            export(a.against, Path(tmp), files, a.tests_from)
            before = run_corpus(Path(tmp), files)
    head = f"{'attack (test)':<88} {'tried':>5} {'held':>5}" + (f" {'held@' + a.against[:9]:>15}" if a.against else "")
    print(head)
    print("-" * len(head))
    totals = [0, 0, 0]
    for name, cases in now.items():
        held_before = sum(before.get(name, [])) if a.against else None
        totals[0] += len(cases)
        totals[1] += sum(cases)
        totals[2] += held_before or 0
        print(f"{name:<88} {len(cases):>5} {sum(cases):>5}" + (f" {held_before:>15}" if a.against else ""))
    print("-" * len(head))
    print(f"{'total':<88} {totals[0]:>5} {totals[1]:>5}" + (f" {totals[2]:>15}" if a.against else ""))


if __name__ == "__main__":
    main()
