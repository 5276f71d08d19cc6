"""Constants and a /metrics reader shared by the API tests (a uniquely named module, not conftest)."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

MODEL = "tiny-gpt-oss"
MAX_MODEL_LEN = 512
# prompts starting with these token ids fail inside the engine after FAULT_AFTER tokens (session server only)
FAULT_MARKER = (11, 13, 17, 19, 23)
FAULT_AFTER = 2


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`, parsed by prometheus_client's own
    exposition parser (so a malformed /metrics body fails here too)."""
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
                found = True
    assert found, f"{name} {labels} not in /metrics"
    return total
