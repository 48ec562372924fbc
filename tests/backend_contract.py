# -*- test-case-name: tests.test_backend_memory,tests.test_backend_maildir -*-
"""
The contract every L{IMailboxBackend} keeps, as a mixin for
L{SynchronousTestCase} subclasses (the Tahoe-LAFS/txacme pattern: one
suite, run against every implementation).

A subclass provides L{BackendContractTests.makeBackend}, building the
backend on C{self.clock}; a backend that runs its work through a
C{runBlocking} callable is given a synchronous one (L{tests.util.runNow})
so that C{successResultOf} sees results at once, and L{flush} is the hook
for anything that still needs driving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Set, Type, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from directpush.interfaces import IChangeNotifier, IMailbox, IMailboxBackend
from directpush.model import (
    ID_PATTERN,
    SPECIAL_FOLDERS,
    Flag,
    Folder,
    FolderChange,
    FolderExists,
    FolderType,
    InvalidFolderName,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
    SpecialFolder,
)

if TYPE_CHECKING:
    from twisted.trial.unittest import SynchronousTestCase

    _Base = SynchronousTestCase
else:
    _Base = object

T = TypeVar("T")

#: Where the test clock starts: a plausible "now", so that received times
#: look like real ones.
START = 1_700_000_000.0

ALICE = "alice@example.org"
BOB = "bob@example.org"

#: Every byte value, bare CR, bare LF, CRLF and NUL: a store must keep raw
#: messages byte for byte.
RAW = (
    b"From: Alice <alice@example.org>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"\r\n"
    b"line one\r\nbare lf\nbare cr\rnul\x00 end\r\n"
    + bytes(range(256))
    + b"\r\n.\r\n"
)


def message(n: int) -> bytes:
    """
    A small distinct message.
    """
    return b"Subject: message %d\r\n\r\nbody %d\r\n" % (n, n)


class BackendContractTests(_Base):
    """
    The L{IMailboxBackend}/L{IMailbox} contract of
    L{directpush.interfaces}, with the errors of L{directpush.model}.
    """

    clock: Clock

    #: How finely the store keeps received times, in seconds (a file
    #: system: at least the millisecond; IMAP's INTERNALDATE: the second).
    timeResolution = 0.001

    def stored(self, raw: bytes) -> bytes:
        """
        The bytes the store gives back for C{raw}: exactly C{raw} (every
        byte value, any line ending, empty), unless the store's protocol
        defines a canonical form (IMAP: lines end in CRLF).
        """
        return raw

    def makeBackend(self) -> IMailboxBackend:
        """
        A fresh, empty backend using C{self.clock}.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement makeBackend")

    def flush(self) -> None:
        """
        Drive any work the backend has pending (default: none, for
        backends given a synchronous runBlocking).
        """

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.clock = Clock()
        self.clock.advance(START)
        self.backend = self.makeBackend()

    # helpers

    def resultOf(self, d: "Deferred[T]") -> T:
        """
        The result C{d} has after L{flush}.
        """
        self.flush()
        return self.successResultOf(d)

    def failureOf(self, d: "Deferred[Any]", *errors: Type[BaseException]) -> Failure:
        """
        The failure (one of C{errors}) C{d} has after L{flush}.
        """
        self.flush()
        return self.failureResultOf(d, *errors)

    def assertClose(self, received: float, expected: float) -> None:
        """
        Times match to L{timeResolution} (a file system keeps at least the
        millisecond).
        """
        self.assertTrue(abs(received - expected) < self.timeResolution, f"{received!r} != {expected!r}")

    def mailbox(self, user: str = ALICE) -> IMailbox:
        return self.resultOf(self.backend.mailbox(user))

    def folders(self, box: IMailbox) -> List[Folder]:
        return self.resultOf(box.folders())

    def byId(self, box: IMailbox) -> Dict[str, Folder]:
        return {f.id: f for f in self.folders(box)}

    def special(self, box: IMailbox, kind: FolderType) -> Folder:
        [folder] = [f for f in self.folders(box) if f.type == kind]
        return folder

    def inbox(self, box: IMailbox) -> str:
        return self.special(box, FolderType.INBOX).id

    def listing(self, box: IMailbox, folderId: str) -> Dict[str, MessageInfo]:
        infos = self.resultOf(box.messages(folderId))
        byUid = {info.uid: info for info in infos}
        self.assertEqual(len(byUid), len(infos), "duplicate uids in a listing")
        return byUid

    def append(
        self,
        box: IMailbox,
        folderId: str,
        raw: bytes,
        flags: Sequence[Flag] = (),
        received: Optional[float] = None,
    ) -> str:
        return self.resultOf(box.append(folderId, raw, flags, received))

    def changes(self, user: str = ALICE) -> List[FolderChange]:
        """
        Subscribe to C{user}'s changes; the returned list fills up.
        """
        seen: List[FolderChange] = []
        unsubscribe = self.backend.notifier.subscribe(user, seen.append)
        self.addCleanup(unsubscribe)  # type: ignore[attr-defined]
        return seen

    def changedFolders(self, seen: List[FolderChange]) -> Set[str]:
        for change in seen:
            self.assertEqual(change.user, ALICE)
        return {fid for change in seen for fid in change.folderIds}

    # interfaces

    def test_backendProvidesInterface(self) -> None:
        """
        The backend provides L{IMailboxBackend} and its notifier
        L{IChangeNotifier}.
        """
        self.assertTrue(verifyObject(IMailboxBackend, self.backend))
        self.assertTrue(verifyObject(IChangeNotifier, self.backend.notifier))

    def test_mailboxProvidesInterface(self) -> None:
        """
        A mailbox provides L{IMailbox} and knows its user.
        """
        box = self.mailbox()
        self.assertTrue(verifyObject(IMailbox, box))
        self.assertEqual(box.user, ALICE)

    def test_mailboxTwice(self) -> None:
        """
        Asking twice for a user's mailbox gives the same contents.
        """
        box = self.mailbox()
        uid = self.append(box, self.inbox(box), message(1))
        again = self.mailbox()
        self.assertEqual(self.resultOf(again.message(self.inbox(again), uid)), message(1))

    # folders

    def test_specialFolders(self) -> None:
        """
        A new mailbox has exactly one top-level folder of each special
        type, with well-formed, distinct ids.
        """
        folders = self.folders(self.mailbox())
        for kind in SPECIAL_FOLDERS:
            matching = [f for f in folders if f.type == kind]
            self.assertEqual(len(matching), 1, kind)
            self.assertIsNone(matching[0].parentId)
            self.assertTrue(matching[0].name)
        ids = [f.id for f in folders]
        self.assertEqual(len(ids), len(set(ids)))
        for folderId in ids:
            self.assertRegex(folderId, ID_PATTERN)

    def test_foldersParentsFirst(self) -> None:
        """
        L{IMailbox.folders} lists every parent before its children, however
        deep, also under the Inbox.
        """
        box = self.mailbox()
        a = self.resultOf(box.createFolder(None, "A"))
        b = self.resultOf(box.createFolder(a.id, "B"))
        self.resultOf(box.createFolder(b.id, "C"))
        self.resultOf(box.createFolder(self.inbox(box), "Under inbox"))
        # a top-level folder created after the nested ones
        self.resultOf(box.createFolder(None, "Z"))
        seen: Set[str] = set()
        for folder in self.folders(box):
            if folder.parentId is not None:
                self.assertIn(folder.parentId, seen, folder)
            seen.add(folder.id)

    def test_createFolder(self) -> None:
        """
        A created folder is a mail folder with a new, well-formed id, and
        is listed with its parent and name.
        """
        box = self.mailbox()
        before = self.byId(box)
        top = self.resultOf(box.createFolder(None, "Projects"))
        child = self.resultOf(box.createFolder(top.id, "Directpush"))
        self.assertEqual((top.parentId, top.name, top.type), (None, "Projects", FolderType.MAIL))
        self.assertEqual((child.parentId, child.name, child.type), (top.id, "Directpush", FolderType.MAIL))
        self.assertNotIn(top.id, before)
        self.assertNotEqual(top.id, child.id)
        self.assertRegex(top.id, ID_PATTERN)
        after = self.byId(box)
        self.assertEqual(after[top.id], top)
        self.assertEqual(after[child.id], child)
        self.assertEqual(self.resultOf(box.messages(child.id)), [])

    def test_createFolderNonAscii(self) -> None:
        """
        Folder names may hold any Unicode letters and punctuation but the
        forbidden few.
        """
        box = self.mailbox()
        for name in ["Entwürfe", "日本語", "a & b", "+ plus, comma -", "emoji \U0001f600"]:
            folder = self.resultOf(box.createFolder(None, name))
            self.assertEqual(self.byId(box)[folder.id].name, name)

    def test_createFolderUnknownParent(self) -> None:
        """
        Creating a folder under an unknown parent fails with
        L{NoSuchFolder}.
        """
        box = self.mailbox()
        self.failureOf(box.createFolder("nosuch", "X"), NoSuchFolder)

    def test_createFolderExists(self) -> None:
        """
        A sibling of the same name, compared case-insensitively, fails with
        L{FolderExists}; the same name under another parent is fine.
        """
        box = self.mailbox()
        top = self.resultOf(box.createFolder(None, "Work"))
        self.failureOf(box.createFolder(None, "WORK"), FolderExists)
        self.failureOf(box.createFolder(None, "work"), FolderExists)
        child = self.resultOf(box.createFolder(top.id, "work"))
        self.assertEqual(child.parentId, top.id)
        self.failureOf(box.createFolder(top.id, "Work"), FolderExists)

    def test_createFolderClashesWithSpecial(self) -> None:
        """
        A top-level folder cannot take a special folder's name, in any
        case.
        """
        box = self.mailbox()
        for folder in self.folders(box):
            if folder.type in SPECIAL_FOLDERS:
                self.failureOf(box.createFolder(None, folder.name.upper()), FolderExists)
                self.failureOf(box.createFolder(None, folder.name.lower()), FolderExists)

    def test_invalidFolderNames(self) -> None:
        """
        Empty and overlong names, names with '/', NUL, or leading or
        trailing blanks fail with L{InvalidFolderName}, on create and on
        rename.
        """
        box = self.mailbox()
        folder = self.resultOf(box.createFolder(None, "Valid"))
        for bad in ["", "x" * 1000, "a/b", "/", "nul\x00", " lead", "trail ", " "]:
            self.failureOf(box.createFolder(None, bad), InvalidFolderName)
            self.failureOf(box.updateFolder(folder.id, None, bad), InvalidFolderName)
        self.assertEqual(self.byId(box)[folder.id].name, "Valid")

    def test_renameFolder(self) -> None:
        """
        Renaming keeps the folder's id, type and parent, and its messages
        keep their uids, flags and contents.
        """
        box = self.mailbox()
        folder = self.resultOf(box.createFolder(None, "Old"))
        uids = [self.append(box, folder.id, message(n), [Flag.SEEN] if n % 2 else []) for n in range(3)]
        before = self.listing(box, folder.id)
        renamed = self.resultOf(box.updateFolder(folder.id, None, "New"))
        self.assertEqual(renamed, Folder(folder.id, None, "New", FolderType.MAIL))
        self.assertEqual(self.byId(box)[folder.id], renamed)
        self.assertEqual(self.listing(box, folder.id), before)
        for n, uid in enumerate(uids):
            self.assertEqual(self.resultOf(box.message(folder.id, uid)), message(n))
        self.assertNotIn("Old", [f.name for f in self.folders(box)])

    def test_renameFolderCase(self) -> None:
        """
        A folder may be renamed to its own name in another case, or to its
        own name.
        """
        box = self.mailbox()
        folder = self.resultOf(box.createFolder(None, "case"))
        self.assertEqual(self.resultOf(box.updateFolder(folder.id, None, "Case")).name, "Case")
        self.assertEqual(self.resultOf(box.updateFolder(folder.id, None, "Case")).name, "Case")
        self.assertEqual(self.byId(box)[folder.id].name, "Case")

    def test_moveFolder(self) -> None:
        """
        Moving a folder takes its subtree along: ids, parents of the
        children and messages all stay.
        """
        box = self.mailbox()
        a = self.resultOf(box.createFolder(None, "A"))
        b = self.resultOf(box.createFolder(None, "B"))
        c = self.resultOf(box.createFolder(b.id, "C"))
        d = self.resultOf(box.createFolder(c.id, "D"))
        uid = self.append(box, d.id, message(1), [Flag.FLAGGED])
        moved = self.resultOf(box.updateFolder(b.id, a.id, "B2"))
        self.assertEqual(moved, Folder(b.id, a.id, "B2", FolderType.MAIL))
        folders = self.byId(box)
        self.assertEqual(folders[b.id], moved)
        self.assertEqual(folders[c.id], c)
        self.assertEqual(folders[d.id], d)
        info = self.listing(box, d.id)[uid]
        self.assertEqual(info.flags, {Flag.FLAGGED})
        self.assertEqual(self.resultOf(box.message(d.id, uid)), message(1))
        # and back to the top level
        top = self.resultOf(box.updateFolder(c.id, None, "C"))
        self.assertEqual(top.parentId, None)
        self.assertEqual(self.byId(box)[d.id].parentId, c.id)
        self.assertEqual(self.resultOf(box.message(d.id, uid)), message(1))

    def test_moveFolderUnderInbox(self) -> None:
        """
        A folder can move under the Inbox and out again.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        folder = self.resultOf(box.createFolder(None, "F"))
        uid = self.append(box, folder.id, message(1))
        self.assertEqual(self.resultOf(box.updateFolder(folder.id, inbox, "F")).parentId, inbox)
        self.assertEqual(self.byId(box)[folder.id].parentId, inbox)
        self.assertEqual(self.resultOf(box.message(folder.id, uid)), message(1))
        self.assertIsNone(self.resultOf(box.updateFolder(folder.id, None, "F")).parentId)

    def test_updateFolderErrors(self) -> None:
        """
        Updating an unknown folder, or moving into an unknown parent, fails
        with L{NoSuchFolder}; onto an existing sibling name with
        L{FolderExists}.
        """
        box = self.mailbox()
        a = self.resultOf(box.createFolder(None, "A"))
        self.resultOf(box.createFolder(None, "B"))
        self.failureOf(box.updateFolder("nosuch", None, "X"), NoSuchFolder)
        self.failureOf(box.updateFolder(a.id, "nosuch", "A"), NoSuchFolder)
        self.failureOf(box.updateFolder(a.id, None, "b"), FolderExists)
        self.failureOf(box.updateFolder(a.id, None, self.special(box, FolderType.SENT).name), FolderExists)
        self.assertEqual(self.byId(box)[a.id], a)

    def test_moveFolderIntoItself(self) -> None:
        """
        A folder cannot move into itself or into one of its descendants.
        """
        box = self.mailbox()
        a = self.resultOf(box.createFolder(None, "A"))
        b = self.resultOf(box.createFolder(a.id, "B"))
        c = self.resultOf(box.createFolder(b.id, "C"))
        for target in (a, b, c):
            self.failureOf(box.updateFolder(a.id, target.id, "A"), InvalidFolderName)
        self.assertEqual(self.byId(box)[a.id], a)

    def test_specialFoldersStay(self) -> None:
        """
        Special folders cannot be renamed, moved or deleted: L{SpecialFolder}.
        """
        box = self.mailbox()
        other = self.resultOf(box.createFolder(None, "Other"))
        for folder in self.folders(box):
            if folder.type in SPECIAL_FOLDERS:
                self.failureOf(box.updateFolder(folder.id, None, "Renamed"), SpecialFolder)
                self.failureOf(box.updateFolder(folder.id, other.id, folder.name), SpecialFolder)
                self.failureOf(box.deleteFolder(folder.id), SpecialFolder)
        for kind in SPECIAL_FOLDERS:
            self.assertIsNone(self.special(box, kind).parentId)

    def test_deleteFolder(self) -> None:
        """
        Deleting a folder removes it with its subfolders and their
        messages; a new folder of the same name gets a new id.
        """
        box = self.mailbox()
        keep = self.resultOf(box.createFolder(None, "Keep"))
        a = self.resultOf(box.createFolder(None, "A"))
        b = self.resultOf(box.createFolder(a.id, "B"))
        uid = self.append(box, b.id, message(1))
        self.append(box, a.id, message(2))
        kept = self.append(box, keep.id, message(3))
        self.assertIsNone(self.resultOf(box.deleteFolder(a.id)))
        folders = self.byId(box)
        self.assertNotIn(a.id, folders)
        self.assertNotIn(b.id, folders)
        self.assertIn(keep.id, folders)
        self.failureOf(box.messages(a.id), NoSuchFolder)
        self.failureOf(box.messages(b.id), NoSuchFolder)
        self.failureOf(box.message(b.id, uid), NoSuchFolder, NoSuchMessage)
        self.failureOf(box.deleteFolder(a.id), NoSuchFolder)
        self.assertEqual(self.resultOf(box.message(keep.id, kept)), message(3))
        again = self.resultOf(box.createFolder(None, "A"))
        self.assertNotIn(again.id, (a.id, b.id))
        self.assertEqual(self.resultOf(box.messages(again.id)), [])

    def test_deleteUnknownFolder(self) -> None:
        """
        Deleting an unknown folder fails with L{NoSuchFolder}.
        """
        self.failureOf(self.mailbox().deleteFolder("nosuch"), NoSuchFolder)

    # messages

    def test_appendRoundTrip(self) -> None:
        """
        L{IMailbox.message} returns exactly the appended bytes: 8-bit,
        binary, line endings untouched.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        big = RAW * 4000
        uids = [self.append(box, inbox, raw) for raw in (RAW, b"", big, b"no newline at end")]
        self.assertEqual(
            [self.resultOf(box.message(inbox, uid)) for uid in uids],
            [self.stored(raw) for raw in (RAW, b"", big, b"no newline at end")],
        )

    def test_appendListing(self) -> None:
        """
        An appended message is listed with its uid, flags, size and
        received time.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        uid = self.append(box, inbox, RAW, [Flag.SEEN, Flag.ANSWERED], received=1_600_000_000.5)
        self.assertRegex(uid, ID_PATTERN)
        [info] = self.resultOf(box.messages(inbox))
        self.assertEqual(info.uid, uid)
        self.assertEqual(info.flags, frozenset({Flag.SEEN, Flag.ANSWERED}))
        self.assertEqual(info.size, len(self.stored(RAW)))
        self.assertClose(info.received, 1_600_000_000.5)

    def test_receivedDefaultsToNow(self) -> None:
        """
        Without a received time, a message arrives now, by the backend's
        clock.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        self.clock.advance(1234.25)
        uid = self.append(box, inbox, message(1))
        self.assertClose(self.listing(box, inbox)[uid].received, self.clock.seconds())

    def test_appendEveryFlag(self) -> None:
        """
        Every flag survives an append.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        uid = self.append(box, inbox, message(1), list(Flag))
        self.assertEqual(self.listing(box, inbox)[uid].flags, frozenset(Flag))

    def test_appendUnknownFolder(self) -> None:
        """
        Appending to an unknown folder fails with L{NoSuchFolder}.
        """
        self.failureOf(self.mailbox().append("nosuch", message(1)), NoSuchFolder)

    def test_uidsUnique(self) -> None:
        """
        Uids are well formed and distinct within a folder; each listing
        shows every message once.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        uids = [self.append(box, inbox, message(n)) for n in range(20)]
        self.assertEqual(len(set(uids)), 20)
        for uid in uids:
            self.assertRegex(uid, ID_PATTERN)
        self.assertEqual(set(self.listing(box, inbox)), set(uids))
        for n, uid in enumerate(uids):
            self.assertEqual(self.resultOf(box.message(inbox, uid)), message(n))

    def test_uidsNeverReused(self) -> None:
        """
        A uid is never given again in its folder, even after the messages
        holding the newest uids were deleted, moved away or emptied.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        trash = self.special(box, FolderType.DELETED).id
        used = {self.append(box, inbox, message(n)) for n in range(3)}
        for uid in sorted(used)[1:]:
            self.resultOf(box.delete(inbox, uid))
        fresh = self.append(box, inbox, message(3))
        self.assertNotIn(fresh, used)
        used.add(fresh)
        self.resultOf(box.move(inbox, fresh, trash))
        fresh = self.append(box, inbox, message(4))
        self.assertNotIn(fresh, used)
        used.add(fresh)
        self.resultOf(box.empty(inbox))
        fresh = self.append(box, inbox, message(5))
        self.assertNotIn(fresh, used)
        again = self.mailbox()
        self.assertNotIn(self.resultOf(again.append(inbox, message(6))), used | {fresh})

    def test_setFlags(self) -> None:
        """
        L{IMailbox.setFlags} replaces the flags; the uid, contents, size and
        received time stay.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        uid = self.append(box, inbox, RAW, [Flag.DRAFT], received=1_650_000_000)
        self.resultOf(box.setFlags(inbox, uid, [Flag.SEEN, Flag.FLAGGED]))
        self.assertEqual(self.listing(box, inbox)[uid].flags, {Flag.SEEN, Flag.FLAGGED})
        self.resultOf(box.setFlags(inbox, uid, [Flag.ANSWERED]))
        info = self.listing(box, inbox)[uid]
        self.assertEqual(info.flags, {Flag.ANSWERED})
        self.assertEqual(info.size, len(self.stored(RAW)))
        self.assertClose(info.received, 1_650_000_000)
        self.resultOf(box.setFlags(inbox, uid, []))
        self.assertEqual(self.listing(box, inbox)[uid].flags, frozenset())
        self.assertEqual(self.resultOf(box.message(inbox, uid)), self.stored(RAW))
        self.assertEqual(list(self.listing(box, inbox)), [uid])

    def test_setFlagsUnknown(self) -> None:
        """
        Setting flags on an unknown message fails with L{NoSuchMessage}; in
        an unknown folder with L{NoSuchFolder}.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        self.append(box, inbox, message(1))
        self.failureOf(box.setFlags(inbox, "999", [Flag.SEEN]), NoSuchMessage)
        self.failureOf(box.setFlags("nosuch", "1", [Flag.SEEN]), NoSuchFolder)

    def test_replace(self) -> None:
        """
        L{IMailbox.replace} swaps the contents of a message (an edited
        draft): uid, flags and received time stay, the size follows the new
        contents, the listing keeps its order, and the change is announced.
        Unknown messages and folders fail as for L{IMailbox.message}.
        """
        box = self.mailbox()
        drafts = self.special(box, FolderType.DRAFTS).id
        first = self.append(box, drafts, message(1))
        uid = self.append(box, drafts, RAW, [Flag.DRAFT, Flag.SEEN], received=1_650_000_000)
        last = self.append(box, drafts, message(3))
        seen = self.changes()
        edited = RAW + b"and a longer body\r\n" * 10
        self.resultOf(box.replace(drafts, uid, edited))
        self.assertEqual(self.resultOf(box.message(drafts, uid)), self.stored(edited))
        info = self.listing(box, drafts)[uid]
        self.assertEqual(info.flags, {Flag.DRAFT, Flag.SEEN})
        self.assertEqual(info.size, len(self.stored(edited)))
        self.assertClose(info.received, 1_650_000_000)
        self.assertEqual([i.uid for i in self.resultOf(box.messages(drafts))], [first, uid, last])
        self.assertEqual([c.folderIds for c in seen], [frozenset({drafts})])
        self.failureOf(box.replace(drafts, "999", RAW), NoSuchMessage)
        self.failureOf(box.replace("nosuch", uid, RAW), NoSuchFolder)

    def test_move(self) -> None:
        """
        A moved message keeps its contents, flags and received time, gets a
        uid in its new folder and is gone from the old one.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        archive = self.resultOf(box.createFolder(None, "Archive"))
        existing = self.append(box, archive.id, message(0))
        uid = self.append(box, inbox, RAW, [Flag.SEEN, Flag.FLAGGED], received=1_650_000_000)
        other = self.append(box, inbox, message(1))
        newUid = self.resultOf(box.move(inbox, uid, archive.id))
        self.assertRegex(newUid, ID_PATTERN)
        self.assertNotEqual(newUid, existing)
        self.assertEqual(self.resultOf(box.message(archive.id, newUid)), self.stored(RAW))
        info = self.listing(box, archive.id)[newUid]
        self.assertEqual(info.flags, {Flag.SEEN, Flag.FLAGGED})
        self.assertEqual(info.size, len(self.stored(RAW)))
        self.assertClose(info.received, 1_650_000_000)
        self.assertEqual(set(self.listing(box, inbox)), {other})
        self.failureOf(box.message(inbox, uid), NoSuchMessage)
        self.assertEqual(self.resultOf(box.message(archive.id, existing)), message(0))

    def test_moveBack(self) -> None:
        """
        A message moved away and back gets a uid its folder never used.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        trash = self.special(box, FolderType.DELETED).id
        uid = self.append(box, inbox, message(1))
        away = self.resultOf(box.move(inbox, uid, trash))
        back = self.resultOf(box.move(trash, away, inbox))
        self.assertNotEqual(back, uid)
        self.assertEqual(list(self.listing(box, inbox)), [back])
        self.assertEqual(self.listing(box, trash), {})
        self.assertEqual(self.resultOf(box.message(inbox, back)), message(1))

    def test_moveErrors(self) -> None:
        """
        Moving an unknown message fails with L{NoSuchMessage}; to or from
        an unknown folder with L{NoSuchFolder}, leaving the message where
        it was.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        uid = self.append(box, inbox, message(1))
        self.failureOf(box.move(inbox, "999", inbox), NoSuchMessage)
        self.failureOf(box.move(inbox, uid, "nosuch"), NoSuchFolder)
        self.failureOf(box.move("nosuch", uid, inbox), NoSuchFolder)
        self.assertEqual(self.resultOf(box.message(inbox, uid)), message(1))

    def test_delete(self) -> None:
        """
        A deleted message is gone; deleting it again fails with
        L{NoSuchMessage}.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        uid = self.append(box, inbox, message(1))
        other = self.append(box, inbox, message(2))
        self.assertIsNone(self.resultOf(box.delete(inbox, uid)))
        self.assertEqual(set(self.listing(box, inbox)), {other})
        self.failureOf(box.message(inbox, uid), NoSuchMessage)
        self.failureOf(box.delete(inbox, uid), NoSuchMessage)
        self.failureOf(box.delete("nosuch", other), NoSuchFolder)

    def test_empty(self) -> None:
        """
        Emptying a folder removes its messages but not its subfolders or
        their messages.
        """
        box = self.mailbox()
        folder = self.resultOf(box.createFolder(None, "Full"))
        child = self.resultOf(box.createFolder(folder.id, "Child"))
        uids = [self.append(box, folder.id, message(n)) for n in range(5)]
        kept = self.append(box, child.id, message(9))
        self.assertIsNone(self.resultOf(box.empty(folder.id)))
        self.assertEqual(self.resultOf(box.messages(folder.id)), [])
        for uid in uids:
            self.failureOf(box.message(folder.id, uid), NoSuchMessage)
        self.assertIn(child.id, self.byId(box))
        self.assertEqual(self.resultOf(box.message(child.id, kept)), message(9))
        self.assertIsNone(self.resultOf(box.empty(folder.id)))
        self.failureOf(box.empty("nosuch"), NoSuchFolder)

    def test_unknownMessage(self) -> None:
        """
        Reading an unknown or malformed uid fails with L{NoSuchMessage};
        listing or reading in an unknown folder with L{NoSuchFolder}.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        uid = self.append(box, inbox, message(1))
        for bad in ["999", "0", "", "../x", "1:2", uid + "x"]:
            self.failureOf(box.message(inbox, bad), NoSuchMessage)
        self.failureOf(box.messages("nosuch"), NoSuchFolder)
        self.failureOf(box.message("nosuch", uid), NoSuchFolder)

    def test_messagesData(self) -> None:
        """
        L{IMailbox.messagesData} returns the raw bytes of each uid asked
        for that the folder holds, by uid; unknown, malformed and deleted
        uids are left out, not failed.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        raws = [message(1), b"", RAW * 100]
        uids = [self.append(box, inbox, raw) for raw in raws]
        self.resultOf(box.delete(inbox, uids[1]))
        found = self.resultOf(box.messagesData(inbox, [uids[2], "999", uids[1], "../x", "", uids[0]]))
        self.assertEqual(found, {uids[0]: self.stored(raws[0]), uids[2]: self.stored(raws[2])})
        self.assertEqual(self.resultOf(box.messagesData(inbox, [])), {})

    def test_messagesDataOtherFolder(self) -> None:
        """
        L{IMailbox.messagesData} reads only the folder it is given; an
        unknown folder fails with L{NoSuchFolder}.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        sent = self.special(box, FolderType.SENT).id
        uid = self.append(box, sent, message(2))
        self.assertEqual(self.resultOf(box.messagesData(sent, [uid])), {uid: self.stored(message(2))})
        self.assertNotEqual(self.resultOf(box.messagesData(inbox, [uid])).get(uid), self.stored(message(2)))
        self.failureOf(box.messagesData("nosuch", [uid]), NoSuchFolder)

    # notification

    def test_announceAppend(self) -> None:
        """
        An append is announced for its folder.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        seen = self.changes()
        self.append(box, inbox, message(1))
        self.assertEqual(seen, [FolderChange(ALICE, frozenset({inbox}))])

    def test_announceSetFlags(self) -> None:
        """
        A flag change is announced for its folder.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        uid = self.append(box, inbox, message(1))
        seen = self.changes()
        self.resultOf(box.setFlags(inbox, uid, [Flag.SEEN]))
        self.assertTrue(seen)
        self.assertEqual(self.changedFolders(seen), {inbox})

    def test_announceMove(self) -> None:
        """
        A move is announced for both folders.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        trash = self.special(box, FolderType.DELETED).id
        uid = self.append(box, inbox, message(1))
        seen = self.changes()
        self.resultOf(box.move(inbox, uid, trash))
        self.assertEqual(self.changedFolders(seen), {inbox, trash})

    def test_announceDeleteAndEmpty(self) -> None:
        """
        Deleting a message and emptying a folder are announced for the
        folder.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        uid = self.append(box, inbox, message(1))
        self.append(box, inbox, message(2))
        seen = self.changes()
        self.resultOf(box.delete(inbox, uid))
        self.assertTrue(seen)
        self.assertEqual(self.changedFolders(seen), {inbox})
        del seen[:]
        self.resultOf(box.empty(inbox))
        self.assertTrue(seen)
        self.assertEqual(self.changedFolders(seen), {inbox})

    def test_unsubscribe(self) -> None:
        """
        After unsubscribing, a subscriber hears nothing more; others still
        do.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        mine: List[FolderChange] = []
        unsubscribe = self.backend.notifier.subscribe(ALICE, mine.append)
        others = self.changes()
        self.append(box, inbox, message(1))
        self.assertEqual(len(mine), 1)
        unsubscribe()
        self.append(box, inbox, message(2))
        self.assertEqual(len(mine), 1)
        self.assertEqual(len(others), 2)

    def test_announcedPerUser(self) -> None:
        """
        Changes to one user's mailbox are not announced to another's
        subscribers.
        """
        aliceBox = self.mailbox(ALICE)
        bobBox = self.mailbox(BOB)
        bobSeen: List[FolderChange] = []
        self.addCleanup(self.backend.notifier.subscribe(BOB, bobSeen.append))  # type: ignore[attr-defined]
        self.append(aliceBox, self.inbox(aliceBox), message(1))
        self.assertEqual(bobSeen, [])
        self.append(bobBox, self.inbox(bobBox), message(2))
        self.assertEqual([c.user for c in bobSeen], [BOB])

    def test_watch(self) -> None:
        """
        C{watch} returns a function ending the watch; calling it twice is
        harmless, unknown folders are ignored, watches of one folder may
        overlap, and changes made through the backend are announced
        whatever is watched.
        """
        box = self.mailbox()
        inbox = self.inbox(box)
        seen = self.changes()
        unwatch = self.backend.watch(ALICE, frozenset({inbox, "no such folder"}))
        self.assertTrue(callable(unwatch))
        again = self.backend.watch(ALICE, frozenset({inbox}))
        unknown = self.backend.watch(ALICE, frozenset({"no such folder"}))
        self.flush()
        self.append(box, inbox, message(1))
        self.assertEqual(seen, [FolderChange(ALICE, frozenset({inbox}))])
        unwatch()
        unwatch()
        again()
        unknown()
        unknown()
        self.flush()
        self.append(box, inbox, message(2))
        self.assertEqual(len(seen), 2)

    # isolation

    def test_usersIsolated(self) -> None:
        """
        Two users' mailboxes share neither folders nor messages.
        """
        alice = self.mailbox(ALICE)
        bob = self.mailbox(BOB)
        self.resultOf(alice.createFolder(None, "Alice only"))
        uid = self.append(alice, self.inbox(alice), message(1))
        self.assertNotIn("Alice only", [f.name for f in self.folders(bob)])
        self.assertEqual(self.resultOf(bob.messages(self.inbox(bob))), [])
        self.failureOf(bob.message(self.inbox(bob), uid), NoSuchMessage)
        bobUid = self.append(bob, self.inbox(bob), message(2))
        self.assertEqual(self.resultOf(alice.message(self.inbox(alice), uid)), message(1))
        self.assertEqual(self.resultOf(bob.message(self.inbox(bob), bobUid)), message(2))
        self.assertEqual(len(self.listing(alice, self.inbox(alice))), 1)
