"""One monitor per address in a process.

Re-running the notebook cell that made a monitor must never fail with
"address in use" nor leave the old monitor running: a new monitor claims its
address and the one that held it is stopped. A unicast port admits one
receiver only; a multicast group admits several, so there the key also holds
the monitor's class: two different views of one group run side by side,
while a re-run cell (same class) replaces its old monitor.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from ..sock import is_multicast

__all__ = ["claim", "key_for", "release"]

logger = logging.getLogger(__name__)

_ACTIVE: dict[tuple, weakref.ReferenceType[Any]] = {}
_LOCK = threading.Lock()


def key_for(owner: Any, group: str, port: int) -> tuple:
    """The registry key of ``owner`` listening to ``(group, port)``."""
    if is_multicast(group):
        return (group, port, type(owner).__module__, type(owner).__qualname__)
    return (group, port)


def claim(owner: Any, group: str, port: int) -> None:
    """Make ``owner`` the holder of its address, stopping the previous holder."""
    if port == 0:  # an OS-chosen port is nobody else's
        return
    key = key_for(owner, group, port)
    with _LOCK:
        ref = _ACTIVE.get(key)
        old = ref() if ref is not None else None
        _ACTIVE[key] = weakref.ref(owner)
    if old is not None and old is not owner:
        logger.info("stopping %r: a new monitor takes over %s:%d", old, group, port)
        old.stop()


def release(owner: Any, group: str, port: int) -> None:
    """Forget ``owner`` as the holder of its address (if it is)."""
    key = key_for(owner, group, port)
    with _LOCK:
        ref = _ACTIVE.get(key)
        if ref is not None and ref() is owner:
            del _ACTIVE[key]
