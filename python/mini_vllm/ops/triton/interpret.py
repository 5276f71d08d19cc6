"""Run this package's kernels in Triton's CPU interpreter, whatever was imported first.

Why: `TRITON_INTERPRET=1` is read when each `@triton.jit` decorator runs, including those inside
`triton.language` itself, so it only works if it is set before anything imports triton - and in a
test session transformers (or torch) imports triton long before our tests run. This context manager
swaps every compiled-mode `JITFunction` of triton.language and of this package for an
`InterpretedFunction` for the duration of the block (with triton's `interpret` knob on, which its
lazily imported parts check), and restores them after. CPU/test use only.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

_PACKAGE = __name__.rsplit(".", 1)[0]


def _modules() -> list:
    import triton.language as tl
    mods = [tl, tl.core, tl.standard, tl.math]
    mods += [m for name, m in list(sys.modules.items())
             if m is not None and name.startswith(_PACKAGE + ".")]
    return mods


@contextmanager
def interpreted() -> Iterator[None]:
    """Within the block, launching our kernels on CPU tensors runs them in the interpreter."""
    from triton import knobs
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    swapped: list[tuple[object, str, object]] = []
    by_fn: dict[object, InterpretedFunction] = {}
    with knobs.runtime.scope():
        knobs.runtime.interpret = True
        try:
            for mod in _modules():
                for name, obj in list(vars(mod).items()):
                    if isinstance(obj, JITFunction):
                        if obj.fn not in by_fn:
                            by_fn[obj.fn] = InterpretedFunction(obj.fn)
                        swapped.append((mod, name, obj))
                        setattr(mod, name, by_fn[obj.fn])
            yield
        finally:
            for mod, name, obj in reversed(swapped):
                setattr(mod, name, obj)
