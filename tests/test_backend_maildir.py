# -*- test-case-name: tests.test_backend_maildir -*-
"""
Tests for L{directpush.backends.maildir}.
"""

from __future__ import annotations

import gc
import json
import os
import re
import stat
import subprocess
import sys
import threading
import weakref
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from directpush.backends import maildir
from directpush.backends._diskindex import SPILL_ROWS, DiskTable
from directpush.backends._messagetable import MessageTable
from directpush.backends.maildir import MaildirBackend, UnsafeUserName, decodeMailboxName, encodeMailboxName
from directpush.interfaces import IMailbox, IMailboxBackend
from directpush.model import (
    ID_PATTERN,
    Flag,
    Folder,
    FolderType,
    InvalidFolderName,
    Listing,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
    listingRows,
)

from .backend_contract import BackendContractTests
from .util import runNow


class MaildirContractTests(BackendContractTests, SynchronousTestCase):
    """
    L{MaildirBackend} keeps the L{IMailboxBackend} contract.
    """

    spillRows = SPILL_ROWS

    def makeBackend(self) -> IMailboxBackend:
        self.root = FilePath(self.mktemp())
        return MaildirBackend(self.root, runNow, self.clock, spillRows=self.spillRows)


class MaildirSpilledContractTests(MaildirContractTests):
    """
    The contract holds with every folder's index on disk.
    """

    spillRows = 1


#: A clock reading well after any file these tests write, so that every
#: directory counts as settled and listing caches are trusted.
LATER = 4_000_000_000.0
#: The time hand-made directories are stamped with.
PAST = 1_600_000_000


def writeFile(path: FilePath[str], data: bytes, mtime: Optional[float] = None) -> None:
    """
    Write C{data} as another program would, optionally back-dated.
    """
    path.parent().makedirs(ignoreExistingDirectory=True)
    path.setContent(data)
    if mtime is not None:
        os.utime(path.path, (mtime, mtime))


def makeMaildir(path: FilePath[str]) -> None:
    for sub in ("cur", "new", "tmp"):
        path.child(sub).makedirs(ignoreExistingDirectory=True)


class _MaildirTestMixin(SynchronousTestCase):
    """
    A maildir backend on a temporary root, with helpers.
    """

    user = "alice@example.org"
    #: see L{MaildirBackend}: the subclasses named C{Spilled} run the same
    #: tests with every folder's index on disk
    spillRows = SPILL_ROWS

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.root = FilePath(self.mktemp())
        self.root.makedirs()
        self.home = self.root.child(self.user)

    def backend(self, clock: Optional[Clock] = None) -> MaildirBackend:
        return MaildirBackend(self.root, runNow, clock or self.clock, spillRows=self.spillRows)

    def open(self, backend: Optional[MaildirBackend] = None) -> IMailbox:
        return self.successResultOf((backend or self.backend()).mailbox(self.user))

    def folders(self, box: IMailbox) -> Dict[str, Folder]:
        """
        The folders by path ("Archive/2024").
        """
        folders = self.successResultOf(box.folders())
        byId = {f.id: f for f in folders}

        def path(f: Folder) -> str:
            return f.name if f.parentId is None else path(byId[f.parentId]) + "/" + f.name

        return {path(f): f for f in folders}

    def listing(self, box: IMailbox, folderId: str) -> Dict[str, MessageInfo]:
        return {info.uid: info for info in self.successResultOf(box.messages(folderId))}

    def files(self, folder: FilePath[str], sub: str) -> List[str]:
        return sorted(folder.child(sub).listdir())


