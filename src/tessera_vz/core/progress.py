"""How long work reports its progress: one ``start(label, total)`` giving an ``advance(n)``.

An index run and a catalog run report units done, a points run points
sampled; the CLI draws the reports as rich progress bars
(:func:`tessera_vz.commands.common.progress`), a Python caller passes its
own ``start`` or nothing (:func:`no_progress`).
"""

from __future__ import annotations

from collections.abc import Callable

#: ``advance(n)``: ``n`` more of the task's total are done.
Advance = Callable[[int], None]
#: ``start(label, total)``: a task of ``total`` steps begins; returns its ``advance``.
ProgressStart = Callable[[str, int], Advance]


def no_progress(label: str, total: int) -> Advance:
    """A ``start`` that shows nothing (the default of every run)."""
    return _ignore


def _ignore(n: int) -> None:
    """An ``advance`` that shows nothing."""
