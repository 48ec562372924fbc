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


class _Subscription:
    """
    What an unsubscribe function is bound to: smaller than a closure, and
    one is kept per subscribed user.
    """

    __slots__ = ("_notifier", "_user", "_callback")

    def __init__(self, notifier: "LocalNotifier", user: str, callback: Callable[[FolderChange], None]) -> None:
        self._notifier = notifier
        self._user = user
        self._callback = callback

    def cancel(self) -> None:
        self._notifier._unsubscribe(self._user, self._callback)


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
        return _Subscription(self, user, callback).cancel

    def _unsubscribe(self, user: str, callback: Callable[[FolderChange], None]) -> None:
        callbacks = self._subscribers.get(user, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self._subscribers.pop(user, None)

    def announce(self, change: FolderChange) -> None:
        for callback in list(self._subscribers.get(change.user, ())):
            try:
                callback(change)
            except Exception:
                log.failure("change subscriber failed for {user}", user=change.user)

    def subscriberCount(self, user: str) -> int:
        return len(self._subscribers.get(user, ()))
