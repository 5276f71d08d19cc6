"""Build a local source mirror (<name>-<commit>.tar per pin) from bare git snapshots or from GitHub.

Why: a machine without GitHub (the GPU machine, an air-gapped cluster) builds from a mirror directory.
Fill one where the sources are reachable, carry it over (e.g. as .carry/mirror, which git ignores), and
run `invoke kernels --mirror-dir DIR` (or set MINI_VLLM_MIRROR) there. Each tarball holds exactly the
pin's subtrees; `invoke fetch` verifies the tree hash, so a bad mirror is refused.

    .venv/bin/python bench/make_source_mirror.py --from-github --out DIR      # a machine with GitHub
    .venv/bin/python bench/make_source_mirror.py --out .carry/mirror         # from /work/.mirror snapshots
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from minibuild.config import load_config  # noqa: E402
from minibuild.sources import make_mirror_tarball  # noqa: E402

SNAPSHOTS = Path("/work/.mirror") if Path("/work/.mirror").is_dir() else ROOT / ".mirror"   # .mirror/: git ignores it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / ".carry" / "mirror"))
    ap.add_argument("--snapshots", default=str(SNAPSHOTS), help="dir of OWNER+NAME/repo bare git dirs")
    ap.add_argument("--from-github", action="store_true",
                    help="fetch each pinned commit from GitHub (depth 1) into --snapshots when it is not there")
    args = ap.parse_args()
    for name, pin in load_config(ROOT / "build_config.yaml").sources.items():
        git_dir = Path(args.snapshots) / pin.repo.replace("/", "+") / "repo"
        if args.from_github and not git_dir.is_dir():
            subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
            subprocess.run(["git", "--git-dir", str(git_dir), "fetch", "-q", "--depth", "1",
                            f"https://github.com/{pin.repo}.git", pin.commit], check=True)
        out = make_mirror_tarball(git_dir, pin, Path(args.out))
        print(f"{name}: {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
