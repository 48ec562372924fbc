# -*- test-case-name: tests.test_push -*-
"""
The push hub: waiting Pings and hanging Syncs, keyed by (user, device).

A waiting request costs a small record, an entry in the heap behind the
hub's one timer on the injected clock, and a share of its user's single
change subscription. Change events come from the backend's notifier; the
backend is asked to watch exactly the folders someone waits on, and only
while they do.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Awaitable, Callable, Dict, FrozenSet, List, Optional, Tuple

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
    """
    One waiting request. Thousands wait at once, so it holds no closure:
    it is its Deferred's canceller, its timer an entry in the hub's heap.
    """

    hub: "PushHub"
    user: str
    device: str
    #: A tuple: a frozenset of one folder costs three times as much.
    folderIds: Tuple[str, ...]
    verify: Verify
    deferred: "Deferred[Optional[FrozenSet[str]]]" = attrs.field(init=False)
    unwatch: Optional[Callable[[], None]] = None
    checking: bool = False
    recheck: FrozenSet[str] = frozenset()
    done: bool = False

    def __call__(self, deferred: "Deferred[Optional[FrozenSet[str]]]") -> None:
        """
        The canceller of its Deferred: the waiter itself rather than a
        bound method of it.
        """
        self.hub._remove(self)


@implementer(IPushHub)
class PushHub:
    """
    The in-process hub. Several server processes each run one; what they
    share is the state store and the change announcements.

    Heartbeats end through one timer for the whole hub, set for the
    earliest deadline of a heap: a timer per waiting request costs a
    L{DelayedCall} and its bound methods each. Entries of requests answered
    early stay in the heap until their deadline or a compaction.
    """

    def __init__(self, clock: IReactorTime, backend: IMailboxBackend) -> None:
        self._clock = clock
        self._backend = backend
        self._waiters: Dict[Tuple[str, str], _Waiter] = {}
        self._byUser: Dict[str, List[_Waiter]] = {}
        self._subscriptions: Dict[str, Callable[[], None]] = {}
        self._deadlines: List[Tuple[float, int, _Waiter]] = []
        self._stale = 0
        self._order = itertools.count()
        self._timer: Optional[IDelayedCall] = None
        # One bound method for every user's subscription, not one each.
        self._onChange = self._changed

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
        waiter = _Waiter(self, user, device, tuple(folderIds), verify)
        waiter.deferred = Deferred(waiter)
        self._waiters[(user, device)] = waiter
        users = self._byUser.get(user)
        if users is None:
            self._byUser[user] = [waiter]
        else:
            users.append(waiter)
        if user not in self._subscriptions:
            self._subscriptions[user] = self._backend.notifier.subscribe(user, self._onChange)
        waiter.unwatch = self._backend.watch(user, frozenset(folderIds))
        heapq.heappush(self._deadlines, (self._clock.seconds() + max(timeout, 0), next(self._order), waiter))
        self._schedule()
        return waiter.deferred

    def supersede(self, user: str, device: str) -> None:
        waiter = self._waiters.get((user, device))
        if waiter is not None:
            log.debug("{user} device {device}: waiting request superseded", user=user, device=device)
            self._finish(waiter, None)

    def _changed(self, change: FolderChange) -> None:
        for waiter in list(self._byUser.get(change.user, ())):
            touched = change.folderIds.intersection(waiter.folderIds)
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
        unwatch, waiter.unwatch = waiter.unwatch, None
        # Its heap entry stays until its deadline: let go of what it holds.
        waiter.verify = _nothing
        if unwatch is not None:
            unwatch()
        if self._waiters.get((waiter.user, waiter.device)) is waiter:
            del self._waiters[(waiter.user, waiter.device)]
        users = self._byUser.get(waiter.user)
        if users is not None and waiter in users:
            users.remove(waiter)
            if not users:
                del self._byUser[waiter.user]
                self._subscriptions.pop(waiter.user)()
        self._stale += 1
        if not self._waiters:
            self._deadlines.clear()
            self._stale = 0
            self._schedule()
        elif self._stale > 64 and self._stale * 2 > len(self._deadlines):
            self._deadlines = [entry for entry in self._deadlines if not entry[2].done]
            heapq.heapify(self._deadlines)
            self._stale = 0

    def _schedule(self) -> None:
        """
        Keep the timer set for the earliest live deadline, and only then.
        """
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].done:
            heapq.heappop(deadlines)
            self._stale -= 1
        if not deadlines:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        when = deadlines[0][0]
        if self._timer is not None:
            if self._timer.getTime() <= when:
                # Early is harmless: _expire sets it again.
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, waiter = heapq.heappop(deadlines)
            if waiter.done:
                self._stale -= 1
            else:
                # _remove counts it as stale; it has left the heap already.
                self._stale -= 1
                self._finish(waiter, frozenset())
            deadlines = self._deadlines
        self._schedule()


async def _nothing(folderIds: FrozenSet[str]) -> FrozenSet[str]:
    return frozenset()


async def _call(verify: Verify, folderIds: FrozenSet[str]) -> FrozenSet[str]:
    return await verify(folderIds)
