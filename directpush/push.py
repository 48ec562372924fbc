# -*- test-case-name: tests.test_push -*-
"""
The push hub: waiting Pings and hanging Syncs, keyed by (user, device).

A waiting request costs a small record, a timer on the injected clock and
a share of its user's single change subscription. Change events come from
the backend's notifier; the backend is asked to watch exactly the folders
someone waits on, and only while they do.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Dict, FrozenSet, Optional, Set, Tuple

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from .interfaces import IMailboxBackend, IPushHub
from .model import FolderChange

log = Logger()

Verify = Callable[[FrozenSet[str]], Awaitable[FrozenSet[str]]]


@attrs.define(eq=False)
class _Waiter:
    user: str
    device: str
    folderIds: FrozenSet[str]
    verify: Verify
    deferred: "Deferred[Optional[FrozenSet[str]]]"
    timer: Optional[IDelayedCall] = None
    unwatch: Optional[Callable[[], None]] = None
    checking: bool = False
    recheck: FrozenSet[str] = frozenset()
    done: bool = False


@implementer(IPushHub)
class PushHub:
    """
    The in-process hub. Several server processes each run one; what they
    share is the state store and the change announcements.
    """

    def __init__(self, clock: IReactorTime, backend: IMailboxBackend) -> None:
        self._clock = clock
        self._backend = backend
        self._waiters: Dict[Tuple[str, str], _Waiter] = {}
        self._byUser: Dict[str, Set[_Waiter]] = {}
        self._subscriptions: Dict[str, Callable[[], None]] = {}

    # What tests and operators look at.

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def subscribedUsers(self) -> int:
        return len(self._subscriptions)

    def wait(
        self,
        user: str,
        device: str,
        folderIds: FrozenSet[str],
        timeout: float,
        verify: Verify,
    ) -> "Deferred[Optional[FrozenSet[str]]]":
        self.supersede(user, device)
        waiter = _Waiter(user, device, frozenset(folderIds), verify, Deferred(lambda d: self._remove(waiter)))
        self._waiters[(user, device)] = waiter
        users = self._byUser.setdefault(user, set())
        users.add(waiter)
        if user not in self._subscriptions:
            self._subscriptions[user] = self._backend.notifier.subscribe(user, self._changed)
        waiter.unwatch = self._backend.watch(user, waiter.folderIds)
        waiter.timer = self._clock.callLater(max(timeout, 0), self._finish, waiter, frozenset())
        return waiter.deferred

    def supersede(self, user: str, device: str) -> None:
        waiter = self._waiters.get((user, device))
        if waiter is not None:
            log.debug("{user} device {device}: waiting request superseded", user=user, device=device)
            self._finish(waiter, None)

    def _changed(self, change: FolderChange) -> None:
        for waiter in list(self._byUser.get(change.user, ())):
            touched = waiter.folderIds & change.folderIds
            if touched:
                self._check(waiter, touched)

    def _check(self, waiter: _Waiter, folderIds: FrozenSet[str]) -> None:
        """
        Ask whether C{folderIds} really changed for this device; events
        arriving meanwhile are checked after, together.
        """
        if waiter.done:
            return
        if waiter.checking:
            waiter.recheck |= folderIds
            return
        waiter.checking = True
        d = Deferred.fromCoroutine(_call(waiter.verify, folderIds))

        def checked(changed: FrozenSet[str]) -> None:
            waiter.checking = False
            if waiter.done:
                return
            if changed:
                self._finish(waiter, frozenset(changed))
            elif waiter.recheck:
                again, waiter.recheck = waiter.recheck, frozenset()
                self._check(waiter, again)

        def failed(failure: object) -> None:
            waiter.checking = False
            log.failure("checking changes for {user} device {device}", failure=failure, user=waiter.user, device=waiter.device)
            if not waiter.done:
                # Better a needless Sync than a missed message.
                self._finish(waiter, folderIds)

        d.addCallbacks(checked, failed)

    def _finish(self, waiter: _Waiter, result: Optional[FrozenSet[str]]) -> None:
        if waiter.done:
            return
        self._remove(waiter)
        waiter.deferred.callback(result)

    def _remove(self, waiter: _Waiter) -> None:
        """
        Forget C{waiter}: timer, watch, subscription when it was the
        user's last.
        """
        if waiter.done:
            return
        waiter.done = True
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        if waiter.unwatch is not None:
            waiter.unwatch()
        if self._waiters.get((waiter.user, waiter.device)) is waiter:
            del self._waiters[(waiter.user, waiter.device)]
        users = self._byUser.get(waiter.user)
        if users is not None:
            users.discard(waiter)
            if not users:
                del self._byUser[waiter.user]
                self._subscriptions.pop(waiter.user)()


async def _call(verify: Verify, folderIds: FrozenSet[str]) -> FrozenSet[str]:
    return await verify(folderIds)
