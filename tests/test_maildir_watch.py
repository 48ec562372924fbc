# -*- test-case-name: tests.test_maildir_watch -*-
"""
Tests for L{directpush.backends.maildirwatch}: announcing what others do
to watched maildir folders, with real inotify.

L{WatcherTests} drive a real inotify instance on a L{MemoryReactorClock}:
the kernel queues real events, the tests read them when they choose
(C{notifier.doRead()}) and move the clock, so debounce and retries are
exact. L{EndToEndTests} run on the real reactor, with a thread pool and
deliveries by another process, as in production.
"""

from __future__ import annotations

import gc
import itertools
import os
import shutil
import struct
import sys
import weakref
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet import reactor, threads, utils
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.inotify import IN_CREATE, IN_DELETE_SELF, IN_IGNORED, IN_Q_OVERFLOW, INotify, INotifyError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.python.runtime import platform
from twisted.trial.unittest import SynchronousTestCase, TestCase

from directpush.backends import maildirwatch
from directpush.backends.maildir import INBOX_ID, MaildirBackend
from directpush.backends.maildirwatch import DEBOUNCE, RETRY, MaildirWatcher, _Notifier
from directpush.interfaces import IMailbox
from directpush.model import Flag, FolderChange

from .util import runNow

ALICE = "alice@example.org"
START = 1_700_000_000.0

if not platform.isLinux():
    skip = "inotify is Linux only"

_names = itertools.count(1)

#: What an MDA (Dovecot's LDA, procmail, maildrop) does, in another process:
#: write into tmp/, then rename into new/.
MDA = r"""
import os, sys
folder, name, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
tmp = os.path.join(folder, "tmp", name)
with open(tmp, "wb") as f:
    f.write(b"Subject: delivered\r\n\r\n" + body + b"\r\n")
    f.flush()
    os.fsync(f.fileno())
os.rename(tmp, os.path.join(folder, "new", name))
"""


