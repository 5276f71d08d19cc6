"""Constants and a /metrics reader shared by the API tests (a uniquely named module, not conftest)."""
from __future__ import annotations

import re

MODEL = "tiny-gpt-oss"
MAX_MODEL_LEN = 512
# prompts starting with these token ids fail inside the engine after FAULT_AFTER tokens (session server only)
FAULT_MARKER = (11, 13, 17, 19, 23)
FAULT_AFTER = 2


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(r"^([^{\s]+)(?:\{([^}]*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    assert found, f"{name} {labels} not in /metrics"
    return total
