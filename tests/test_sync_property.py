# -*- test-case-name: tests.test_sync_property -*-
"""
Property: whatever happens to a mailbox from outside (deliveries, flag
changes, deletions, moves) interleaved with a device's Syncs (carrying its
own changes, some losing their answer and being repeated with the old
key), after every completed Sync the device's mirror equals the mailbox:
nothing lost, nothing duplicated, every flag right.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any, Dict, List, Optional

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from directpush import wbxml
from directpush.backends._diskindex import SPILL_ROWS
from directpush.backends.maildir import MaildirBackend
from directpush.backends.memory import MemoryBackend
from directpush.model import Flag, FolderType
from directpush.protocol.commands import makeDispatcher
from directpush.protocol import sync
from directpush.protocol.core import Policy, Services
from directpush.state.memory import MemoryStateStore
from directpush.wbxml import E

from .phone import Phone, dispatcherTransport
from .util import runNow

USER = "alice@example.org"


def result(d: "Deferred[Any]") -> Any:
    """
    The result of a Deferred that has fired (everything here is
    synchronous); its failure raised.
    """
    out: List[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class SyncMachine(RuleBasedStateMachine):
    """
    One device mirroring an Inbox and an Archive folder.
    """

    backendKind = "memory"
    renderAhead = False
    spillRows = SPILL_ROWS

    @initialize()
    def start(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.tmp: Optional[str] = None
        if self.backendKind == "maildir":
            self.tmp = tempfile.mkdtemp()
            backend: Any = MaildirBackend(FilePath(self.tmp), runNow, self.clock, spillRows=self.spillRows)
        else:
            backend = MemoryBackend(self.clock)
        services = Services(backend, MemoryStateStore(), self.clock, policy=Policy.NONE, renderAhead=self.renderAhead)
        self.phone = Phone(dispatcherTransport(makeDispatcher(services), USER))
        self.mailbox = result(backend.mailbox(USER))
        self.inbox = next(f.id for f in result(self.mailbox.folders()) if f.type == FolderType.INBOX)
        self.archive = result(self.mailbox.createFolder(None, "Archive")).id
        self.drive(self.phone.folderSync())
        self.pending: Dict[str, List[wbxml.Element]] = {self.inbox: [], self.archive: []}
        self.count = 0

    def teardown(self) -> None:
        if getattr(self, "tmp", None):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def drive(self, coroutine: Any) -> Any:
        return result(Deferred.fromCoroutine(coroutine))

    def uids(self, folderId: str) -> List[str]:
        return sorted(i.uid for i in result(self.mailbox.messages(folderId)))

    # Changes from outside.

    @rule(inInbox=st.booleans())
    def deliver(self, inInbox: bool) -> None:
        self.clock.advance(1)
        self.count += 1
        raw = f"From: b@example.org\r\nTo: {USER}\r\nSubject: m{self.count}\r\n\r\nbody {self.count}\r\n".encode()
        result(self.mailbox.append(self.inbox if inInbox else self.archive, raw))

    @rule(data=st.data(), seen=st.booleans(), flagged=st.booleans(), inInbox=st.booleans())
    def changeFlags(self, data: st.DataObject, seen: bool, flagged: bool, inInbox: bool) -> None:
        folder = self.inbox if inInbox else self.archive
        uids = self.uids(folder)
        if uids:
            uid = data.draw(st.sampled_from(uids))
            flags = ([Flag.SEEN] if seen else []) + ([Flag.FLAGGED] if flagged else [])
            result(self.mailbox.setFlags(folder, uid, flags))

    @rule(data=st.data(), inInbox=st.booleans())
    def deleteOutside(self, data: st.DataObject, inInbox: bool) -> None:
        folder = self.inbox if inInbox else self.archive
        uids = self.uids(folder)
        if uids:
            result(self.mailbox.delete(folder, data.draw(st.sampled_from(uids))))

    @rule(data=st.data(), fromInbox=st.booleans())
    def moveOutside(self, data: st.DataObject, fromInbox: bool) -> None:
        source, target = (self.inbox, self.archive) if fromInbox else (self.archive, self.inbox)
        uids = self.uids(source)
        if uids:
            result(self.mailbox.move(source, data.draw(st.sampled_from(uids)), target))

    # The device's own changes, sent with its next Sync.

    @rule(data=st.data(), kind=st.sampled_from(["read", "unread", "flag", "unflag", "delete"]), inInbox=st.booleans())
    def deviceChange(self, data: st.DataObject, kind: str, inInbox: bool) -> None:
        folder = self.inbox if inInbox else self.archive
        mirror = self.phone.collections.get(folder)
        if mirror is None or not mirror.items:
            return
        serverId = data.draw(st.sampled_from(sorted(mirror.items)))
        if any(c.findtext("ServerId") == serverId for c in self.pending[folder]):
            return  # one change per item per Sync, as phones batch them
        if kind == "delete":
            self.pending[folder].append(E("AirSync:Delete", E("ServerId", serverId)))
            del mirror.items[serverId]  # a phone removes it at once
            return
        item = mirror.items[serverId]
        if kind in ("read", "unread"):
            field = E("Email:Read", "1" if kind == "read" else "0")
        else:
            field = E("Email:Flag", E("Status", "2"), E("FlagType", "Flag for follow up")) if kind == "flag" else E("Email:Flag")
        item.children = [c for c in item.children if c.qname != field.qname] + [field]
        self.pending[folder].append(E("AirSync:Change", E("ServerId", serverId), E("ApplicationData", field)))

    @rule(inInbox=st.booleans(), window=st.integers(1, 7), lose=st.lists(st.booleans(), max_size=6))
    def sync(self, inInbox: bool, window: int, lose: List[bool]) -> None:
        """
        Sync one collection to the end; answers marked lost never reach
        the phone, which repeats the same request (the old key).
        """
        folder = self.inbox if inInbox else self.archive
        if self.phone.collections.get(folder) is None:
            self.phone.applySync(self.drive(self.phone.call("Sync", E("AirSync:Sync", E("Collections", self.phone.collectionRequest(folder))))))
        losses = iter(lose)
        commands, self.pending[folder] = self.pending[folder], []
        while True:
            request = E("AirSync:Sync", E("Collections", self.phone.collectionRequest(folder, windowSize=window, commands=commands)))
            answer = self.drive(self.phone.call("Sync", request))
            if next(losses, False):
                continue  # lost on the way: the same request again
            self.phone.applySync(answer)
            commands = []
            collection = answer.find("Collections/Collection") if answer is not None else None
            if collection is None or collection.find("MoreAvailable") is None:
                break
        self.check(folder)

    def check(self, folder: str) -> None:
        mirror = {
            sid: (data.findtext("Email:Read") == "1", data.findtext("Email:Flag/Status") == "2")
            for sid, data in self.phone.collections[folder].items.items()
        }
        truth = {
            f"{folder}:{info.uid}": (Flag.SEEN in info.flags, Flag.FLAGGED in info.flags)
            for info in result(self.mailbox.messages(folder))
        }
        assert mirror == truth, (folder, mirror, truth)

    @invariant()
    def subjectsUnique(self) -> None:
        """
        The device never holds one message twice.
        """
        if not hasattr(self, "phone"):
            return
        for collection in self.phone.collections.values():
            subjects = [d.findtext("Email:Subject") for d in collection.items.values()]
            assert len(subjects) == len(set(subjects)), subjects


class MaildirSyncMachine(SyncMachine):
    backendKind = "maildir"


class MaildirSpilledSyncMachine(MaildirSyncMachine):
    # Folders spill to disk at their third message, and Syncs walk them
    # three messages a page.
    spillRows = 2

    def __init__(self) -> None:
        super().__init__()
        self.pageSize = sync.PAGE_SIZE
        sync.PAGE_SIZE = 3

    def teardown(self) -> None:
        sync.PAGE_SIZE = self.pageSize
        super().teardown()


class RenderAheadSyncMachine(SyncMachine):
    renderAhead = True


class SyncPropertyTests(SynchronousTestCase):
    """
    The property, against each backend.
    """

    def test_memory(self) -> None:
        """
        Against the memory backend, the reference.
        """
        run_state_machine_as_test(
            SyncMachine,
            settings=settings(
                max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
            ),
        )

    def test_maildir(self) -> None:
        """
        Against the maildir backend on a real filesystem.
        """
        run_state_machine_as_test(
            MaildirSyncMachine,
            settings=settings(
                max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
            ),
        )

    def test_maildirSpilled(self) -> None:
        """
        Against the maildir backend with its folder indexes on disk.
        """
        run_state_machine_as_test(
            MaildirSpilledSyncMachine,
            settings=settings(
                max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
            ),
        )

    def test_renderAhead(self) -> None:
        """
        Against the memory backend, rendering the next window ahead.
        """
        run_state_machine_as_test(
            RenderAheadSyncMachine,
            settings=settings(
                max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
            ),
        )
