# -*- test-case-name: tests.test_sync -*-
"""
Tests for L{directpush.protocol.sync}: the per-collection state it keeps
(its size, and states written by earlier versions) and the listing of
pending changes.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogPublisher

from directpush.model import Flag, FolderType, Listing, MessageInfo
from directpush.protocol import sync
from directpush.protocol.core import dumps, loads
from directpush.protocol.itemmap import ItemMap
from directpush.protocol.render import renderInline
from directpush.wbxml import E

from .test_commands import NOW, USER, CommandTestCase, message


class StateTests(CommandTestCase):
    """
    What a collection's state holds, and how big it is.
    """

    def setUp(self) -> None:
        super().setUp()
        self.setUpPhone()
        self.inbox = self.folderId(FolderType.INBOX)

    def state(self) -> Dict[str, Any]:
        raw = self.successResultOf(self.store.load(USER, self.phone.deviceId, sync.stateKey(self.inbox)))
        state = sync.loadState(raw)
        assert state is not None
        return state

    def test_packedState(self) -> None:
        """
        The items of a stored state are packed: numeric uids as one
        compressed byte each (L{sync.DENSE}), others by flag bits (L{sync.PACKED});
        they read back as the map. The older form (every uid in
        L{sync.PACKED}) still reads.
        """
        for n in range(6):
            self.deliver(f"m{n}")
        first = self.successResultOf(self.mailbox.messages(self.inbox))[0].uid
        self.successResultOf(self.mailbox.setFlags(self.inbox, first, [Flag.SEEN]))
        self.drive(self.phone.syncAll(self.inbox))
        raw = self.successResultOf(self.store.load(USER, self.phone.deviceId, sync.stateKey(self.inbox)))
        stored = loads(raw)
        self.assertNotIn("items", stored)
        self.assertEqual(stored[sync.PACKED], {})
        self.assertIsInstance(stored[sync.DENSE], str)
        items = sync.loadState(raw)["items"]
        self.assertEqual(items[first], sync.READ)
        self.assertEqual(sorted(items.values()), [0] * 5 + [1])
        older = dict(stored)
        del older[sync.DENSE]
        older[sync.PACKED] = sync._packItems(dict(items.items()))
        self.assertEqual(sorted(older[sync.PACKED]), ["0", "1"])
        self.assertEqual(older[sync.PACKED]["1"], first)
        self.assertEqual(sync.loadState(dumps(older))["items"], items)

    def test_unreadableItems(self) -> None:
        """
        A state whose items cannot be read is no state (the device starts
        over), and says so in the log.
        """
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        raw = dumps({"key": "k-1", "filter": 0, sync.DENSE: "not base64!", sync.PACKED: {}})
        self.assertIsNone(sync.loadState(raw))
        cut = loads(sync.dumpState({"key": "k-1", "filter": 0, "items": ItemMap([("7", 1)])}))
        self.assertEqual(sync.loadState(dumps(cut))["items"], {"7": 1})
        cut[sync.DENSE] = cut[sync.DENSE][:-4]
        self.assertIsNone(sync.loadState(dumps(cut)))
        dropped = [e for e in events if "unreadable sync state" in e.get("log_format", "")]
        self.assertEqual(len(dropped), 2)

    def test_previousKeyAsUndo(self) -> None:
        """
        The previous key is kept as what undoes the last answer (one entry
        per item it sent), not as a second copy of every item; an item's
        state is its flag bits.
        """
        for n in range(30):
            self.deliver(f"m{n}")
        first = self.successResultOf(self.mailbox.messages(self.inbox))[0].uid
        self.successResultOf(self.mailbox.setFlags(self.inbox, first, [Flag.SEEN, Flag.FLAGGED]))
        self.drive(self.phone.sync(self.inbox))
        self.drive(self.phone.sync(self.inbox, windowSize=10))
        self.drive(self.phone.sync(self.inbox, windowSize=10))
        state = self.state()
        self.assertEqual(len(state["items"]), 20)
        self.assertEqual(len(state["prev"]["undo"]), 10)
        self.assertEqual(set(state["prev"]["undo"].values()), {None})
        self.assertNotIn("items", state["prev"])
        self.drive(self.phone.syncAll(self.inbox, windowSize=10))
        self.assertEqual(self.state()["items"][first], sync.READ | sync.FLAGGED)
        self.assertEqual(len(self.phone.mirror(self.inbox)), 30)

    def test_repeatAfterChanges(self) -> None:
        """
        Repeating the previous key after an answer with Adds, Changes and
        Deletes, and client changes, rebuilds the same answer; the client
        changes are not applied again.
        """
        uids = [self.deliver(f"m{n}") for n in range(6)]
        self.drive(self.phone.syncAll(self.inbox))
        self.successResultOf(self.mailbox.setFlags(self.inbox, uids[0], [Flag.FLAGGED]))
        self.successResultOf(self.mailbox.delete(self.inbox, uids[1]))
        self.deliver("new")
        commands = [E("Change", E("ServerId", f"{self.inbox}:{uids[2]}"), E("ApplicationData", E("Email:Read", "1")))]
        request = E("AirSync:Sync", E("Collections", self.phone.collectionRequest(self.inbox, commands=commands)))
        first = self.drive(self.phone.call("Sync", request))
        again = self.drive(self.phone.call("Sync", request))
        self.assertEqual(again, first)
        self.assertEqual(
            sorted(c.name for c in first.find("Collections/Collection/Commands").children), ["Add", "Change", "Delete"]
        )
        self.phone.applySync(again)
        self.assertIsNone(self.drive(self.phone.call("Sync", E("AirSync:Sync", E("Collections", self.phone.collectionRequest(self.inbox))))))
        self.assertEqual(self.messages()[uids[2]].flags, {Flag.SEEN})

    def writeOldState(self, items: Dict[str, List[int]], prevKey: str, prevItems: Dict[str, List[int]]) -> None:
        """
        The state as versions before the undo map wrote it.
        """
        old = {
            "key": self.phone.collections[self.inbox].key,
            "items": items,
            "filter": 0,
            "prev": {"key": prevKey, "items": prevItems, "responses": None},
        }
        self.successResultOf(self.store.save(USER, self.phone.deviceId, {sync.stateKey(self.inbox): dumps(old)}))

    def test_oldStateCurrentKey(self) -> None:
        """
        A state with C{[read, flagged]} items is read as it was: no item
        is sent again, a flag changed since is.
        """
        uids = [self.deliver(f"m{n}") for n in range(3)]
        self.successResultOf(self.mailbox.setFlags(self.inbox, uids[0], [Flag.SEEN]))
        self.drive(self.phone.syncAll(self.inbox))
        key = self.phone.collections[self.inbox].key
        self.writeOldState({uids[0]: [1, 0], uids[1]: [0, 0], uids[2]: [0, 0]}, "stale-1", {})
        self.successResultOf(self.mailbox.setFlags(self.inbox, uids[1], [Flag.FLAGGED]))
        result = self.drive(self.phone.sync(self.inbox))[self.inbox]
        [change] = result.find("Commands").children
        self.assertEqual((change.name, change.findtext("ServerId")), ("Change", f"{self.inbox}:{uids[1]}"))
        self.assertNotEqual(result.findtext("SyncKey"), key)

    def test_oldStatePreviousKey(self) -> None:
        """
        A device repeating its previous key of a state with the previous
        items in full gets the answer rebuilt from them.
        """
        uids = [self.deliver(f"m{n}") for n in range(3)]
        self.drive(self.phone.syncAll(self.inbox))
        self.writeOldState({u: [0, 0] for u in uids}, "prev-4", {uids[0]: [0, 0]})
        # The device as it was at that key: it had the first message only.
        self.phone.collections[self.inbox].key = "prev-4"
        self.phone.collections[self.inbox].items = {
            sid: data for sid, data in self.phone.collections[self.inbox].items.items() if sid == f"{self.inbox}:{uids[0]}"
        }
        result = self.drive(self.phone.sync(self.inbox))[self.inbox]
        self.assertEqual(result.findtext("SyncKey"), "prev-5")
        self.assertEqual(
            sorted(a.findtext("ServerId") for a in result.findall("Commands/Add")),
            sorted(f"{self.inbox}:{u}" for u in uids[1:]),
        )


class PendingChangesTests(CommandTestCase):
    """
    L{sync.pendingChanges} with and without a limit.
    """

    def test_limit(self) -> None:
        """
        With a limit, the changes come first, then the newest Adds up to
        the limit, exactly the start of the unlimited list; the total
        counts everything.
        """
        inbox = self.folderId(FolderType.INBOX)
        uids = []
        for n in range(20):
            # Arrival times out of uid order, some equal.
            uids.append(self.successResultOf(self.mailbox.append(inbox, message(f"m{n}"), received=NOW - (n * 7) % 11)))
        self.successResultOf(self.mailbox.setFlags(inbox, uids[3], [Flag.SEEN]))
        items = {uids[3]: 0, uids[4]: 0, "999": 0}
        everything, total = self.successResultOf(
            _run(sync.pendingChanges(self.mailbox, inbox, items, 0, NOW))
        )
        self.assertEqual(total, len(everything))
        self.assertEqual(total, 2 + 18)
        self.assertEqual([kind for kind, _, _ in everything[:2]], ["Change", "Delete"])
        for limit in (0, 1, 2, 5, 20, 25):
            limited, count = self.successResultOf(
                _run(sync.pendingChanges(self.mailbox, inbox, items, 0, NOW, limit=limit))
            )
            self.assertEqual(count, total)
            self.assertEqual(limited, everything[: max(limit, 2)])

    def test_listing(self) -> None:
        """
        A backend's L{Listing} (MessageInfos made when asked for) gives the
        same changes as the list of them, with and without a limit.
        """
        inbox = self.folderId(FolderType.INBOX)
        uids = [
            self.successResultOf(self.mailbox.append(inbox, message(f"m{n}"), received=NOW - (n * 5) % 7))
            for n in range(12)
        ]
        self.successResultOf(self.mailbox.setFlags(inbox, uids[2], [Flag.FLAGGED]))
        items = {uids[2]: 0, uids[5]: sync.READ, "999": 0}
        infos = list(self.successResultOf(self.mailbox.messages(inbox)))

        class Infos(Listing):
            def __len__(self) -> int:
                return len(infos)

            def info(self, index: int) -> MessageInfo:
                return infos[index]

        class Box:
            def messages(self, folderId: str) -> "Deferred[Listing]":
                return succeed(Infos())

        for limit in (None, 0, 3, 20):
            expected = self.successResultOf(_run(sync.pendingChanges(self.mailbox, inbox, items, 0, NOW, limit=limit)))
            got = self.successResultOf(_run(sync.pendingChanges(Box(), inbox, items, 0, NOW, limit=limit)))  # type: ignore[arg-type]
            self.assertEqual(got, expected)
            self.assertEqual(expected[1], 3 + 10)

    def test_pages(self) -> None:
        """
        A mailbox that lists a folder a page at a time (L{IMessagePages})
        gives the same changes as its whole listing, however the pages
        fall, with deletes found among uids on any page and beyond.
        """
        from twisted.internet.task import Clock
        from twisted.python.filepath import FilePath

        from directpush.backends.maildir import MaildirBackend
        from directpush.interfaces import IMessagePages

        from .util import runNow

        clock = Clock()
        clock.advance(NOW)
        box = self.successResultOf(MaildirBackend(FilePath(self.mktemp()), runNow, clock, spillRows=8).mailbox(USER))
        self.assertTrue(IMessagePages.providedBy(box))
        inbox = next(f.id for f in self.successResultOf(box.folders()) if f.type == FolderType.INBOX)
        uids = [
            self.successResultOf(box.append(inbox, message(f"m{n}"), received=NOW - (n * 5) % 13)) for n in range(25)
        ]
        for uid in uids[2:20:4]:
            self.successResultOf(box.setFlags(inbox, uid, [Flag.SEEN]))
        for uid in uids[10:13]:
            self.successResultOf(box.delete(inbox, uid))
        items = {uid: 0 for uid in uids[::2]}
        # (and uids no listing has: odd, huge, zero, a number spelled
        # otherwise than the folder's uid for it)
        items.update({"x1": 0, "99999999999": 0, "0": 0, "0" + uids[4]: 0})

        class Whole:
            def messages(self, folderId: str) -> "Deferred[Any]":
                return box.messages(folderId)

        for pageSize in (1, 4, 7, 100):
            self.patch(sync, "PAGE_SIZE", pageSize)
            for limit in (None, 0, 3, 30):
                expected = self.successResultOf(_run(sync.pendingChanges(Whole(), inbox, items, 0, NOW, limit=limit)))  # type: ignore[arg-type]
                got = self.successResultOf(_run(sync.pendingChanges(box, inbox, items, 0, NOW, limit=limit)))
                self.assertEqual(got, expected, (pageSize, limit))
        kinds = [kind for kind, _, _ in expected[0]]
        self.assertEqual(kinds.count("Delete"), 2 + 4)
        self.assertEqual(kinds.count("Add"), 25 - 3 - 11)
        self.assertEqual(kinds.count("Change"), 4)


def _run(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


class RenderAheadTests(CommandTestCase):
    """
    With L{Services.renderAhead}, the next window of a paged Sync is
    rendered while the device reads this one.
    """

    def setUp(self) -> None:
        super().setUp()
        self.rendered: List[str] = []

        def counting(jobs: Any) -> Any:
            self.rendered.extend(job.fileReferencePrefix for job in jobs)
            return renderInline(jobs)

        self.services.render = counting
        self.services.renderAhead = True
        self.setUpPhone()
        self.inbox = self.folderId(FolderType.INBOX)

    def test_eachOnce(self) -> None:
        """
        Every message is rendered once, though most are rendered a window
        early; the device gets what it would have got otherwise.
        """
        for n in range(25):
            self.deliver(f"m{n}")
        self.drive(self.phone.sync(self.inbox))
        rounds = self.drive(self.phone.syncAll(self.inbox, windowSize=10))
        self.assertEqual(rounds, 3)
        self.assertEqual(sorted(self.rendered), sorted(set(self.rendered)))
        self.assertEqual(len(self.rendered), 25)
        self.assertEqual(sorted(s for s, _ in self.phone.mirror(self.inbox).values()), sorted(f"m{n}" for n in range(25)))
        self.assertEqual(self.services.aheads, {})

    def test_changedMeanwhile(self) -> None:
        """
        A message whose flags changed after it was rendered ahead is
        rendered again, and the device gets its new flags.
        """
        uids = [self.deliver(f"m{n}") for n in range(4)]
        self.drive(self.phone.sync(self.inbox))
        self.drive(self.phone.sync(self.inbox, windowSize=2))
        self.assertEqual(len(self.rendered), 4)
        self.successResultOf(self.mailbox.setFlags(self.inbox, uids[0], [Flag.SEEN]))
        self.drive(self.phone.sync(self.inbox, windowSize=2))
        self.assertEqual(len(self.rendered), 5)
        self.assertEqual(self.phone.mirror(self.inbox)[f"{self.inbox}:{uids[0]}"], ("m0", "1"))

    def test_forgotten(self) -> None:
        """
        What was rendered ahead for a device that does not come back is
        dropped after a while.
        """
        for n in range(4):
            self.deliver(f"m{n}")
        self.drive(self.phone.sync(self.inbox))
        self.drive(self.phone.sync(self.inbox, windowSize=2))
        self.assertEqual(len(self.services.aheads), 1)
        self.clock.advance(sync.AHEAD_SECONDS)
        self.assertEqual(self.services.aheads, {})

    def test_overtaken(self) -> None:
        """
        A chunk being read ahead when the device's next Sync comes is not
        rendered: that Sync renders what it needs itself.
        """
        for n in range(6):
            self.deliver(f"m{n}")
        # Reads to let through before holding one; -1: hold none.
        holding = [-1]
        held: List[Any] = []
        real = self.mailbox.messagesData

        def maybeHeld(folderId: str, uids: Any) -> Any:
            d = real(folderId, uids)
            holding[0] -= 1
            if holding[0] != -1:
                return d
            waiting: Deferred[Any] = Deferred()
            held.append((waiting, self.successResultOf(d)))
            return waiting

        self.patch(self.mailbox, "messagesData", maybeHeld)
        self.drive(self.phone.sync(self.inbox))
        self.drive(self.phone.sync(self.inbox, windowSize=2))
        self.assertEqual(len(self.rendered), 4)
        holding[0] = 1  # the Sync's own read passes, the one ahead waits
        self.drive(self.phone.sync(self.inbox, windowSize=2))
        self.assertEqual((len(self.rendered), len(held)), (4, 1))
        self.drive(self.phone.sync(self.inbox, windowSize=2))
        self.assertEqual(len(self.rendered), 6)
        waiting, result = held[0]
        waiting.callback(result)
        self.assertEqual(len(self.rendered), 6)
        self.assertEqual(len(self.phone.mirror(self.inbox)), 6)
