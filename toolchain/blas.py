"""How many threads the BLAS libraries loaded in this process may use.

numpy's OpenBLAS starts one thread per core by default and its threads spin while they wait. Work that
is already parallel (the certify engines' pool workers, the region pass's threads, a Dask worker's jobs)
must keep it to one thread: two pool workers on two cores, each with two OpenBLAS threads, bounded
2.6x fewer ACAS Xu boxes in 60 s than with one thread each (816 against 2128 boxes on 2_7, property-1
box; bench/suite.py). The executor's thin GEMMs run on one thread too (toolchain.execute).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from threadpoolctl import ThreadpoolController

_FOUND: dict[int, tuple[Any, ...]] = {}  # len(sys.modules) at the scan -> the BLAS controllers found


def _libraries() -> tuple[Any, ...]:
    """threadpoolctl's controllers of the BLAS libraries loaded in this process (numpy's OpenBLAS,
    and scipy's own once scipy.linalg is imported). Scanned again only when modules were imported
    since the last scan (a new import is how a new BLAS gets loaded): one scan costs ~1 ms."""
    key = len(sys.modules)
    if key not in _FOUND:
        _FOUND.clear()
        _FOUND[key] = tuple(lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas")
    return _FOUND[key]


@contextlib.contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """At most n BLAS threads inside the block (n <= 0: leave them alone), the previous counts restored
    after. The libraries' own setters, not ThreadpoolController.limit: this runs once per executor call
    and per job, and limit() costs ~20 us where two setter calls cost ~2 us. The count is the process's,
    not the thread's: a block entered by several threads at once must agree on n."""
    libs = _libraries() if n > 0 else ()
    changed = [(lib, old) for lib in libs if (old := lib.get_num_threads()) != n]
    for lib, _ in changed:
        lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, old in changed:
            lib.set_num_threads(old)