class LayoutTests(_MaildirTestMixin):
    """
    What a new mailbox looks like on disk.
    """

    def test_newMailbox(self) -> None:
        """
        A new mailbox is a maildir under the root named after the user, with
        Maildir++ subfolders for Drafts, Sent, Trash, Junk and Outbox, and a
        folder map naming the Inbox "1".
        """
        box = self.open()
        for sub in ("cur", "new", "tmp"):
            self.assertTrue(self.home.child(sub).isdir())
        for name in (".Drafts", ".Sent", ".Trash", ".Junk", ".Outbox"):
            folder = self.home.child(name)
            for sub in ("cur", "new", "tmp"):
                self.assertTrue(folder.child(sub).isdir(), name)
            self.assertTrue(folder.child("maildirfolder").exists())
        folders = self.folders(box)
        self.assertEqual(
            {path: f.type for path, f in folders.items()},
            {
                "Inbox": FolderType.INBOX,
                "Drafts": FolderType.DRAFTS,
                "Sent": FolderType.SENT,
                "Trash": FolderType.DELETED,
                "Junk": FolderType.MAIL,
                "Outbox": FolderType.OUTBOX,
            },
        )
        self.assertEqual(folders["Inbox"].id, "1")
        data = json.loads(self.home.child("directpush-folders").getContent())
        self.assertEqual(data["version"], 1)
        self.assertEqual(
            {folders[p].id for p in folders if p != "Inbox"},
            set(data["folders"].values()),
        )
        self.assertEqual(data["roles"]["SENT"], folders["Sent"].id)

    def test_junkNotRecreated(self) -> None:
        """
        Junk is made for a new mailbox only: once deleted, it stays
        deleted, also after a restart.
        """
        box = self.open()
        self.successResultOf(box.deleteFolder(self.folders(box)["Junk"].id))
        self.assertNotIn("Junk", self.folders(self.open(self.backend())))

    def test_specialFoldersRecreated(self) -> None:
        """
        A special folder removed behind our back is made again.
        """
        box = self.open()
        trashId = self.folders(box)["Trash"].id
        self.home.child(".Trash").remove()
        folders = self.folders(box)
        self.assertEqual(folders["Trash"].type, FolderType.DELETED)
        self.assertNotEqual(folders["Trash"].id, trashId)

    def test_appendedFile(self) -> None:
        """
        An appended message is a file in new/ (no flags) or cur/ (flags),
        named time.M<usec>Q<counter>R<random>.<host>,S=<size>, with
        nothing left in tmp/.
        """
        box = self.open()
        self.successResultOf(box.append("1", b"plain"))
        self.successResultOf(box.append("1", b"flagged", [Flag.SEEN, Flag.DRAFT]))
        [new] = self.files(self.home, "new")
        [cur] = self.files(self.home, "cur")
        pattern = r"1700000000\.M0Q\d+R[0-9a-f]{8}\.[^/:]+,S=%d"
        self.assertRegex(new, re.compile((pattern % 5) + r"\Z"))
        self.assertRegex(cur, re.compile((pattern % 7) + r":2,DS\Z"))
        self.assertEqual(self.files(self.home, "tmp"), [])
        self.assertEqual(self.home.child("new").child(new).getContent(), b"plain")
        self.assertEqual(stat.S_IMODE(os.stat(self.home.child("new").child(new).path).st_mode), 0o600)

    def test_listingMovesNewToCur(self) -> None:
        """
        A listing moves messages from new/ to cur/ (as Dovecot does),
        keeping the base name, so the uid stays.
        """
        box = self.open()
        uid = self.successResultOf(box.append("1", b"plain"))
        [new] = self.files(self.home, "new")
        self.assertEqual(list(self.listing(box, "1")), [uid])
        self.assertEqual(self.files(self.home, "new"), [])
        self.assertEqual(self.files(self.home, "cur"), [new + ":2,"])
        self.assertEqual(list(self.listing(box, "1")), [uid])
        self.assertEqual(self.successResultOf(box.message("1", uid)), b"plain")

    def test_uidList(self) -> None:
        """
        Each folder keeps a uid list: a header with uid validity and next
        uid, then "uid basename" lines.
        """
        box = self.open()
        uids = [self.successResultOf(box.append("1", b"m%d" % n)) for n in range(3)]
        self.assertEqual(uids, ["1", "2", "3"])
        self.listing(box, "1")
        lines = self.home.child("directpush-uidlist").getContent().decode().splitlines()
        self.assertRegex(lines[0], r"^directpush-uidlist 1 V1700000000 N\d+$")
        basenames = [name.split(":")[0] for name in self.files(self.home, "cur")]
        self.assertEqual(sorted(line.split(" ", 1)[1] for line in lines[1:]), sorted(basenames))
        self.assertEqual([line.split(" ")[0] for line in lines[1:]], ["1", "2", "3"])

    def test_uidListDropsVanished(self) -> None:
        """
        Once enough messages are gone, the uid list is rewritten without
        them, keeping the next uid.
        """
        box = self.open()
        uids = [self.successResultOf(box.append("1", b"m%d" % n)) for n in range(150)]
        for uid in uids[:-10]:
            self.successResultOf(box.delete("1", uid))
        lines = self.home.child("directpush-uidlist").getContent().decode().splitlines()
        self.assertLess(len(lines), 100)
        box = self.open(self.backend())
        self.assertEqual(sorted(self.listing(box, "1"), key=int), uids[-10:])
        self.assertEqual(self.successResultOf(box.append("1", b"new")), "151")

    def test_truncatedUidList(self) -> None:
        """
        A uid list cut short mid-line (a crash while appending) is read
        without the broken line: that message gets a new uid, the others
        keep theirs.
        """
        box = self.open()
        uids = [self.successResultOf(box.append("1", b"m%d" % n)) for n in range(3)]
        uidlist = self.home.child("directpush-uidlist")
        uidlist.setContent(uidlist.getContent()[:-5])
        box = self.open(self.backend())
        listed = self.listing(box, "1")
        self.assertEqual(len(listed), 3)
        self.assertTrue(set(uids[:2]) <= set(listed))
        self.assertNotIn(uids[2], listed)

    def test_folderCutShort(self) -> None:
        """
        A folder whose creation was cut short before its tmp/ (and new/)
        existed is completed on first use: its messages list, and a new
        one is written through tmp/ and keeps its uid list.
        """
        box = self.open()
        folder = self.successResultOf(box.createFolder(None, "Projects"))
        maildir = self.home.child(".Projects")
        maildir.child("tmp").remove()
        maildir.child("new").remove()
        box = self.open(self.backend())
        self.assertEqual(self.listing(box, folder.id), {})
        uid = self.successResultOf(box.append(folder.id, b"kept"))
        box = self.open(self.backend())
        self.assertEqual(list(self.listing(box, folder.id)), [uid])
        self.assertTrue(maildir.child("tmp").isdir())
        self.assertTrue(maildir.child("new").isdir())


class _Killed(BaseException):
    """
    The process dies here (as SIGKILL would: nothing after it runs).
    """


