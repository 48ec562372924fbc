# -*- test-case-name: tests.test_backend_memory -*-
"""
The in-process change notifier, used by backends of a single process.
"""

from __future__ import annotations

from typing import Callable, Dict, List

from twisted.logger import Logger
from zope.interface import implementer

from .interfaces import IChangeNotifier
from .model import FolderChange

log = Logger()


@implementer(IChangeNotifier)
class LocalNotifier:
    """
    Calls subscribers synchronously; a subscriber that raises is logged
    and does not stop the others.
    """

    def __init__(self) -> None:
        self._subscribers: Dict[str, List[Callable[[FolderChange], None]]] = {}

    def subscribe(self, user: str, callback: Callable[[FolderChange], None]) -> Callable[[], None]:
        self._subscribers.setdefault(user, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._subscribers.get(user, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._subscribers.pop(user, None)

        return unsubscribe

    def announce(self, change: FolderChange) -> None:
        for callback in list(self._subscribers.get(change.user, ())):
            try:
                callback(change)
            except Exception:
                log.failure("change subscriber failed for {user}", user=change.user)

    def subscriberCount(self, user: str) -> int:
        return len(self._subscribers.get(user, ()))
