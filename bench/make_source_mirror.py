"""Build a local source mirror (<name>-<commit>.tar per pin) from bare git snapshots.

Why: the GPU machine has no internet. The lead fills a mirror directory here from the repository
snapshots in /work/.mirror, carries it over (e.g. as .carry/mirror, which git ignores), and runs
`invoke kernels --mirror-dir .carry/mirror` (or sets MINI_VLLM_MIRROR) there. Each tarball holds
exactly the pin's subtrees; `invoke fetch` verifies the tree hash, so a bad mirror is refused.

    .venv/bin/python bench/make_source_mirror.py --out .carry/mirror
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from minibuild.config import load_config  # noqa: E402
from minibuild.sources import make_mirror_tarball  # noqa: E402

SNAPSHOTS = Path("/work/.mirror")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / ".carry" / "mirror"))
    ap.add_argument("--snapshots", default=str(SNAPSHOTS), help="dir of OWNER+NAME/repo bare git dirs")
    args = ap.parse_args()
    for name, pin in load_config(ROOT / "build_config.yaml").sources.items():
        git_dir = Path(args.snapshots) / pin.repo.replace("/", "+") / "repo"
        out = make_mirror_tarball(git_dir, pin, Path(args.out))
        print(f"{name}: {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