class RenameCutShortTests(_MaildirTestMixin):
    """
    A FolderUpdate killed part way keeps the folder's id, under whichever
    name its directory has.
    """

    def renameKilled(self, kill: str) -> "tuple[str, str]":
        box = self.open()
        folder = self.successResultOf(box.createFolder(None, "Scratch"))
        child = self.successResultOf(box.createFolder(folder.id, "Child"))
        if kill == "before the map":
            real = maildir.MaildirMailbox._saveFolderMap

            def save(self: maildir.MaildirMailbox, renaming: Any = ()) -> None:
                if not renaming:
                    raise _Killed()
                real(self, renaming)

            restore = self.patch(maildir.MaildirMailbox, "_saveFolderMap", save)
        else:
            def rename(source: str, target: str) -> None:
                raise _Killed()

            restore = self.patch(maildir.os, "rename", rename)
        d = box.updateFolder(folder.id, None, "Renamed")
        self.assertRaises(_Killed, self.failureResultOf(d).raiseException)
        restore.restore()
        return folder.id, child.id

    def names(self) -> "dict[str, tuple[str, Optional[str]]]":
        box = self.open(self.backend())
        return {f.id: (f.name, f.parentId) for f in self.successResultOf(box.folders())}

    def test_renamedNotRecorded(self) -> None:
        """
        Killed after the directories moved, before the map said so: the
        ids follow the directories.
        """
        folderId, childId = self.renameKilled("before the map")
        self.assertTrue(self.home.child(".Renamed.Child").isdir())
        names = self.names()
        self.assertEqual(names[folderId], ("Renamed", None))
        self.assertEqual(names[childId], ("Child", folderId))
        self.assertNotIn("renaming", self.home.child(maildir.FOLDERS_FILE).getContent().decode())

    def test_notRenamed(self) -> None:
        """
        Killed before the directories moved: the folders keep their ids
        under their old names.
        """
        folderId, childId = self.renameKilled("before the rename")
        names = self.names()
        self.assertEqual(names[folderId], ("Scratch", None))
        self.assertEqual(names[childId], ("Child", folderId))


class DovecotTests(_MaildirTestMixin):
    """
    An existing Dovecot (Maildir++) maildir is served as it is.
    """

    def setUp(self) -> None:
        super().setUp()
        home = self.home
        makeMaildir(home)
        self.dovecotFiles = {
            "dovecot-uidlist": b"3 V1699999999 N5 G0123456789abcdef\n3 1700000000.M1P2.host\n",
            "dovecot.index.log": bytes(range(256)),
            "subscriptions": b"Sent\nArchive\n",
            "dovecot-keywords": b"0 $Label1\n",
        }
        for name, content in self.dovecotFiles.items():
            writeFile(home.child(name), content)
        self.seen = b"From: a\r\n\r\nseen\r\n"
        writeFile(
            home.child("cur").child("1700000000.M1P2.host,S=%d,W=%d:2,S" % (len(self.seen), len(self.seen) + 1)),
            self.seen,
            mtime=1_700_000_000,
        )
        writeFile(home.child("cur").child("1700000100.M5P2.host:2,FRa"), b"flagged, keyword a", mtime=1_700_000_100)
        writeFile(home.child("new").child("1700000200.M7P2.host"), b"just delivered", mtime=1_700_000_200)
        for folder in (".Sent", ".Archive", ".Archive.2024", ".Deleted Messages", ".Entw&APw-rfe", ".INBOX.Lists"):
            makeMaildir(home.child(folder))
            writeFile(home.child(folder).child("maildirfolder"), b"")
        writeFile(home.child(".Archive.2024").child("cur").child("1704067200.M1P9.host:2,S"), b"old", mtime=1_704_067_200)
        writeFile(home.child(".Archive.2024").child("dovecot-uidlist"), b"3 V1 N2\n1 1704067200.M1P9.host\n")

    def test_folders(self) -> None:
        """
        Folders keep their names (mUTF-7 decoded) and nesting; Sent and
        "Deleted Messages" are recognised as the Sent and Deleted folders;
        missing special folders are created.
        """
        folders = self.folders(self.open())
        self.assertEqual(
            {path: f.type for path, f in folders.items()},
            {
                "Inbox": FolderType.INBOX,
                "Inbox/Lists": FolderType.MAIL,
                "Sent": FolderType.SENT,
                "Deleted Messages": FolderType.DELETED,
                "Archive": FolderType.MAIL,
                "Archive/2024": FolderType.MAIL,
                "Entwürfe": FolderType.MAIL,
                "Drafts": FolderType.DRAFTS,
                "Junk": FolderType.MAIL,
                "Outbox": FolderType.OUTBOX,
            },
        )
        self.assertFalse(self.home.child(".Trash").exists())
        self.assertFalse(self.home.child(".INBOX").exists())

    def test_messages(self) -> None:
        """
        Messages are listed with flags from the :2, suffix, the file's
        mtime as received time and its size; they read back exactly.
        """
        box = self.open()
        byContent = {
            self.successResultOf(box.message("1", info.uid)): info for info in self.listing(box, "1").values()
        }
        self.assertEqual(set(byContent), {self.seen, b"flagged, keyword a", b"just delivered"})
        seen = byContent[self.seen]
        self.assertEqual((seen.flags, seen.received, seen.size), ({Flag.SEEN}, 1_700_000_000, len(self.seen)))
        self.assertEqual(byContent[b"flagged, keyword a"].flags, {Flag.FLAGGED, Flag.ANSWERED})
        self.assertEqual(byContent[b"just delivered"].flags, frozenset())
        self.assertEqual(byContent[b"just delivered"].received, 1_700_000_200)
        archive = self.folders(box)["Archive/2024"].id
        [old] = self.listing(box, archive).values()
        self.assertEqual((old.flags, old.received), ({Flag.SEEN}, 1_704_067_200))

    def test_dovecotFilesUntouched(self) -> None:
        """
        Dovecot's own files are neither changed nor removed, whatever we
        do to the messages.
        """
        box = self.open()
        for info in self.listing(box, "1").values():
            self.successResultOf(box.setFlags("1", info.uid, [Flag.SEEN]))
        self.successResultOf(box.append("1", b"another"))
        self.successResultOf(box.empty(self.folders(box)["Archive/2024"].id))
        for name, content in self.dovecotFiles.items():
            self.assertEqual(self.home.child(name).getContent(), content)
        self.assertEqual(
            self.home.child(".Archive.2024").child("dovecot-uidlist").getContent(),
            b"3 V1 N2\n1 1704067200.M1P9.host\n",
        )

    def test_keywordsKept(self) -> None:
        """
        Setting flags keeps letters we do not model (Dovecot keywords), in
        maildir order.
        """
        box = self.open()
        [uid] = [i.uid for i in self.listing(box, "1").values() if Flag.FLAGGED in i.flags]
        self.successResultOf(box.setFlags("1", uid, [Flag.SEEN, Flag.DRAFT]))
        self.assertIn("1700000100.M5P2.host:2,DSa", self.files(self.home, "cur"))

    def test_missingParent(self) -> None:
        """
        A nested folder whose parent directory is missing gets one, so that
        it has a parent to hang from.
        """
        makeMaildir(self.home.child(".Projects.2025.Q1"))
        folders = self.folders(self.open())
        self.assertEqual(folders["Projects/2025/Q1"].parentId, folders["Projects/2025"].id)
        self.assertEqual(folders["Projects/2025"].parentId, folders["Projects"].id)
        self.assertTrue(self.home.child(".Projects").child("cur").isdir())

    def test_otherNames(self) -> None:
        """
        "Sent Items", "Deleted Items" and "Spam" are recognised; no Sent,
        Trash or Junk is added beside them.
        """
        home = self.root.child("bob")
        for folder in (".Sent Items", ".Deleted Items", ".Spam", ".drafts"):
            makeMaildir(home.child(folder))
        box = self.successResultOf(self.backend().mailbox("bob"))
        types = {path: f.type for path, f in self.folders(box).items()}
        self.assertEqual(types["Sent Items"], FolderType.SENT)
        self.assertEqual(types["Deleted Items"], FolderType.DELETED)
        self.assertEqual(types["drafts"], FolderType.DRAFTS)
        self.assertEqual(types["Spam"], FolderType.MAIL)
        self.assertEqual(sorted(types), ["Deleted Items", "Inbox", "Outbox", "Sent Items", "Spam", "drafts"])


