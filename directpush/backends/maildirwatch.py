# -*- test-case-name: tests.test_maildir_watch -*-
"""
Watching maildir folders with inotify, so that mail delivered or changed
by others (an MDA such as Dovecot's LDA or procmail, another mail client
renaming files for flags or deleting them) is announced to Direct Push.

inotify is only a hint here. An event on a folder's C{new/} or C{cur/}
starts a short timer on the injected clock (L{DEBOUNCE}: the renames of
one delivery become one rescan); when it fires, the folder is rescanned
through the backend's own scan, off the reactor thread, and a
L{FolderChange} is announced only if the folder's listing (its uids and
their flags) changed. Changes made through the backend are announced by
the backend itself: they are already in its state, so the rescan finds
nothing new and says nothing.

One inotify watch per folder directory, shared by every L{watch
<MaildirWatcher.watch>} of that folder and removed with the last one.
Folders nobody watches are neither watched nor scanned.

C{twisted.internet.inotify.INotify} (the same from Twisted 24.10 to
26.10) has three traps, which L{_Notifier} avoids by replacing
C{INotify._doRead}, the hook C{INotify.doRead} hands the bytes it read
to:

  - C{IN_Q_OVERFLOW} (events were lost) comes with wd -1 and Twisted drops
    it; here it rescans every watched folder.
  - C{IN_DELETE_SELF} on any watch makes Twisted call C{loseConnection},
    ending every other watch too; here only that watch ends (its
    directory is gone), and the rescan that follows ends the folder's
    watch and announces the folder, so that devices resync.
  - Should the notifier be lost anyway, a new one is made and every watch
    added again (each folder is rescanned, then watched).

L{_Notifier} also replaces C{INotify.watch}: it adds the kernel watch
through C{INotify._inotify} and records nothing (Twisted keeps a
C{_Watch} and two map entries per watch, which thousands of waiting Pings
pay for); L{MaildirWatcher} keeps the descriptors.
L{tests.test_maildir_watch.TwistedInternalsTests} fails if Twisted
changes what this relies on.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, List, Optional, Tuple

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    INotify,
    INotifyError,
)
from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from ..model import FolderChange, NoSuchFolder
from .maildir import UnsafeUserName

if TYPE_CHECKING:
    from .maildir import MaildirBackend, MaildirMailbox, _FolderState

__all__ = ["DEBOUNCE", "RETRY", "MaildirWatcher"]

log = Logger()

#: Seconds from the first event on a folder to its rescan. A delivery is
#: one rename into new/, a flag change one rename in cur/: their events
#: come in one read, which a millisecond lets finish; every millisecond
#: here is push latency (it was 5 ms).
DEBOUNCE = 0.001

#: Seconds before trying again when a folder could not be watched (the
#: inotify watch limit, an unreadable directory) or the notifier keeps
#: being lost; meanwhile the folder is rescanned at this pace instead.
RETRY = 30.0

#: What a message directory is watched for: files arriving (rename from
#: tmp/, or link(2) as qmail delivers), leaving, or renamed for flags; and
#: the directory itself going away.
MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR

#: After these, the watch is over (the kernel drops it, or, for a moved
#: directory, it no longer watches the folder).
_ENDS = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT

#: struct inotify_event: int wd; uint32_t mask, cookie, len; char name[len]
_EVENT = struct.Struct("=iIII")

_SUBDIRS = ("new", "cur")

#: What a listing looks like, cheaply: message count and a hash of the
#: (uid, flags) pairs.
Fingerprint = Tuple[int, int]


class _Notifier(INotify):
    """
    An L{INotify} that hands every event, overflow included, to
    C{onEvent(wd, mask, name)} and keeps running when a watched directory
    goes away; C{onLost(notifier, reason)} hears when it stops unasked.
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        onEvent: Callable[[int, int, Optional[bytes]], None],
        onLost: Callable[["_Notifier", Failure], None],
    ) -> None:
        INotify.__init__(self, reactor)
        self._onEvent = onEvent
        self._onLost = onLost
        self._unread = b""
        self.stopping = False

    def _doRead(self, in_: bytes) -> None:
        # Replaces INotify._doRead: no event is dropped, and none ends the
        # notifier.
        data = self._unread + in_
        offset = 0
        while len(data) - offset >= _EVENT.size:
            wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
            end = offset + _EVENT.size + size
            if end > len(data):
                break
            name = data[offset + _EVENT.size : end].rstrip(b"\0") or None
            offset = end
            try:
                self._onEvent(wd, mask, name)
            except Exception:
                log.failure("handling inotify event {mask:#x} on watch {wd}", mask=mask, wd=wd)
        self._unread = data[offset:]

    def watch(self, path: "FilePath[str]", mask: int = MASK, *args: object, **kwargs: object) -> int:
        """
        Watch C{path} for C{mask} and return the watch descriptor. Unlike
        L{INotify.watch} nothing is recorded here (no C{_Watch}, no path
        maps: a few hundred bytes per watch, and thousands are held); the
        caller keeps the descriptor.

        @raise INotifyError: if the kernel refuses.
        """
        wd: int = self._inotify.add(self._fd, path, mask | IN_DELETE_SELF)
        return wd

    def unwatch(self, wd: int) -> None:
        """
        Stop watch C{wd}; harmless if the kernel dropped it already.
        """
        self._inotify.remove(self._fd, wd)

    def stop(self) -> None:
        """
        Close the notifier, on purpose.
        """
        self.stopping = True
        self.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        INotify.connectionLost(self, reason)
        if not self.stopping:
            self._onLost(self, reason)


