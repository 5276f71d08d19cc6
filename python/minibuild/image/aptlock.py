"""Resolve a Debian base spec (images/base-*.yaml) to exact .debs with apt, for any suite.

Why a private apt configuration: the build machine's own apt is set up for *its* release (bookworm
here), while the h100 base is Debian 13 "trixie" (the stable release whose python3.13 the CUDA torch
wheels support). apt itself can resolve any suite if it gets its own directories: sources from the
spec (signed-by the Debian archive keyring, so InRelease signatures are checked as usual), an empty
dpkg status (nothing counts as installed, so the whole closure is printed) and its own lists and
cache. Nothing of the host's apt state is read or changed; no root is needed.

Two modes (spec `resolve:`):
* `closure` - the named packages plus everything they Depend/Pre-Depend on (no Recommends), as
  `apt-get install --print-uris` computes it for an empty system;
* `listed` - exactly the named packages (`apt-get download --print-uris`), the spec is the closure.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class AptResolveError(RuntimeError):
    """apt could not resolve the spec (unreachable mirror, unknown package, bad signature)."""


def sources_lines(spec: dict[str, Any]) -> list[str]:
    """One-line apt sources for the spec (`sources:` list of {uri, suites, components})."""
    keyring = spec.get("keyring") or DEFAULT_KEYRING
    out = []
    for src in spec.get("sources") or []:
        comps = " ".join(src.get("components") or ["main"])
        for suite in src["suites"]:
            out.append(f"deb [signed-by={keyring}] {src['uri']} {suite} {comps}")
    if not out:
        raise AptResolveError("the base spec has no `sources:` (uri + suites) to resolve from")
    return out


def _apt_env(root: Path, spec: dict[str, Any]) -> dict[str, str]:
    for d in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d", "etc/trusted.gpg.d",
              "state/lists/partial", "cache/archives/partial"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "status").write_text("")
    (root / "etc/sources.list").write_text("\n".join(sources_lines(spec)) + "\n")
    arch = spec.get("arch", "amd64")
    conf = [f'Dir::Etc "{root}/etc";', f'Dir::Etc::Parts "{root}/etc/apt.conf.d";',
            f'Dir::State "{root}/state";', f'Dir::State::status "{root}/status";', f'Dir::Cache "{root}/cache";',
            f'APT::Architecture "{arch}";', f'APT::Architectures {{ "{arch}"; }};',
            'APT::Sandbox::User "root";' if os.geteuid() == 0 else "",
            'Debug::NoLocking "true";', 'Acquire::Languages "none";', 'APT::Install-Recommends "false";']
    (root / "apt.conf").write_text("\n".join(c for c in conf if c) + "\n")
    return {**os.environ, "APT_CONFIG": str(root / "apt.conf"), "LC_ALL": "C"}


def _run(cmd: list[str], env: dict[str, str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise AptResolveError(f"{what} failed:\n{tail}")
    return proc.stdout


def parse_uris(text: str, need_sha256: bool = True) -> list[dict[str, Any]]:
    """`'URL' name_version_arch.deb SIZE HASH` lines -> package records."""
    pkgs = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) not in (3, 4) or not parts[0].startswith("'"):
            continue
        url, fname, size, sha = (parts + [""])[:4]   # apt prints no hash for some packages
        name, version, arch = fname[:-4].split("_")
        if need_sha256 and not sha.lower().startswith("sha256:"):
            raise AptResolveError(f"apt gave no sha256 for {fname} ({sha}); refusing a weaker hash")
        pkgs.append({"name": name, "version": version.replace("%3a", ":"), "arch": arch,
                     "url": url.strip("'"), "size": int(size), "sha256": sha.partition(":")[2].lower()})
    return pkgs


def resolve(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Package records (sorted by name) for the spec, resolved against its own sources."""
    names = [str(p) for p in spec["packages"]]
    with tempfile.TemporaryDirectory(prefix="mvllm-apt-") as tmp:
        env = _apt_env(Path(tmp), spec)
        _run(["apt-get", "-q", "update"], env, "apt-get update for " + ", ".join(sources_lines(spec)))
        mode = spec.get("resolve", "listed")
        if mode == "closure":
            # install --print-uris computes the closure but prints MD5Sum; download prints SHA256
            out = _run(["apt-get", "install", "--print-uris", "-qq", "-y", *names], env, "apt-get install --print-uris")
            names = [f"{p['name']}={p['version']}" for p in parse_uris(out, need_sha256=False)]
            out = _run(["apt-get", "download", "--print-uris", *names], env, "apt-get download --print-uris")
            names = [n.split("=", 1)[0] for n in names]
        elif mode == "listed":
            out = _run(["apt-get", "download", "--print-uris", *names], env, "apt-get download --print-uris")
        else:
            raise AptResolveError(f"resolve: {mode!r} is not 'closure' or 'listed'")
    pkgs = parse_uris(out)
    missing = set(names) - {p["name"] for p in pkgs}
    if missing:
        raise AptResolveError(f"apt did not resolve: {', '.join(sorted(missing))}")
    return sorted(pkgs, key=lambda p: p["name"])