class OutsideChangeTests(_MaildirTestMixin):
    """
    Other programs (delivery agents, Dovecot) change the maildir; listings
    see it.
    """

    def test_deliveryIntoNew(self) -> None:
        """
        A message a delivery agent drops into new/ (through tmp/) shows up
        with a new uid and reads back.
        """
        box = self.open()
        first = self.successResultOf(box.append("1", b"first"))
        self.assertEqual(list(self.listing(box, "1")), [first])
        writeFile(self.home.child("tmp").child("1700000300.M1P77.mx"), b"delivered")
        os.rename(
            self.home.child("tmp").child("1700000300.M1P77.mx").path,
            self.home.child("new").child("1700000300.M1P77.mx").path,
        )
        listed = self.listing(box, "1")
        [uid] = set(listed) - {first}
        self.assertRegex(uid, ID_PATTERN)
        self.assertEqual(self.successResultOf(box.message("1", uid)), b"delivered")

    def test_flagsChangedOutside(self) -> None:
        """
        Another reader renaming a file for new flags keeps its uid, for
        listings and for reading.
        """
        box = self.open(self.backend(self.laterClock()))
        uid = self.successResultOf(box.append("1", b"text", [Flag.DRAFT]))
        [name] = self.files(self.home, "cur")
        self.listing(box, "1")
        base = name.split(":")[0]
        os.rename(self.home.child("cur").child(name).path, self.home.child("cur").child(base + ":2,FS").path)
        # reading first: the cached file name is stale
        self.assertEqual(self.successResultOf(box.message("1", uid)), b"text")
        self.assertEqual(self.listing(box, "1")[uid].flags, {Flag.FLAGGED, Flag.SEEN})

    def test_messagesDataAfterOutsideChanges(self) -> None:
        """
        A batch read finds a message another reader renamed for new flags,
        and leaves out one another program removed.
        """
        box = self.open(self.backend(self.laterClock()))
        kept = self.successResultOf(box.append("1", b"kept", [Flag.DRAFT]))
        gone = self.successResultOf(box.append("1", b"gone", [Flag.SEEN]))
        self.listing(box, "1")
        for name in self.files(self.home, "cur"):
            path = self.home.child("cur").child(name)
            if path.getContent() == b"gone":
                path.remove()
            else:
                os.rename(path.path, self.home.child("cur").child(name.split(":")[0] + ":2,FS").path)
        self.assertEqual(self.successResultOf(box.messagesData("1", [kept, gone])), {kept: b"kept"})

    def test_deletedOutside(self) -> None:
        """
        A message removed by another program leaves the listing; its uid is
        not handed out again.
        """
        box = self.open()
        uids = [self.successResultOf(box.append("1", b"m%d" % n)) for n in range(2)]
        self.listing(box, "1")
        for name in self.files(self.home, "cur"):
            self.home.child("cur").child(name).remove()
        self.assertEqual(self.listing(box, "1"), {})
        self.failureResultOf(box.message("1", uids[0]), NoSuchMessage)
        self.assertNotIn(self.successResultOf(box.append("1", b"new")), uids)

    def test_folderRemovedOutside(self) -> None:
        """
        A folder removed by another program is no longer listed, and asking
        for it fails with L{NoSuchFolder}.
        """
        box = self.open()
        folder = self.successResultOf(box.createFolder(None, "Gone"))
        self.home.child(".Gone").remove()
        self.failureResultOf(box.messages(folder.id), NoSuchFolder)
        self.assertNotIn("Gone", self.folders(box))

    def test_folderCreatedOutside(self) -> None:
        """
        A folder another program creates is listed with a new id.
        """
        box = self.open()
        before = {f.id for f in self.folders(box).values()}
        makeMaildir(self.home.child(".Outside"))
        folders = self.folders(box)
        self.assertNotIn(folders["Outside"].id, before)
        self.assertEqual(self.listing(box, folders["Outside"].id), {})

    def laterClock(self) -> Clock:
        clock = Clock()
        clock.advance(LATER)
        return clock