def _fingerprint(state: "_FolderState") -> Fingerprint:
    return state.table.fingerprint()


def _rescan(box: "MaildirMailbox", folderId: str) -> Tuple[str, Optional[Fingerprint], Fingerprint]:
    """
    Blocking, under the mailbox lock: scan the folder for good and return
    its directory and its fingerprint before (L{None}: it was not loaded)
    and after.
    """
    loaded = folderId in box._states
    state = box._state(folderId)
    before = None
    if loaded:
        before = _fingerprint(state)
        box._scan(state, force=True)
    return box._dirPath(state.dirname), before, _fingerprint(state)


@attrs.define(eq=False)
class _Folder:
    """
    One watched folder.

    @ivar refs: how many L{MaildirWatcher.watch} calls want it.
    @ivar newWd: the inotify watch descriptor of C{new/}, if watched.
    @ivar curWd: the inotify watch descriptor of C{cur/}, if watched.
    @ivar path: the folder directory those watches were added in.
    @ivar fingerprint: the listing as of the last rescan.
    @ivar announced: whether the folder was announced (by anyone) since.
    @ivar timer: the pending rescan.
    @ivar scanning: whether a rescan is running.
    @ivar again: whether events came while it ran.
    @ivar known: whether a rescan ever found the folder.
    @ivar ended: whether the folder is gone (or never was).
    @ivar dropped: whether the last watch went.
    """

    user: str
    folderId: str
    refs: int = 0
    # Two fields, not a dict by subdirectory: thousands of folders are
    # watched at once.
    newWd: Optional[int] = None
    curWd: Optional[int] = None
    path: Optional[str] = None
    fingerprint: Optional[Fingerprint] = None
    announced: bool = False
    timer: Optional[IDelayedCall] = None
    scanning: bool = False
    again: bool = False
    known: bool = False
    ended: bool = False
    dropped: bool = False

    @property
    def wds(self) -> Dict[str, int]:
        """
        The watch descriptors by subdirectory.
        """
        found = {}
        if self.newWd is not None:
            found["new"] = self.newWd
        if self.curWd is not None:
            found["cur"] = self.curWd
        return found

    def setWd(self, sub: str, wd: Optional[int]) -> None:
        if sub == "new":
            self.newWd = wd
        else:
            self.curWd = wd


