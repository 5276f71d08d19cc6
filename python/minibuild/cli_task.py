"""The `@task` decorator tasks.py uses: short flags are set here, once, with one meaning across all tasks.

Why: invoke gives each flag a short form from its first free letter, task by task, so `-t` meant
`--tp` in one task and `--target` in another. Here automatic short flags are off and the few short
flags we keep are listed in SHORT_FLAGS (flag -> letter); a letter belongs to one flag name everywhere
(tests/test_newcomer.py checks every task, and that every flag's help says its default).
"""
from __future__ import annotations

from typing import Any

import invoke

# flag name -> its short form, the same in every task that has the flag
SHORT_FLAGS = {"follow": "f", "k": "k", "x": "x"}


class Task(invoke.Task):
    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        short = SHORT_FLAGS.get(name)
        if short and short not in opts["names"] and short not in taken_names:
            opts["names"] = [*opts["names"], short]
        return opts


def task(*args: Any, **kwargs: Any) -> Any:
    """invoke's @task with our Task class and no automatic short flags."""
    kwargs.setdefault("klass", Task)
    kwargs["auto_shortflags"] = False
    return invoke.task(*args, **kwargs)
