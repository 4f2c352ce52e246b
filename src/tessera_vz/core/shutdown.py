"""Let native worker threads finish their last callback before Python finalizes.

obstore and Icechunk complete Python futures from their tokio threads
(pyo3-async-runtimes): the thread queues the result with
``loop.call_soon_threadsafe`` and then writes to the loop's wake-up socket,
releasing the GIL around the write. If the program's last await has already
returned and the interpreter starts finalizing in that instant, the thread
cannot take the GIL back, CPython ends it with ``pthread_exit`` inside Rust
frames, and the process aborts (SIGABRT, exit 134) after all its work was
done: seen in ~3 % of short CLI runs on a loaded 2-core machine, with the
core dump showing exactly that stack (upstream: PyO3/pyo3-async-runtimes#40).

An ``atexit`` hook runs before finalization starts; sleeping briefly there
releases the GIL so such a thread completes its write and lets go. The CLI
also leaves through ``os._exit`` once its output is flushed
(:func:`tessera_vz.cli.run`), which skips finalization altogether.
"""

from __future__ import annotations

import atexit
import time

#: Long enough for a pending socket write and GIL hand-back, short enough to
#: go unnoticed at the end of a program.
SETTLE_SECONDS = 0.05


@atexit.register
def _settle() -> None:
    time.sleep(SETTLE_SECONDS)