class _Interest:
    """
    One L{MaildirWatcher.watch} call, until its C{cancel} (the unwatch
    function handed out) runs: smaller than a closure, and one is kept per
    waiting request.
    """

    __slots__ = ("_watcher", "_user", "_folderIds", "_done")

    def __init__(self, watcher: "MaildirWatcher", user: str, folderIds: Tuple[str, ...]) -> None:
        self._watcher = watcher
        self._user = user
        self._folderIds = folderIds
        self._done = False

    def cancel(self) -> None:
        if self._done:
            return
        self._done = True
        self._watcher._release(self._user, self._folderIds)


class MaildirWatcher:
    """
    The folders of a L{MaildirBackend} that someone waits on, watched
    with one inotify instance.

    @param backend: whose folders to watch; its notifier announces.
    @param reactor: provides L{IReactorFDSet}, to read inotify events.
    @param clock: for the debounce and retry timers.
    @param debounce: seconds from an event to the rescan.
    """

    def __init__(
        self,
        backend: "MaildirBackend",
        reactor: IReactorFDSet,
        clock: IReactorTime,
        debounce: float = DEBOUNCE,
        notifierFactory: Callable[..., _Notifier] = _Notifier,
    ) -> None:
        self._backend = backend
        self._reactor = reactor
        self._clock = clock
        self._debounce = debounce
        self._notifierFactory = notifierFactory
        self._notifier: Optional[_Notifier] = None
        self._folders: Dict[Tuple[str, str], _Folder] = {}
        self._byWd: Dict[int, _Folder] = {}
        self._subscriptions: Dict[str, Callable[[], None]] = {}
        # One bound method for every user's subscription, not one each.
        self._onHeard = self._heard
        #: How many of each user's folders are watched: the subscription
        #: goes with the last (counted, not searched for: thousands are).
        self._perUser: Dict[str, int] = {}
        self._lastLost: Optional[float] = None
        self._idleWaiters: List[Deferred[None]] = []
        self._rescanWaiters: List[Deferred[Tuple[str, str, bool]]] = []

    # what tests and operators look at

    def watching(self) -> Dict[Tuple[str, str], Dict[str, int]]:
        """
        The inotify watch descriptors by (user, folder id), then by
        subdirectory.
        """
        return {key: folder.wds for key, folder in self._folders.items()}

    def references(self, user: str, folderId: str) -> int:
        """
        How many watches want this folder.
        """
        folder = self._folders.get((user, folderId))
        return 0 if folder is None else folder.refs

    @property
    def notifier(self) -> Optional[INotify]:
        """
        The inotify instance, while something is watched.
        """
        return self._notifier

    def whenIdle(self) -> "Deferred[None]":
        """
        Fires once no rescan is pending or running.
        """
        if self._idle():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        return d

    def whenRescanned(self) -> "Deferred[Tuple[str, str, bool]]":
        """
        Fires with (user, folder id, whether it was announced) after the
        next rescan of any folder.
        """
        d: Deferred[Tuple[str, str, bool]] = Deferred()
        self._rescanWaiters.append(d)
        return d

    # watching

    def watch(self, user: str, folderIds: FrozenSet[str]) -> Callable[[], None]:
        """
        See L{directpush.interfaces.IMailboxBackend.watch}.
        """
        ids = tuple(sorted(set(folderIds)))
        for folderId in ids:
            key = (user, folderId)
            folder = self._folders.get(key)
            if folder is None:
                folder = self._folders[key] = _Folder(user, folderId)
                self._perUser[user] = self._perUser.get(user, 0) + 1
                self._subscribe(user)
                self._schedule(folder, 0)
            elif folder.ended:
                # Asked for again: perhaps it exists now.
                folder.ended = False
                self._schedule(folder, 0)
            folder.refs += 1
        return _Interest(self, user, ids).cancel

    def _release(self, user: str, folderIds: Tuple[str, ...]) -> None:
        for folderId in folderIds:
            folder = self._folders[(user, folderId)]
            folder.refs -= 1
            if not folder.refs:
                self._drop(folder)
        self._checkIdle()

    def _drop(self, folder: _Folder) -> None:
        folder.dropped = True
        del self._folders[(folder.user, folder.folderId)]
        if folder.timer is not None:
            folder.timer.cancel()
            folder.timer = None
        self._unwatchDirs(folder)
        left = self._perUser[folder.user] - 1
        if left:
            self._perUser[folder.user] = left
        else:
            del self._perUser[folder.user]
            self._subscriptions.pop(folder.user)()
        if not self._folders and self._notifier is not None:
            notifier, self._notifier = self._notifier, None
            notifier.stop()

    def _subscribe(self, user: str) -> None:
        """
        Hear every announcement for C{user}'s folders, ours and the
        backend's, to know what subscribers were told.
        """
        if user in self._subscriptions:
            return
        self._subscriptions[user] = self._backend.notifier.subscribe(user, self._onHeard)

    def _heard(self, change: FolderChange) -> None:
        for folderId in change.folderIds:
            folder = self._folders.get((change.user, folderId))
            if folder is not None:
                folder.announced = True

    def _getNotifier(self) -> _Notifier:
        if self._notifier is None:
            notifier = self._notifierFactory(self._reactor, self._event, self._lost)
            notifier.startReading()
            self._notifier = notifier
        return self._notifier

    def _watchDirs(self, folder: _Folder, path: str) -> bool:
        """
        Make sure C{new/} and C{cur/} of C{path} are watched; return
        whether a watch was added.
        """
        if folder.path != path:
            self._unwatchDirs(folder)
            folder.path = path
        added = False
        for sub in _SUBDIRS:
            if (folder.newWd if sub == "new" else folder.curWd) is not None:
                continue
            target = FilePath(path).child(sub)
            try:
                wd = self._getNotifier().watch(target, MASK)
            except INotifyError as e:
                log.warn(
                    "cannot watch {path} ({error}); rescanning every {retry} seconds instead",
                    path=target.path,
                    error=e,
                    retry=RETRY,
                )
                self._schedule(folder, RETRY)
                continue
            folder.setWd(sub, wd)
            self._byWd[wd] = folder
            added = True
        return added

    def _unwatchDir(self, folder: _Folder, sub: str) -> None:
        wd = folder.newWd if sub == "new" else folder.curWd
        if wd is None:
            return
        folder.setWd(sub, None)
        if self._byWd.get(wd) is folder:
            del self._byWd[wd]
        if self._notifier is not None:
            self._notifier.unwatch(wd)

    def _unwatchDirs(self, folder: _Folder) -> None:
        for sub in _SUBDIRS:
            self._unwatchDir(folder, sub)
        folder.path = None

    # events

    def _event(self, wd: int, mask: int, name: Optional[bytes]) -> None:
        if wd == -1 or mask & IN_Q_OVERFLOW:
            log.warn("inotify events were lost; rescanning {count} watched folders", count=len(self._folders))
            for folder in list(self._folders.values()):
                if not folder.ended:
                    self._schedule(folder)
            return
        folder = self._byWd.get(wd)
        if folder is None:
            return
        sub = "new" if folder.newWd == wd else "cur"
        if mask & _ENDS:
            # This directory is gone (or moved): its watch is over. The
            # rescan finds out whether the folder is.
            self._unwatchDir(folder, sub)
        self._schedule(folder)

    def _lost(self, notifier: _Notifier, reason: Failure) -> None:
        if notifier is not self._notifier:
            return
        self._notifier = None
        self._byWd.clear()
        for folder in self._folders.values():
            folder.newWd = folder.curWd = None
            folder.path = None
        now = self._clock.seconds()
        # Lost again soon after: don't spin.
        delay = RETRY if self._lastLost is not None and now - self._lastLost < RETRY else 0
        self._lastLost = now
        log.warn(
            "inotify notifier lost ({reason}); watching {count} folders again",
            reason=reason.getErrorMessage(),
            count=len(self._folders),
        )
        for folder in self._folders.values():
            if not folder.ended:
                self._schedule(folder, delay)

    # rescans

    def _schedule(self, folder: _Folder, delay: Optional[float] = None) -> None:
        """
        Rescan C{folder} after C{delay} (default: the debounce), or
        sooner if a rescan is pending already; after the running one if
        one runs.
        """
        if folder.dropped or folder.ended:
            return
        if folder.scanning:
            folder.again = True
            return
        if delay is None:
            delay = self._debounce
        if folder.timer is not None:
            if folder.timer.getTime() <= self._clock.seconds() + delay:
                return
            folder.timer.cancel()
        folder.timer = self._clock.callLater(delay, self._rescan, folder)

    def _rescan(self, folder: _Folder) -> None:
        folder.timer = None
        folder.scanning = True
        folder.again = False
        d = self._backend.mailbox(folder.user)
        d.addCallback(lambda box: box._run(lambda: _rescan(box, folder.folderId)))

        def done(result: object) -> bool:
            folder.scanning = False
            if folder.again:
                folder.again = False
                self._schedule(folder)
            if isinstance(result, Failure):
                return self._failed(folder, result)
            return self._rescanned(folder, *result)  # type: ignore[misc]

        def oops(failure: Failure) -> bool:
            log.failure("watching folder {folderId} of {user}", failure, user=folder.user, folderId=folder.folderId)
            return False

        d.addBoth(done)
        d.addErrback(oops)
        d.addCallback(lambda announced: self._finished(folder, announced))

    def _rescanned(self, folder: _Folder, path: str, before: Optional[Fingerprint], after: Fingerprint) -> bool:
        if folder.dropped:
            return False
        changed = (before is not None and before != after) or (
            # Seen by another scan (a listing) before ours, and not
            # announced (changes made through the backend are).
            folder.fingerprint is not None
            and after != folder.fingerprint
            and not folder.announced
        )
        folder.fingerprint = after
        folder.announced = False
        folder.known = True
        if self._watchDirs(folder, path):
            # Catch what happened between the scan and the watch.
            self._schedule(folder)
        if changed:
            # Last: subscribers run now, and may unwatch.
            log.debug("{user}: folder {folderId} changed on disk", user=folder.user, folderId=folder.folderId)
            self._backend.notifier.announce(FolderChange(folder.user, frozenset({folder.folderId})))
            # Hearing our own announcement says nothing about others'.
            folder.announced = False
        return changed

    def _failed(self, folder: _Folder, failure: Failure) -> bool:
        if folder.dropped:
            return False
        if failure.check(NoSuchFolder, UnsafeUserName):
            # Gone, or never was: its watch ends (a later watch() of it
            # looks again).
            self._unwatchDirs(folder)
            if folder.timer is not None:
                folder.timer.cancel()
                folder.timer = None
            folder.ended = True
            folder.fingerprint = None
            if folder.known:
                folder.known = False
                log.info("{user}: watched folder {folderId} is gone", user=folder.user, folderId=folder.folderId)
                self._backend.notifier.announce(FolderChange(folder.user, frozenset({folder.folderId})))
                return True
            log.debug("{user}: no folder {folderId} to watch", user=folder.user, folderId=folder.folderId)
            return False
        log.failure("rescanning folder {folderId} of {user}", failure, user=folder.user, folderId=folder.folderId)
        self._schedule(folder, RETRY)
        return False

    def _finished(self, folder: _Folder, announced: bool) -> None:
        waiters, self._rescanWaiters = self._rescanWaiters, []
        for d in waiters:
            d.callback((folder.user, folder.folderId, announced))
        self._checkIdle()

    def _idle(self) -> bool:
        return not any(f.scanning or f.timer is not None for f in self._folders.values())

    def _checkIdle(self) -> None:
        if self._idleWaiters and self._idle():
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)