class PersistenceTests(_MaildirTestMixin):
    """
    Ids survive a restart (a new backend on the same files).
    """

    def test_restartKeepsIds(self) -> None:
        """
        Folder ids and message uids are the same for a new backend, and
        uids are not reused after the newest message was deleted.
        """
        box = self.open()
        folder = self.successResultOf(box.createFolder(None, "Kept"))
        child = self.successResultOf(box.createFolder(folder.id, "Child"))
        uids = [self.successResultOf(box.append(child.id, b"m%d" % n, [Flag.SEEN])) for n in range(3)]
        self.successResultOf(box.delete(child.id, uids[-1]))
        before = self.folders(box)
        again = self.open(self.backend())
        self.assertEqual(self.folders(again), before)
        self.assertEqual(sorted(self.listing(again, child.id)), uids[:2])
        self.assertNotIn(self.successResultOf(again.append(child.id, b"new")), uids)

    def test_replacedDraftKeepsUidAcrossRestart(self) -> None:
        """
        A replaced message keeps its uid for a new backend too, and only
        the new file is left in the folder.
        """
        box = self.open()
        drafts = next(f.id for f in self.successResultOf(box.folders()) if f.type == FolderType.DRAFTS)
        uids = [self.successResultOf(box.append(drafts, b"draft %d" % n, [Flag.DRAFT])) for n in range(3)]
        self.successResultOf(box.replace(drafts, uids[1], b"draft 1, edited"))
        again = self.open(self.backend())
        self.assertEqual([i.uid for i in self.successResultOf(again.messages(drafts))], uids)
        self.assertEqual(self.successResultOf(again.message(drafts, uids[1])), b"draft 1, edited")
        self.assertEqual(len(self.home.child(".Drafts").child("cur").listdir()), 3)
        newer = self.successResultOf(again.append(drafts, b"draft 3"))
        self.assertNotIn(newer, uids)

    def test_renameKeepsIdsAcrossRestart(self) -> None:
        """
        A renamed and moved folder keeps its id, and its messages their
        uids, also after a restart; the directories follow the Maildir++
        layout.
        """
        box = self.open()
        a = self.successResultOf(box.createFolder(None, "A"))
        b = self.successResultOf(box.createFolder(a.id, "B"))
        uid = self.successResultOf(box.append(b.id, b"in b"))
        self.assertTrue(self.home.child(".A.B").isdir())
        self.successResultOf(box.updateFolder(a.id, "1", "Renamed"))
        self.assertFalse(self.home.child(".A").exists())
        self.assertTrue(self.home.child(".INBOX.Renamed.B").isdir())
        again = self.open(self.backend())
        folders = self.folders(again)
        self.assertEqual(folders["Inbox/Renamed"].id, a.id)
        self.assertEqual(folders["Inbox/Renamed/B"].id, b.id)
        self.assertEqual(self.successResultOf(again.message(b.id, uid)), b"in b")

    def test_unreadableFolderMap(self) -> None:
        """
        A damaged folder map costs the ids, not the folders or messages.
        """
        box = self.open()
        folder = self.successResultOf(box.createFolder(None, "F"))
        self.successResultOf(box.append(folder.id, b"kept"))
        self.home.child("directpush-folders").setContent(b"{not json")
        again = self.open(self.backend())
        [info] = self.listing(again, self.folders(again)["F"].id).values()
        self.assertEqual(info.size, 4)
        self.flushLoggedErrors()


