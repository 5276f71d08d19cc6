"""Duplicated blocks in python/, found without the `duplicates` tool (CI does not have it).

A block is WINDOW or more lines that appear twice after normalising (whitespace collapsed, comments and
blank lines dropped), so a copied block cannot hide behind re-indentation. Lines too common to mean
anything on their own (`else:`, `)`, `pass`, imports...) never start a window and at most one fills it.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path

WINDOW = 6
_TRIVIAL = re.compile(r"^([\)\]\}],?|else:|try:|finally:|pass|return|return None|continue|break|\"\"\"|'''|"
                      r"@\w+(\.\w+)*|@dataclass(\(frozen=True\))?|def __init__\(self\) -> None:|"
                      r"(from \S+ )?import .*)$")   # imports say what a module uses; they are not logic


def modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def normalised_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of meaningful lines: stripped, inner whitespace collapsed, comments dropped."""
    out = []
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("  #")[0].strip() if "#" in raw else raw.strip()
        if not line or line.startswith("#"):
            continue
        out.append((i, re.sub(r"\s+", " ", line)))
    return out


def duplicate_blocks(paths: list[Path], window: int = WINDOW) -> list[tuple[str, int, str, int, int]]:
    """(file A, line A, file B, line B, length) of each maximal run of >= window normalised lines seen twice."""
    seen: dict[str, list[tuple[Path, int]]] = defaultdict(list)
    lines_of = {p: normalised_lines(p) for p in paths}
    for p, lines in lines_of.items():
        for k in range(len(lines) - window + 1):
            chunk = [t for _, t in lines[k:k + window]]
            if sum(1 for t in chunk if not _TRIVIAL.match(t)) < window - 1 or _TRIVIAL.match(chunk[0]):
                continue
            seen[hashlib.sha1("\n".join(chunk).encode()).hexdigest()].append((p, k))
    pairs: dict[tuple[Path, Path], set[tuple[int, int]]] = defaultdict(set)
    for places in seen.values():
        for a in range(len(places)):
            for b in range(a + 1, len(places)):
                (pa, ka), (pb, kb) = places[a], places[b]
                if pa == pb and abs(ka - kb) < window:
                    continue                          # a run overlapping itself (repetitive code)
                pairs[(pa, pb)].add((ka, kb))
    found = []
    for (pa, pb), starts in pairs.items():
        for ka, kb in sorted(starts):
            if (ka - 1, kb - 1) in starts:
                continue                              # inside a longer run already reported
            n = window
            while (ka + n - window + 1, kb + n - window + 1) in starts:
                n += 1
            found.append((str(pa), lines_of[pa][ka][0], str(pb), lines_of[pb][kb][0], n))
    return sorted(found)