def deliver(folder: str, body: bytes = b"hello") -> str:
    """
    Deliver a message into maildir C{folder} as an MDA does, in this
    process; return its file name.
    """
    name = f"1700000000.M{next(_names)}P1.mda"
    tmp = os.path.join(folder, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(b"Subject: delivered\r\n\r\n" + body + b"\r\n")
    os.rename(tmp, os.path.join(folder, "new", name))
    return name


def kernelWatches(notifier: INotify) -> int:
    """
    How many watches the kernel holds for C{notifier}'s inotify instance.
    """
    with open(f"/proc/self/fdinfo/{notifier.fileno()}") as f:
        return sum(1 for line in f if line.startswith("inotify wd:"))


def overflowEvent() -> bytes:
    """
    The event the kernel queues when events were lost.
    """
    return struct.pack("=iIII", -1, IN_Q_OVERFLOW, 0, 0)


class Jobs:
    """
    A runBlocking that queues: the test decides when blocking work runs.
    """

    def __init__(self) -> None:
        self.queue: List[Tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, f: Callable[[], Any]) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.queue.append((f, d))
        return d

    def run(self) -> bool:
        ran = False
        while self.queue:
            f, d = self.queue.pop(0)
            ran = True
            try:
                result = f()
            except BaseException:
                d.errback()
            else:
                d.callback(result)
        return ran


class WatcherTests(SynchronousTestCase):
    """
    L{MaildirWatcher} on real inotify, a L{MemoryReactorClock} and queued
    blocking work.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(START)
        self.jobs = Jobs()
        self.root = FilePath(self.mktemp())
        self.backend = MaildirBackend(self.root, self.jobs, self.reactor, reactor=self.reactor)
        self.box = self.resultOf(self.backend.mailbox(ALICE))
        self.home = self.root.child(ALICE).path
        self.other = self.resultOf(self.box.createFolder(None, "Projects")).id
        self.otherPath = os.path.join(self.home, ".Projects")
        self.seen: List[FolderChange] = []
        self.addCleanup(self.backend.notifier.subscribe(ALICE, self.seen.append))
        self.rescans = 0
        original = maildirwatch._rescan

        def counting(box: IMailbox, folderId: str) -> Any:
            self.rescans += 1
            return original(box, folderId)  # type: ignore[arg-type]

        self.patch(maildirwatch, "_rescan", counting)

    def resultOf(self, d: "Deferred[Any]") -> Any:
        self.jobs.run()
        return self.successResultOf(d)

    @property
    def watcher(self) -> MaildirWatcher:
        assert self.backend._watcher is not None
        return self.backend._watcher

    def read(self) -> None:
        """
        Hand the events the kernel queued to the watcher.
        """
        notifier = self.watcher.notifier
        if notifier is not None:
            for _ in range(10):
                notifier.doRead()

    def settle(self) -> None:
        """
        Read events, run blocking work, move the clock, until nothing is
        left to do.
        """
        for _ in range(100):
            busy = self.jobs.run()
            if self.backend._watcher is not None:
                self.read()
            calls = self.reactor.getDelayedCalls()
            if calls:
                self.reactor.advance(max(0, min(c.getTime() for c in calls) - self.reactor.seconds()))
                busy = True
            if not busy and not self.jobs.queue:
                return
        self.fail("never settled")

    def watch(self, *folderIds: str) -> Callable[[], None]:
        unwatch = self.backend.watch(ALICE, frozenset(folderIds))
        self.addCleanup(unwatch)
        return unwatch

    def announced(self) -> List[str]:
        """
        The folders announced so far, one entry per announcement.
        """
        return [fid for change in self.seen for fid in sorted(change.folderIds)]

    # sharing and lifetime

    def test_noReactor(self) -> None:
        """
        A backend without a reactor watches nothing, but C{watch} still
        returns a function ending the watch.
        """
        backend = MaildirBackend(FilePath(self.mktemp()), runNow, self.reactor)
        unwatch = backend.watch(ALICE, frozenset({INBOX_ID}))
        unwatch()
        unwatch()
        self.assertIsNone(backend._watcher)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_oneWatchPerDirectory(self) -> None:
        """
        A folder's C{new/} and C{cur/} are watched once, however many
        watch it; the watches go with the last unwatch, and with them the
        inotify instance.
        """
        first = self.watch(INBOX_ID)
        second = self.watch(INBOX_ID)
        self.settle()
        notifier = self.watcher.notifier
        assert notifier is not None
        self.assertEqual(set(self.watcher.watching()[(ALICE, INBOX_ID)]), {"new", "cur"})
        self.assertEqual(kernelWatches(notifier), 2)
        self.assertEqual(self.watcher.references(ALICE, INBOX_ID), 2)
        first()
        first()
        self.assertEqual(kernelWatches(notifier), 2)
        self.assertEqual(self.watcher.references(ALICE, INBOX_ID), 1)
        second()
        self.assertEqual(self.watcher.watching(), {})
        self.assertIsNone(self.watcher.notifier)
        self.assertFalse(notifier.connected)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.reactor.readers, set())

    def test_overlappingWatches(self) -> None:
        """
        Watches of different folder sets share the folders they have in
        common.
        """
        both = self.watch(INBOX_ID, self.other)
        inbox = self.watch(INBOX_ID)
        self.settle()
        notifier = self.watcher.notifier
        assert notifier is not None
        self.assertEqual(kernelWatches(notifier), 4)
        both()
        self.assertEqual(kernelWatches(notifier), 2)
        self.assertEqual(list(self.watcher.watching()), [(ALICE, INBOX_ID)])
        inbox()
        self.assertIsNone(self.watcher.notifier)

    def test_deliveryBeforeWatchAdded(self) -> None:
        """
        A delivery between the first scan and the inotify watch is found
        by a second scan once the watch is in place.
        """
        self.resultOf(self.box.messages(INBOX_ID))
        self.watch(INBOX_ID)
        self.reactor.advance(0)
        # The mailbox is open already: the scan is the only job queued.
        [(scan, d)] = self.jobs.queue
        del self.jobs.queue[:]
        result = scan()
        self.assertEqual(self.watcher.watching()[(ALICE, INBOX_ID)], {})
        deliver(self.home)
        d.callback(result)
        self.assertEqual(self.seen, [])
        self.settle()
        self.assertEqual(self.announced(), [INBOX_ID])

    def test_watchingDoesNotAnnounce(self) -> None:
        """
        Starting to watch announces nothing when nothing changes.
        """
        self.watch(INBOX_ID, self.other)
        self.settle()
        self.assertEqual(self.seen, [])

    # outside changes

    def test_delivery(self) -> None:
        """
        A delivery into a watched folder is announced once, a debounce
        interval after its events.
        """
        self.watch(INBOX_ID)
        self.settle()
        scans = self.rescans
        deliver(self.home)
        self.read()
        self.assertEqual(self.rescans, scans)
        self.reactor.advance(DEBOUNCE / 2)
        self.jobs.run()
        self.assertEqual(self.rescans, scans)
        self.reactor.advance(DEBOUNCE / 2)
        self.jobs.run()
        self.assertEqual(self.rescans, scans + 1)
        self.assertEqual(self.seen, [FolderChange(ALICE, frozenset({INBOX_ID}))])
        self.settle()
        self.assertEqual(len(self.seen), 1)
        self.assertEqual(len(self.resultOf(self.box.messages(INBOX_ID))), 1)

    def test_deliveryAfterMailboxDropped(self) -> None:
        """
        With a mailbox cache that lets go of idle mailboxes, a delivery
        into a folder watched for longer than that is still announced once
        (the rescan opens the mailbox afresh), and later changes too.
        """
        self.backend = MaildirBackend(self.root, self.jobs, self.reactor, reactor=self.reactor, mailboxIdle=30)
        self.addCleanup(self.backend.stopCaching)
        self.addCleanup(self.backend.notifier.subscribe(ALICE, self.seen.append))
        del self.box
        self.watch(INBOX_ID)
        self.settle()
        ref = weakref.ref(self.resultOf(self.backend.mailbox(ALICE)))
        for _ in range(3):
            self.reactor.advance(30)
        gc.collect()
        self.assertIsNone(ref())
        self.assertEqual(self.backend.cachedMailboxes, 0)
        deliver(self.home)
        self.settle()
        self.assertEqual(self.announced(), [INBOX_ID])
        for _ in range(3):
            self.reactor.advance(30)
        deliver(self.home)
        self.settle()
        self.assertEqual(self.announced(), [INBOX_ID, INBOX_ID])
        box = self.resultOf(self.backend.mailbox(ALICE))
        self.assertEqual(len(self.resultOf(box.messages(INBOX_ID))), 2)

    def test_debounce(self) -> None:
        """
        A flurry of events is one rescan and one announcement.
        """
        self.watch(INBOX_ID)
        self.settle()
        scans = self.rescans
        for i in range(20):
            deliver(self.home, b"%d" % i)
        self.read()
        self.reactor.advance(DEBOUNCE)
        self.jobs.run()
        self.assertEqual(self.rescans, scans + 1)
        self.assertEqual(self.announced(), [INBOX_ID])
        self.settle()
        self.assertEqual(self.rescans, scans + 1)
        self.assertEqual(len(self.resultOf(self.box.messages(INBOX_ID))), 20)

    def test_eventsDuringRescan(self) -> None:
        """
        Events arriving while a rescan runs bring another rescan after it.
        """
        self.watch(INBOX_ID)
        self.settle()
        deliver(self.home)
        self.read()
        self.reactor.advance(DEBOUNCE)
        # The rescan is queued, not run; another delivery comes.
        self.assertEqual(len(self.jobs.queue), 1)
        deliver(self.home)
        self.read()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.jobs.run()
        self.assertEqual(self.announced(), [INBOX_ID])
        [again] = self.reactor.getDelayedCalls()
        self.assertAlmostEqual(again.getTime(), self.reactor.seconds() + DEBOUNCE)
        self.settle()
        # Both were found by the first scan: nothing more to say.
        self.assertEqual(self.announced(), [INBOX_ID])

    def test_flagsAndDeletion(self) -> None:
        """
        Another client renaming a message for new flags, or deleting it,
        is announced.
        """
        uid = self.resultOf(self.box.append(INBOX_ID, b"Subject: x\r\n\r\n", [Flag.SEEN]))
        self.watch(INBOX_ID)
        self.settle()
        del self.seen[:]
        cur = os.path.join(self.home, "cur")
        [name] = os.listdir(cur)
        os.rename(os.path.join(cur, name), os.path.join(cur, name.split(":")[0] + ":2,FS"))
        self.settle()
        self.assertEqual(self.announced(), [INBOX_ID])
        [info] = self.resultOf(self.box.messages(INBOX_ID))
        self.assertEqual((info.uid, info.flags), (uid, frozenset({Flag.SEEN, Flag.FLAGGED})))
        [name] = os.listdir(cur)
        os.unlink(os.path.join(cur, name))
        self.settle()
        self.assertEqual(self.announced(), [INBOX_ID, INBOX_ID])
        self.assertEqual(self.resultOf(self.box.messages(INBOX_ID)), [])

    def test_unwatchedFolder(self) -> None:
        """
        Changes to folders nobody watches are neither watched nor
        scanned nor announced.
        """
        self.watch(INBOX_ID)
        self.settle()
        scans = self.rescans
        deliver(self.otherPath)
        self.settle()
        self.assertEqual(self.seen, [])
        self.assertEqual(self.rescans, scans)

    def test_afterUnwatch(self) -> None:
        """
        Once unwatched, a folder's changes are not announced.
        """
        unwatch = self.watch(INBOX_ID)
        self.settle()
        notifier = self.watcher.notifier
        deliver(self.home)
        unwatch()
        self.assertIsNone(self.watcher.notifier)
        assert notifier is not None
        self.assertFalse(notifier.connected)
        self.settle()
        self.assertEqual(self.seen, [])

    def test_unwatchDuringRescan(self) -> None:
        """
        A rescan that finishes after the last unwatch neither announces
        nor watches again.
        """
        unwatch = self.watch(INBOX_ID)
        self.settle()
        deliver(self.home)
        self.read()
        self.reactor.advance(DEBOUNCE)
        unwatch()
        self.jobs.run()
        self.assertEqual(self.seen, [])
        self.assertIsNone(self.watcher.notifier)

    # changes made through the backend

    def test_ownChangesAnnouncedOnce(self) -> None:
        """
        Changes made through the backend are announced by it, once: the
        rescans their events cause find nothing new.
        """
        self.watch(INBOX_ID, self.other)
        self.settle()
        uid = self.resultOf(self.box.append(INBOX_ID, b"Subject: mine\r\n\r\n"))
        self.assertEqual(self.announced(), [INBOX_ID])
        self.settle()
        self.assertEqual(self.announced(), [INBOX_ID])
        self.resultOf(self.box.setFlags(INBOX_ID, uid, [Flag.SEEN]))
        self.settle()
        self.assertEqual(self.announced(), [INBOX_ID] * 2)
        moved = self.resultOf(self.box.move(INBOX_ID, uid, self.other))
        self.settle()
        self.assertEqual(self.announced(), [INBOX_ID] * 2 + sorted([INBOX_ID, self.other]))
        self.resultOf(self.box.delete(self.other, moved))
        self.settle()
        self.assertEqual(self.announced(), [INBOX_ID] * 2 + sorted([INBOX_ID, self.other]) + [self.other])

    def test_listingIsNotAChange(self) -> None:
        """
        A listing moving messages from C{new/} to C{cur/} is no change.
        """
        self.resultOf(self.box.append(INBOX_ID, b"Subject: new\r\n\r\n"))
        self.watch(INBOX_ID)
        self.settle()
        del self.seen[:]
        self.assertEqual(os.listdir(os.path.join(self.home, "cur")), [])
        self.resultOf(self.box.messages(INBOX_ID))
        self.assertEqual(len(os.listdir(os.path.join(self.home, "cur"))), 1)
        self.settle()
        self.assertEqual(self.seen, [])

    def test_listingBeforeRescan(self) -> None:
        """
        A delivery that a listing finds before the rescan does is still
        announced: the listing does not announce.
        """
        self.watch(INBOX_ID)
        self.settle()
        deliver(self.home)
        self.read()
        self.assertEqual(len(self.resultOf(self.box.messages(INBOX_ID))), 1)
        self.settle()
        self.assertEqual(self.announced(), [INBOX_ID])

    def test_ownChangeAndListingBeforeRescan(self) -> None:
        """
        An own change seen by a listing before the rescan is not
        announced again.
        """
        self.watch(INBOX_ID)
        self.settle()
        self.resultOf(self.box.append(INBOX_ID, b"Subject: mine\r\n\r\n"))
        self.resultOf(self.box.messages(INBOX_ID))
        self.settle()
        self.assertEqual(self.announced(), [INBOX_ID])

    # traps

    def test_overflow(self) -> None:
        """
        When the kernel lost events (C{IN_Q_OVERFLOW}, wd -1), every watched
        folder is rescanned, and those that changed are announced.
        """
        self.watch(INBOX_ID)
        self.watch(self.other)
        self.settle()
        scans = self.rescans
        deliver(self.home)
        deliver(self.otherPath)
        # The kernel queued their events; say it lost them instead.
        notifier = self.watcher.notifier
        assert notifier is not None
        with capturedLogs() as logs:
            notifier._doRead(overflowEvent())
        self.assertEqual(len(self.reactor.getDelayedCalls()), 2)
        self.reactor.advance(DEBOUNCE)
        self.jobs.run()
        self.assertEqual(self.rescans, scans + 2)
        self.assertEqual(sorted(self.announced()), sorted([INBOX_ID, self.other]))
        self.assertEqual(len([e for e in logs if "lost" in e["log_format"]]), 1)
        self.assertTrue(notifier.connected)
        # The real events, read late, find nothing more.
        self.settle()
        self.assertEqual(len(self.seen), 2)

    def test_folderRemoved(self) -> None:
        """
        Removing a watched folder's directory ends its watch and
        announces it; the other watched folders stay watched, by the same
        inotify instance (Twisted's would have stopped).
        """
        self.watch(INBOX_ID, self.other)
        self.settle()
        notifier = self.watcher.notifier
        assert notifier is not None
        shutil.rmtree(self.otherPath)
        self.settle()
        self.assertEqual(self.announced(), [self.other])
        self.assertIs(self.watcher.notifier, notifier)
        self.assertTrue(notifier.connected)
        self.assertEqual(self.watcher.watching()[(ALICE, self.other)], {})
        self.assertEqual(kernelWatches(notifier), 2)
        deliver(self.home)
        self.settle()
        self.assertEqual(self.announced(), [self.other, INBOX_ID])

    def test_folderDeletedThroughBackend(self) -> None:
        """
        A watched folder deleted through the backend is announced once.
        """
        self.watch(INBOX_ID, self.other)
        self.settle()
        self.resultOf(self.box.deleteFolder(self.other))
        self.settle()
        self.assertEqual(self.announced(), [self.other])
        deliver(self.home)
        self.settle()
        self.assertEqual(self.announced(), [self.other, INBOX_ID])

    def test_deleteSelfOnlyEndsThatWatch(self) -> None:
        """
        C{IN_DELETE_SELF} on one watch ends that watch alone.
        """
        self.watch(INBOX_ID, self.other)
        self.settle()
        notifier = self.watcher.notifier
        assert notifier is not None
        wd = self.watcher.watching()[(ALICE, self.other)]["cur"]
        notifier._doRead(struct.pack("=iIII", wd, IN_DELETE_SELF, 0, 0))
        self.assertTrue(notifier.connected)
        self.assertEqual(set(self.watcher.watching()[(ALICE, self.other)]), {"new"})
        # The folder is still there: the rescan watches cur/ again.
        self.settle()
        self.assertEqual(set(self.watcher.watching()[(ALICE, self.other)]), {"new", "cur"})
        self.assertEqual(self.seen, [])

    def test_renamedFolder(self) -> None:
        """
        A folder renamed through the backend stays watched under its id.
        """
        self.watch(self.other)
        self.settle()
        self.resultOf(self.box.updateFolder(self.other, None, "Renamed"))
        deliver(os.path.join(self.home, ".Renamed"))
        self.settle()
        self.assertEqual(self.announced(), [self.other])

    def test_notifierLost(self) -> None:
        """
        A notifier lost anyway is replaced, every watch added again, with
        one log line.
        """
        self.watch(INBOX_ID, self.other)
        self.settle()
        old = self.watcher.notifier
        assert old is not None
        with capturedLogs() as logs:
            old.connectionLost(Failure(ConnectionLost("gone")))
        self.assertEqual(len([e for e in logs if "lost" in e["log_format"]]), 1)
        self.assertIsNone(self.watcher.notifier)
        self.settle()
        new = self.watcher.notifier
        assert new is not None
        self.assertIsNot(new, old)
        self.assertEqual(kernelWatches(new), 4)
        self.assertEqual(self.seen, [])
        deliver(self.otherPath)
        self.settle()
        self.assertEqual(self.announced(), [self.other])

    def test_notifierLostAgain(self) -> None:
        """
        A notifier lost again soon after the last loss is replaced after
        L{RETRY} seconds, not at once.
        """
        self.watch(INBOX_ID)
        self.settle()
        first = self.watcher.notifier
        assert first is not None
        first.connectionLost(Failure(ConnectionLost()))
        self.settle()
        second = self.watcher.notifier
        assert second is not None
        second.connectionLost(Failure(ConnectionLost()))
        [call] = self.reactor.getDelayedCalls()
        self.assertEqual(call.getTime(), self.reactor.seconds() + RETRY)

    def test_cannotWatch(self) -> None:
        """
        A folder inotify cannot watch (the watch limit) is rescanned every
        L{RETRY} seconds instead, and watched once it can be.
        """
        failing = [True]

        class Limited(_Notifier):
            def watch(self, path: Any, *args: Any, **kwargs: Any) -> int:
                if failing[0]:
                    raise INotifyError("no space left on device")
                return _Notifier.watch(self, path, *args, **kwargs)

        self.backend._watcher = MaildirWatcher(self.backend, self.reactor, self.reactor, notifierFactory=Limited)
        with capturedLogs() as logs:
            self.watch(INBOX_ID)
            self.reactor.advance(0)
            self.jobs.run()
        self.assertTrue([e for e in logs if "cannot watch" in e["log_format"]])
        self.assertEqual(self.watcher.watching()[(ALICE, INBOX_ID)], {})
        [call] = self.reactor.getDelayedCalls()
        self.assertEqual(call.getTime(), self.reactor.seconds() + RETRY)
        deliver(self.home)
        failing[0] = False
        self.reactor.advance(RETRY)
        self.jobs.run()
        self.assertEqual(self.announced(), [INBOX_ID])
        self.assertEqual(set(self.watcher.watching()[(ALICE, INBOX_ID)]), {"new", "cur"})

    # odd requests

    def test_unknownFolder(self) -> None:
        """
        Unknown folders are ignored, silently and without a watch.
        """
        unwatch = self.watch("999", INBOX_ID)
        self.settle()
        self.assertEqual(self.watcher.watching()[(ALICE, "999")], {})
        self.assertEqual(self.seen, [])
        unwatch()
        self.assertEqual(self.watcher.watching(), {})

    def test_unsafeUser(self) -> None:
        """
        A user name that has no maildir is ignored.
        """
        unwatch = self.backend.watch("../etc", frozenset({INBOX_ID}))
        self.settle()
        self.assertEqual(self.watcher.watching()[("../etc", INBOX_ID)], {})
        unwatch()
        self.assertEqual(self.watcher.watching(), {})

    def test_notLoadedYet(self) -> None:
        """
        Watching a folder the backend has not read yet reads it; a
        delivery after that is announced.
        """
        backend = MaildirBackend(self.root, self.jobs, self.reactor, reactor=self.reactor)
        seen: List[FolderChange] = []
        self.addCleanup(backend.notifier.subscribe(ALICE, seen.append))
        self.addCleanup(backend.watch(ALICE, frozenset({INBOX_ID})))
        self.backend = backend
        self.settle()
        deliver(self.home)
        self.settle()
        self.assertEqual(seen, [FolderChange(ALICE, frozenset({INBOX_ID}))])

    def test_whenIdle(self) -> None:
        """
        L{MaildirWatcher.whenIdle} fires once no rescan is pending or
        running.
        """
        self.watch(INBOX_ID)
        idle = self.watcher.whenIdle()
        self.assertNoResult(idle)
        self.settle()
        self.successResultOf(idle)
        self.successResultOf(self.watcher.whenIdle())


class TwistedInternalsTests(SynchronousTestCase):
    """
    What L{_Notifier} relies on in C{twisted.internet.inotify}; a failure
    here means Twisted changed, and L{_Notifier} must follow.
    """

    def setUp(self) -> None:
        self.events: List[Tuple[int, int, Optional[bytes]]] = []
        self.lost: List[Failure] = []
        self.notifier = _Notifier(MemoryReactorClock(), self.event, lambda n, r: self.lost.append(r))
        self.addCleanup(self.notifier.stop)
        self.dir = FilePath(self.mktemp())
        self.dir.makedirs()

    def event(self, wd: int, mask: int, name: Optional[bytes]) -> None:
        self.events.append((wd, mask, name))

    def test_doReadHandsOverToDoRead(self) -> None:
        """
        C{INotify.doRead} hands what it read to C{_doRead}, which
        L{_Notifier} replaces.
        """
        wd = self.notifier.watch(self.dir, IN_CREATE)
        self.dir.child("file").touch()
        self.notifier.doRead()
        self.assertEqual(self.events, [(wd, IN_CREATE, b"file")])

    def test_watchRecordsNothing(self) -> None:
        """
        L{_Notifier.watch} adds the kernel watch through
        C{INotify._inotify} and C{_fd} without Twisted's per-watch records;
        L{_Notifier.unwatch} removes it by descriptor, and removing it
        twice is harmless.
        """
        wd = self.notifier.watch(self.dir, IN_CREATE)
        self.assertEqual((self.notifier._watchpoints, self.notifier._watchpaths), ({}, {}))
        self.dir.child("one").touch()
        self.notifier.doRead()
        self.assertEqual(self.events, [(wd, IN_CREATE, b"one")])
        self.notifier.unwatch(wd)
        self.notifier.doRead()
        self.assertEqual(self.events[1][:2], (wd, IN_IGNORED))
        del self.events[:]
        other = self.dir.child("other")
        other.makedirs()
        otherWd = self.notifier.watch(other, IN_CREATE)
        self.dir.child("two").touch()
        other.child("three").touch()
        self.notifier.unwatch(wd)
        self.notifier.doRead()
        self.assertEqual(self.events, [(otherWd, IN_CREATE, b"three")])

    def test_twistedStillDropsOverflow(self) -> None:
        """
        Twisted's own C{_doRead} still drops C{IN_Q_OVERFLOW} (if this
        fails, Twisted learned to pass it on: L{_Notifier} may get
        simpler).
        """
        called: List[Any] = []
        plain = INotify(MemoryReactorClock())
        self.addCleanup(plain.loseConnection)
        plain.watch(self.dir, callbacks=[lambda *a: called.append(a)])
        plain._doRead(overflowEvent())
        self.assertEqual(called, [])

    def test_overflowPassedOn(self) -> None:
        """
        L{_Notifier} passes the overflow event on, with wd -1.
        """
        self.notifier._doRead(overflowEvent())
        self.assertEqual(self.events, [(-1, IN_Q_OVERFLOW, None)])

    def test_partialEvent(self) -> None:
        """
        An event split across reads is handled whole.
        """
        data = struct.pack("=iIII", 3, IN_CREATE, 0, 8) + b"name\0\0\0\0"
        self.notifier._doRead(data[:10])
        self.notifier._doRead(data[10:20])
        self.assertEqual(self.events, [])
        self.notifier._doRead(data[20:])
        self.assertEqual(self.events, [(3, IN_CREATE, b"name")])

    def test_directoryRemovedKeepsOthers(self) -> None:
        """
        Unlike Twisted's, a L{_Notifier} keeps watching other directories
        after one watched directory is removed, and may watch a new
        directory at the same path.
        """
        gone = self.dir.child("gone")
        stays = self.dir.child("stays")
        gone.makedirs()
        stays.makedirs()
        goneWd = self.notifier.watch(gone, IN_CREATE)
        staysWd = self.notifier.watch(stays, IN_CREATE)
        gone.remove()
        self.notifier.doRead()
        self.assertIn((goneWd, IN_DELETE_SELF, None), self.events)
        self.assertTrue(self.notifier.connected)
        self.assertEqual(self.lost, [])
        self.assertIsNone(self.notifier._isWatched(gone))
        del self.events[:]
        stays.child("file").touch()
        self.notifier.doRead()
        self.assertEqual(self.events, [(staysWd, IN_CREATE, b"file")])
        gone.makedirs()
        again = self.notifier.watch(gone, IN_CREATE)
        self.assertNotEqual(again, goneWd)
        gone.child("file").touch()
        self.notifier.doRead()
        self.assertIn((again, IN_CREATE, b"file"), self.events)

    def test_stopIsNotLoss(self) -> None:
        """
        Stopping a L{_Notifier} on purpose is no loss; losing it is.
        """
        self.notifier.stop()
        self.assertEqual(self.lost, [])
        other = _Notifier(MemoryReactorClock(), self.event, lambda n, r: self.lost.append(r))
        other.loseConnection()
        self.assertEqual(len(self.lost), 1)


class EndToEndTests(TestCase):
    """
    Watching on the real reactor, with a thread pool for blocking work and
    deliveries by other processes.
    """

    timeout = 20

    async def setUp(self) -> None:  # type: ignore[override]
        self.root = FilePath(self.mktemp())
        self.backend = MaildirBackend(
            self.root, lambda f: threads.deferToThread(f), reactor, reactor=reactor  # type: ignore[arg-type]
        )
        self.box = await self.backend.mailbox(ALICE)
        self.home = self.root.child(ALICE).path
        self.other = (await self.box.createFolder(None, "Projects")).id
        self.otherPath = os.path.join(self.home, ".Projects")
        self.seen: List[FolderChange] = []
        self.waiters: List[Tuple[str, Deferred[None]]] = []
        self.addCleanup(self.backend.notifier.subscribe(ALICE, self.heard))

    def heard(self, change: FolderChange) -> None:
        self.seen.append(change)
        for folderId, d in list(self.waiters):
            if folderId in change.folderIds:
                self.waiters.remove((folderId, d))
                d.callback(None)

    def announcement(self, folderId: str) -> "Deferred[None]":
        """
        Fires at the next announcement of C{folderId}.
        """
        d: Deferred[None] = Deferred()
        self.waiters.append((folderId, d))
        return d

    async def watch(self, *folderIds: str) -> Callable[[], None]:
        """
        Watch, and wait until the watch is in place.
        """
        unwatch = self.backend.watch(ALICE, frozenset(folderIds))
        watcher = self.backend._watcher
        assert watcher is not None

        async def cleanup() -> None:
            await watcher.whenIdle()
            unwatch()

        self.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
        await watcher.whenIdle()
        return unwatch

    async def mda(self, folder: str, body: str = "hello") -> None:
        """
        Deliver as an MDA does, from another process.
        """
        name = f"1700000000.M{next(_names)}P{os.getpid()}.mda"
        code = await utils.getProcessValue(sys.executable, ["-c", MDA, folder, name, body], env=os.environ)
        self.assertEqual(code, 0)

    async def test_delivery(self) -> None:
        """
        A delivery by another process is announced.
        """
        await self.watch(INBOX_ID)
        announced = self.announcement(INBOX_ID)
        await self.mda(self.home)
        await announced
        self.assertEqual(self.seen, [FolderChange(ALICE, frozenset({INBOX_ID}))])
        [info] = await self.box.messages(INBOX_ID)

    async def test_flagsAndDeletion(self) -> None:
        """
        Another client renaming a message for its flags, or deleting it,
        is announced.
        """
        await self.box.append(INBOX_ID, b"Subject: x\r\n\r\n", [Flag.SEEN])
        await self.watch(INBOX_ID)
        del self.seen[:]
        cur = os.path.join(self.home, "cur")
        [name] = os.listdir(cur)
        announced = self.announcement(INBOX_ID)
        renamed = os.path.join(cur, name.split(":")[0] + ":2,RS")
        rename = "import os, sys; os.rename(sys.argv[1], sys.argv[2])"
        await utils.getProcessValue(sys.executable, ["-c", rename, os.path.join(cur, name), renamed], env=os.environ)
        await announced
        [info] = await self.box.messages(INBOX_ID)
        self.assertEqual(info.flags, frozenset({Flag.SEEN, Flag.ANSWERED}))
        announced = self.announcement(INBOX_ID)
        [name] = os.listdir(cur)
        await utils.getProcessValue(
            sys.executable, ["-c", "import os, sys; os.unlink(sys.argv[1])", os.path.join(cur, name)], env=os.environ
        )
        await announced
        self.assertEqual(await self.box.messages(INBOX_ID), [])
        self.assertEqual(len(self.seen), 2)

    async def test_sharedWatch(self) -> None:
        """
        Two watches of a folder share one inotify watch per directory;
        unwatching one keeps it, unwatching both removes it.
        """
        first = await self.watch(INBOX_ID)
        second = await self.watch(INBOX_ID)
        watcher = self.backend._watcher
        assert watcher is not None
        notifier = watcher.notifier
        assert notifier is not None
        self.assertEqual(kernelWatches(notifier), 2)
        first()
        self.assertEqual(kernelWatches(notifier), 2)
        announced = self.announcement(INBOX_ID)
        await self.mda(self.home)
        await announced
        await watcher.whenIdle()
        second()
        self.assertIsNone(watcher.notifier)
        self.assertFalse(notifier.connected)

    async def test_unwatchedFolder(self) -> None:
        """
        Deliveries into folders nobody watches are not announced.
        """
        await self.watch(INBOX_ID)
        await self.mda(self.otherPath)
        announced = self.announcement(INBOX_ID)
        await self.mda(self.home)
        await announced
        self.assertEqual(self.seen, [FolderChange(ALICE, frozenset({INBOX_ID}))])

    async def test_folderRemoved(self) -> None:
        """
        Removing a watched folder's directory announces it and does not
        stop the watching of other folders.
        """
        await self.watch(INBOX_ID, self.other)
        watcher = self.backend._watcher
        assert watcher is not None
        notifier = watcher.notifier
        gone = self.announcement(self.other)
        await utils.getProcessValue(
            sys.executable, ["-c", "import shutil, sys; shutil.rmtree(sys.argv[1])", self.otherPath], env=os.environ
        )
        await gone
        announced = self.announcement(INBOX_ID)
        await self.mda(self.home)
        await announced
        self.assertIs(watcher.notifier, notifier)
        self.assertEqual(
            self.seen, [FolderChange(ALICE, frozenset({self.other})), FolderChange(ALICE, frozenset({INBOX_ID}))]
        )

    async def test_overflow(self) -> None:
        """
        After an overflow every watched folder is rescanned and the
        changed ones are announced.
        """
        await self.watch(INBOX_ID, self.other)
        watcher = self.backend._watcher
        assert watcher is not None
        notifier = watcher.notifier
        assert notifier is not None
        # Deliver unseen: the events stay in the kernel queue.
        notifier.stopReading()
        await self.mda(self.home)
        await self.mda(self.otherPath)
        both = [self.announcement(INBOX_ID), self.announcement(self.other)]
        notifier._doRead(overflowEvent())
        for d in both:
            await d
        self.assertEqual(len(self.seen), 2)
        notifier.startReading()

    async def test_ownAppendOnce(self) -> None:
        """
        An append through the backend is announced exactly once, although
        the watcher sees its events and rescans.
        """
        await self.watch(INBOX_ID)
        watcher = self.backend._watcher
        assert watcher is not None
        rescanned = watcher.whenRescanned()
        await self.box.append(INBOX_ID, b"Subject: mine\r\n\r\n")
        self.assertEqual(len(self.seen), 1)
        user, folderId, announced = await rescanned
        self.assertEqual((user, folderId, announced), (ALICE, INBOX_ID, False))
        await watcher.whenIdle()
        self.assertEqual(self.seen, [FolderChange(ALICE, frozenset({INBOX_ID}))])

    async def test_notifierLost(self) -> None:
        """
        A notifier lost anyway is rebuilt; deliveries are announced again.
        """
        await self.watch(INBOX_ID)
        watcher = self.backend._watcher
        assert watcher is not None
        old = watcher.notifier
        assert old is not None
        old.connectionLost(Failure(ConnectionLost()))
        await watcher.whenIdle()
        self.assertIsNotNone(watcher.notifier)
        self.assertIsNot(watcher.notifier, old)
        announced = self.announcement(INBOX_ID)
        await self.mda(self.home)
        await announced