class NameTests(SynchronousTestCase):
    """
    Folder names in modified UTF-7 (RFC 3501 5.1.3).
    """

    vectors = [
        ("Entwürfe", "Entw&APw-rfe"),
        ("日本語", "&ZeVnLIqe-"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("a&b", "a&-b"),
        ("plain ASCII ~!", "plain ASCII ~!"),
        ("tab\there", "tab&AAk-here"),
        ("\U0001f600", "&2D3eAA-"),
    ]

    def test_encode(self) -> None:
        """
        Names encode as Dovecot and RFC 3501 write them.
        """
        for name, encoded in self.vectors:
            self.assertEqual(encodeMailboxName(name), encoded)

    def test_decode(self) -> None:
        """
        Encoded names decode back.
        """
        for name, encoded in self.vectors:
            self.assertEqual(decodeMailboxName(encoded), name)

    def test_roundTrip(self) -> None:
        """
        Any string survives encoding and decoding.
        """
        for name in ["", "&&&", "Ä&Ö", "&-&", "a,b+c", "".join(map(chr, range(32, 0x2FF)))]:
            self.assertEqual(decodeMailboxName(encodeMailboxName(name)), name)

    def test_invalid(self) -> None:
        """
        Malformed modified UTF-7 raises L{ValueError}.
        """
        for bad in ["&ZeVn", "&Ze!-", "&AA-", "&2D0-", "ü"]:
            self.assertRaises(ValueError, decodeMailboxName, bad)

    def test_onDisk(self) -> None:
        """
        Created folders are stored under their encoded names.
        """
        root = FilePath(self.mktemp())
        box = self.successResultOf(MaildirBackend(root, runNow, Clock()).mailbox("u"))
        entwuerfe = self.successResultOf(box.createFolder(None, "Entwürfe"))
        self.successResultOf(box.createFolder(entwuerfe.id, "日本語"))
        self.assertTrue(root.child("u").child(".Entw&APw-rfe.&ZeVnLIqe-").isdir())

    def test_dots(self) -> None:
        """
        Names with '.' (the Maildir++ separator) are refused.
        """
        box = self.successResultOf(MaildirBackend(FilePath(self.mktemp()), runNow, Clock()).mailbox("u"))
        for bad in ["a.b", ".", "..", "trailing."]:
            self.failureResultOf(box.createFolder(None, bad), InvalidFolderName)

    def test_pathTooLong(self) -> None:
        """
        A folder whose directory name would exceed 255 bytes is refused,
        also when it comes from nesting or a move.
        """
        box = self.successResultOf(MaildirBackend(FilePath(self.mktemp()), runNow, Clock()).mailbox("u"))
        self.failureResultOf(box.createFolder(None, "日" * 100), InvalidFolderName)
        a = self.successResultOf(box.createFolder(None, "a" * 150))
        b = self.successResultOf(box.createFolder(None, "b" * 150))
        self.failureResultOf(box.createFolder(a.id, "c" * 150), InvalidFolderName)
        self.failureResultOf(box.updateFolder(b.id, a.id, "b" * 150), InvalidFolderName)


class PathTests(SynchronousTestCase):
    """
    Where each user's maildir is.
    """

    def test_defaultRoot(self) -> None:
        """
        With a L{FilePath} root, a user's maildir is the directory named
        after the user.
        """
        root = FilePath(self.mktemp())
        self.successResultOf(MaildirBackend(root, runNow, Clock()).mailbox("alice@example.org"))
        self.assertTrue(root.child("alice@example.org").child("cur").isdir())

    def test_template(self) -> None:
        """
        %d, %n, %u and %% expand as in Dovecot's mail_location.
        """
        base = os.path.abspath(self.mktemp())
        backend = MaildirBackend(base + "/%d/%n/Maildir", runNow, Clock())
        self.successResultOf(backend.mailbox("alice@example.org"))
        self.assertTrue(os.path.isdir(os.path.join(base, "example.org", "alice", "Maildir", "cur")))
        self.assertEqual(
            MaildirBackend(base + "/%u/100%%", runNow, Clock()).pathFor("bob@example.net"),
            os.path.join(base, "bob@example.net", "100%"),
        )

    def test_badTemplates(self) -> None:
        """
        Unknown % codes and relative paths are refused at once.
        """
        self.assertRaises(ValueError, MaildirBackend, "/var/vmail/%x", runNow, Clock())
        self.assertRaises(ValueError, MaildirBackend, "vmail/%u", runNow, Clock())

    def test_escapeRefused(self) -> None:
        """
        User names that could reach outside the root fail with
        L{UnsafeUserName}, creating nothing.
        """
        base = FilePath(self.mktemp())
        base.makedirs()
        backends = [
            MaildirBackend(base.child("plain"), runNow, Clock()),
            MaildirBackend(base.child("tpl").path + "/%d/%n", runNow, Clock()),
        ]
        with capturedLogs() as events:
            for backend in backends:
                for bad in ["..", "../x", "a/b", "/etc", ".hidden", "a@..", "x@a/../../b", "nul\x00", "", "a@b@c"]:
                    self.failureResultOf(backend.mailbox(bad), UnsafeUserName)
        self.assertIn("../x", [e.get("user") for e in events])
        self.failureResultOf(backends[1].mailbox("nodomain"), UnsafeUserName)
        self.assertEqual(base.listdir(), [])


class BlockingTests(SynchronousTestCase):
    """
    File system work runs only through runBlocking, serialised per
    mailbox.
    """

    def test_onlyThroughRunBlocking(self) -> None:
        """
        Until the queued blocking work runs, nothing touches the disk and
        no result is there.
        """
        queue: List[Callable[[], object]] = []

        def runLater(f: Callable[[], object]) -> Deferred[object]:
            d: Deferred[object] = Deferred()
            queue.append(lambda: d.callback(f()))
            return d

        root = FilePath(self.mktemp())
        backend = MaildirBackend(root, runLater, Clock())
        opened = backend.mailbox("alice")
        self.assertNoResult(opened)
        self.assertFalse(root.exists())
        queue.pop(0)()
        box = self.successResultOf(opened)
        appended = box.append("1", b"x")
        self.assertNoResult(appended)
        self.assertEqual(root.child("alice").child("new").listdir(), [])
        queue.pop(0)()
        self.assertEqual(self.successResultOf(appended), "1")
        self.assertEqual(queue, [])

    def test_messagesDataOneHop(self) -> None:
        """
        A batch read of several messages is one piece of blocking work.
        """
        queue: List[Callable[[], object]] = []

        def runLater(f: Callable[[], object]) -> Deferred[object]:
            d: Deferred[object] = Deferred()
            queue.append(lambda: d.callback(f()))
            return d

        backend = MaildirBackend(FilePath(self.mktemp()), runLater, Clock())
        opened = backend.mailbox("alice")
        queue.pop(0)()
        box = self.successResultOf(opened)
        appended = [box.append("1", b"m%d" % n) for n in range(5)]
        while queue:
            queue.pop(0)()
        uids = [self.successResultOf(d) for d in appended]
        read = box.messagesData("1", uids)
        self.assertEqual(len(queue), 1)
        queue.pop(0)()
        self.assertEqual(self.successResultOf(read), {uid: b"m%d" % n for n, uid in enumerate(uids)})

    def test_concurrentAppends(self) -> None:
        """
        Appends from several threads at once get distinct uids and all
        land.
        """
        box = self.successResultOf(MaildirBackend(FilePath(self.mktemp()), runNow, Clock()).mailbox("alice"))
        uids: List[str] = []
        errors: List[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(25):
                    d = box.append("1", b"%d-%d" % (n, i))
                    d.addCallback(uids.append)
                    d.addErrback(lambda f: errors.append(f.value))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(set(uids)), 200)
        self.assertEqual(len(self.successResultOf(box.messages("1"))), 200)

    def test_noGlobalReactor(self) -> None:
        """
        Importing the maildir backend does not install or import the global
        reactor.
        """
        code = "import sys, directpush.backends.maildir; print('twisted.internet.reactor' in sys.modules)"
        root = FilePath(__file__).parent().parent().path
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
        self.assertEqual(out.stdout.strip(), "False")


class LargeFolderTests(_MaildirTestMixin):
    """
    A folder of 100,000 messages is listed once, then served from cache.
    """

    count = 100_000

    def test_largeFolder(self) -> None:
        """
        All messages are listed in file name order with uids 1..N; a second
        listing with unchanged directories and reading a message need no
        directory scan; a change is picked up by a new scan.
        """
        cur = self.home.child("cur")
        makeMaildir(self.home)
        for i in range(self.count):
            flags = "S" if i % 2 else ""
            fd = os.open(os.path.join(cur.path, "%d.M%dP1.host:2,%s" % (PAST + i, i, flags)), os.O_WRONLY | os.O_CREAT)
            os.write(fd, b"%d" % i)
            os.close(fd)
        for sub in ("cur", "new"):
            os.utime(self.home.child(sub).path, (PAST, PAST))
        clock = Clock()
        clock.advance(LATER)
        box = self.open(self.backend(clock))
        scans: List[str] = []
        realScandir = maildir._scandir

        def counting(path: str) -> Any:
            scans.append(path)
            return realScandir(path)

        self.patch(maildir, "_scandir", counting)
        listed = self.successResultOf(box.messages("1"))
        table = box._states["1"].table  # type: ignore[attr-defined]
        self.assertIsInstance(table, DiskTable if self.count > self.spillRows else MessageTable)
        self.assertEqual(len(listed), self.count)
        self.assertEqual([info.uid for info in listed[:3]], ["1", "2", "3"])
        self.assertEqual(listed[1].flags, {Flag.SEEN})
        self.assertEqual(listed[-1].uid, str(self.count))
        self.assertEqual(listed[-1].size, len(b"%d" % (self.count - 1)))
        self.assertTrue(scans)

        del scans[:]
        self.assertEqual(self.successResultOf(box.messages("1")), listed)
        self.assertEqual(self.successResultOf(box.message("1", "54321")), b"54320")
        self.assertEqual(scans, [])

        uid = self.successResultOf(box.append("1", b"one more"))
        again = self.successResultOf(box.messages("1"))
        self.assertEqual(len(again), self.count + 1)
        self.assertEqual(again[-1].uid, uid)
        self.assertTrue(scans)


class MailboxCacheTests(SynchronousTestCase):
    """
    With C{mailboxIdle}, unused mailboxes are dropped after a while, and a
    user never has two.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.root = FilePath(self.mktemp())
        self.backend = MaildirBackend(self.root, runNow, self.clock, mailboxIdle=30)

    def test_sameWhileUsed(self) -> None:
        """
        Asking again within the idle time gives the same mailbox, and keeps
        it cached.
        """
        first = self.successResultOf(self.backend.mailbox("alice"))
        ref = weakref.ref(first)
        del first
        for _ in range(4):
            self.clock.advance(20)
            self.assertIs(self.successResultOf(self.backend.mailbox("alice")), ref())
        self.assertEqual(self.backend.cachedMailboxes, 1)

    def test_droppedWhenIdle(self) -> None:
        """
        A mailbox nobody holds or asked for during a whole idle period is
        let go of; asking again opens it afresh, with what is on disk, and
        no timer is left once the cache is empty.
        """
        box = self.successResultOf(self.backend.mailbox("alice"))
        inbox = self.successResultOf(box.folders())[0].id
        uid = self.successResultOf(box.append(inbox, b"Subject: hi\r\n\r\nhello\r\n", [], 1.0))
        ref = weakref.ref(box)
        del box
        self.clock.advance(30)
        self.assertEqual(self.backend.cachedMailboxes, 1)
        self.assertIsNotNone(ref())
        self.clock.advance(30)
        self.assertEqual(self.backend.cachedMailboxes, 0)
        gc.collect()
        self.assertIsNone(ref())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        again = self.successResultOf(self.backend.mailbox("alice"))
        self.assertEqual([m.uid for m in self.successResultOf(again.messages(inbox))], [uid])

    def test_heldNeverDuplicated(self) -> None:
        """
        A mailbox someone still holds is the one handed out, however long
        after the cache let go of it.
        """
        held = self.successResultOf(self.backend.mailbox("alice"))
        for _ in range(4):
            self.clock.advance(30)
        self.assertEqual(self.backend.cachedMailboxes, 0)
        self.assertIs(self.successResultOf(self.backend.mailbox("alice")), held)

    def test_keptForGoodByDefault(self) -> None:
        """
        Without C{mailboxIdle}, mailboxes stay and no timer runs.
        """
        backend = MaildirBackend(self.root, runNow, self.clock)
        ref = weakref.ref(self.successResultOf(backend.mailbox("alice")))
        self.clock.advance(3600)
        gc.collect()
        self.assertIsNotNone(ref())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopCaching(self) -> None:
        """
        L{MaildirBackend.stopCaching} empties the cache and cancels the
        sweep.
        """
        self.successResultOf(self.backend.mailbox("alice"))
        self.backend.stopCaching()
        self.assertEqual((self.backend.cachedMailboxes, self.clock.getDelayedCalls()), (0, []))


class RescanTests(_MaildirTestMixin):
    """
    A rescan of a listed folder marks the entries whose files it sees and
    collects only the files that differ (see C{MaildirMailbox._scan}).
    """

    def test_rescanSeesEveryChange(self) -> None:
        """
        Between two listings another program removes one message, flags
        another, files one straight into cur/ and delivers one to new/:
        the second listing has exactly those changes, uids kept.
        """
        makeMaildir(self.home)
        cur = self.home.child("cur")
        for n in range(5):
            writeFile(cur.child(f"{PAST + n}.M{n}P1.host:2,"), b"m%d" % n, mtime=PAST + n)
        box = self.open()
        before = self.listing(box, "1")
        self.assertEqual(sorted(before), ["1", "2", "3", "4", "5"])
        cur.child(f"{PAST + 1}.M1P1.host:2,").remove()
        os.rename(cur.child(f"{PAST + 2}.M2P1.host:2,").path, cur.child(f"{PAST + 2}.M2P1.host:2,FS").path)
        writeFile(cur.child(f"{PAST + 9}.M9P1.host:2,S"), b"m9", mtime=PAST + 9)
        writeFile(self.home.child("new").child(f"{PAST + 8}.M8P1.host"), b"m8", mtime=PAST + 8)
        for sub in ("cur", "new"):
            os.utime(self.home.child(sub).path, (PAST + 10, PAST + 10))
        self.clock.advance(LATER - self.clock.seconds())
        after = self.listing(box, "1")
        self.assertEqual(sorted(after), ["1", "3", "4", "5", "6", "7"])
        self.assertEqual(after["3"].flags, {Flag.SEEN, Flag.FLAGGED})
        self.assertEqual(after["4"].flags, frozenset())
        # New uids in file name order: m8 (delivered) before m9.
        self.assertEqual((after["6"].size, after["7"].size), (2, 2))
        self.assertEqual(self.successResultOf(box.message("1", "6")), b"m8")
        self.assertEqual(after["7"].flags, {Flag.SEEN})
        self.assertEqual(self.files(self.home, "new"), [])

    def test_rescanCurWins(self) -> None:
        """
        A message that is in cur/ and, under the same basename, in new/
        (caught mid-move) is the one in cur/, in a rescan as in a first
        scan; the new/ copy is left alone.
        """
        makeMaildir(self.home)
        name = f"{PAST}.M1P1.host"
        writeFile(self.home.child("cur").child(name + ":2,S"), b"kept", mtime=PAST)
        box = self.open()
        self.assertEqual(self.listing(box, "1")["1"].flags, {Flag.SEEN})
        writeFile(self.home.child("new").child(name), b"copy", mtime=PAST)
        os.utime(self.home.child("new").path, (PAST + 10, PAST + 10))
        self.clock.advance(LATER - self.clock.seconds())
        listed = self.listing(box, "1")
        self.assertEqual(list(listed), ["1"])
        self.assertEqual(listed["1"].flags, {Flag.SEEN})
        self.assertEqual(self.successResultOf(box.message("1", "1")), b"kept")
        self.assertEqual(self.files(self.home, "new"), [name])
        # The same in a first scan (another server process).
        fresh = self.open(self.backend())
        self.assertEqual(self.listing(fresh, "1")["1"].flags, {Flag.SEEN})
        self.assertEqual(self.successResultOf(fresh.message("1", "1")), b"kept")
        self.assertEqual(self.files(self.home, "new"), [name])


class ListingTests(_MaildirTestMixin):
    """
    A listing is a L{Listing}: a L{MessageInfo} is made when asked for.
    """

    def test_listing(self) -> None:
        """
        It indexes, slices, iterates and compares as a list of the
        messages does; its rows say the same as its L{MessageInfo}s; the
        folder keeps no L{MessageInfo} (each is made afresh).
        """
        box = self.open()
        uids = [self.successResultOf(box.append("1", b"m%d" % n, [Flag.SEEN] if n % 2 else [])) for n in range(4)]
        listed = self.successResultOf(box.messages("1"))
        self.assertIsInstance(listed, Listing)
        infos = list(listed)
        self.assertEqual([info.uid for info in infos], uids)
        self.assertEqual(listed, infos)
        self.assertEqual(listed[-1], infos[3])
        self.assertEqual(listed[1:3], infos[1:3])
        self.assertRaises(IndexError, lambda: listed[4])
        self.assertEqual(
            list(listingRows(listed)), [(i, info.uid, info.flags, info.received) for i, info in enumerate(infos)]
        )
        self.assertEqual(infos[1].flags, {Flag.SEEN})
        self.assertIsNot(listed[0], listed[0])


def _spilled(tests: type) -> type:
    """
    C{tests} again with every folder's index on disk (a folder spills at
    its second message).
    """
    return type(tests.__name__.replace("Tests", "SpilledTests"), (tests,), {"spillRows": 1})


LayoutSpilledTests = _spilled(LayoutTests)
RenameCutShortSpilledTests = _spilled(RenameCutShortTests)
DovecotSpilledTests = _spilled(DovecotTests)
OutsideChangeSpilledTests = _spilled(OutsideChangeTests)
PersistenceSpilledTests = _spilled(PersistenceTests)
RescanSpilledTests = _spilled(RescanTests)
ListingSpilledTests = _spilled(ListingTests)


class LargeFolderInMemoryTests(LargeFolderTests):
    """
    The large folder with its index kept in memory.
    """

    spillRows = LargeFolderTests.count + 1
