# -*- test-case-name: tests.test_backend_memory -*-
"""
A mailbox backend in memory: for tests, and the reference every other
backend is compared with by the contract suite.
"""

from __future__ import annotations

import itertools
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..interfaces import IChangeNotifier, IMailbox, IMailboxBackend
from ..model import (
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
from ..notify import LocalNotifier

_NAMES = {
    FolderType.INBOX: "Inbox",
    FolderType.DRAFTS: "Drafts",
    FolderType.DELETED: "Trash",
    FolderType.SENT: "Sent",
    FolderType.OUTBOX: "Outbox",
}


def _result(f):  # type: ignore[no-untyped-def]
    """
    Run C{f} now and return its result, or its failure, as a Deferred.
    """
    try:
        return succeed(f())
    except Exception:
        return fail()


@implementer(IMailbox)
class MemoryMailbox:
    def __init__(self, user: str, backend: "MemoryBackend") -> None:
        self.user = user
        self._backend = backend
        self._ids = itertools.count(1)
        self._folders: Dict[str, Folder] = {}
        # folder id -> uid -> (raw, flags, received)
        self._messages: Dict[str, Dict[str, Tuple[bytes, frozenset, float]]] = {}
        self._uids: Dict[str, itertools.count] = {}
        for kind in SPECIAL_FOLDERS:
            self._add(Folder(str(next(self._ids)), None, _NAMES[kind], kind))

    def _add(self, folder: Folder) -> Folder:
        self._folders[folder.id] = folder
        self._messages[folder.id] = {}
        self._uids[folder.id] = itertools.count(1)
        return folder

    def _changed(self, *folderIds: str) -> None:
        self._backend.notifier.announce(FolderChange(self.user, frozenset(folderIds)))

    def _folder(self, folderId: str) -> Folder:
        try:
            return self._folders[folderId]
        except KeyError:
            raise NoSuchFolder(folderId) from None

    def _message(self, folderId: str, uid: str) -> Tuple[bytes, frozenset, float]:
        self._folder(folderId)
        try:
            return self._messages[folderId][uid]
        except KeyError:
            raise NoSuchMessage(f"{folderId}:{uid}") from None

    def _checkName(self, parentId: Optional[str], name: str, exclude: Optional[str] = None) -> None:
        if not name or len(name) > 200 or any(c in name for c in "/\\.\x00\r\n") or name.strip() != name:
            raise InvalidFolderName(name)
        if parentId is not None:
            self._folder(parentId)
        for f in self._folders.values():
            if f.parentId == parentId and f.name.lower() == name.lower() and f.id != exclude:
                raise FolderExists(name)

    def folders(self) -> "Deferred[List[Folder]]":
        def ordered() -> List[Folder]:
            out: List[Folder] = []
            todo = [f for f in self._folders.values() if f.parentId is None]
            while todo:
                f = todo.pop(0)
                out.append(f)
                todo.extend(c for c in self._folders.values() if c.parentId == f.id)
            return out

        return _result(ordered)

    def createFolder(self, parentId: Optional[str], name: str) -> "Deferred[Folder]":
        def create() -> Folder:
            self._checkName(parentId, name)
            folder = self._add(Folder(str(next(self._ids)), parentId, name, FolderType.MAIL))
            return folder

        return _result(create)

    def updateFolder(self, folderId: str, parentId: Optional[str], name: str) -> "Deferred[Folder]":
        def update() -> Folder:
            folder = self._folder(folderId)
            if folder.type in SPECIAL_FOLDERS:
                raise SpecialFolder(folder.name)
            self._checkName(parentId, name, exclude=folderId)
            ancestor = parentId
            while ancestor is not None:
                if ancestor == folderId:
                    raise InvalidFolderName("a folder cannot move into itself")
                ancestor = self._folders[ancestor].parentId
            new = Folder(folderId, parentId, name, folder.type)
            self._folders[folderId] = new
            return new

        return _result(update)

    def deleteFolder(self, folderId: str) -> "Deferred[None]":
        def delete() -> None:
            folder = self._folder(folderId)
            if folder.type in SPECIAL_FOLDERS:
                raise SpecialFolder(folder.name)
            doomed = [folderId]
            for fid in doomed:
                doomed.extend(f.id for f in self._folders.values() if f.parentId == fid)
            for fid in doomed:
                del self._folders[fid]
                del self._messages[fid]

        return _result(delete)

    def messages(self, folderId: str) -> "Deferred[List[MessageInfo]]":
        def listing() -> List[MessageInfo]:
            self._folder(folderId)
            return [
                MessageInfo(uid, flags, received, len(raw))
                for uid, (raw, flags, received) in self._messages[folderId].items()
            ]

        return _result(listing)

    def message(self, folderId: str, uid: str) -> "Deferred[bytes]":
        return _result(lambda: self._message(folderId, uid)[0])

    def messagesData(self, folderId: str, uids: Sequence[str]) -> "Deferred[Dict[str, bytes]]":
        def read() -> Dict[str, bytes]:
            self._folder(folderId)
            held = self._messages[folderId]
            return {uid: held[uid][0] for uid in uids if uid in held}

        return _result(read)

    def append(
        self,
        folderId: str,
        raw: bytes,
        flags: Sequence[Flag] = (),
        received: Optional[float] = None,
    ) -> "Deferred[str]":
        def append() -> str:
            self._folder(folderId)
            uid = str(next(self._uids[folderId]))
            when = self._backend.clock.seconds() if received is None else received
            self._messages[folderId][uid] = (bytes(raw), frozenset(flags), when)
            self._changed(folderId)
            return uid

        return _result(append)

    def setFlags(self, folderId: str, uid: str, flags: Sequence[Flag]) -> "Deferred[None]":
        def setFlags() -> None:
            raw, old, received = self._message(folderId, uid)
            if frozenset(flags) != old:
                self._messages[folderId][uid] = (raw, frozenset(flags), received)
                self._changed(folderId)

        return _result(setFlags)

    def replace(self, folderId: str, uid: str, raw: bytes) -> "Deferred[None]":
        def replace() -> None:
            _, flags, received = self._message(folderId, uid)
            self._messages[folderId][uid] = (bytes(raw), flags, received)
            self._changed(folderId)

        return _result(replace)

    def move(self, folderId: str, uid: str, toFolderId: str) -> "Deferred[str]":
        def move() -> str:
            raw, flags, received = self._message(folderId, uid)
            self._folder(toFolderId)
            del self._messages[folderId][uid]
            newUid = str(next(self._uids[toFolderId]))
            self._messages[toFolderId][newUid] = (raw, flags, received)
            self._changed(folderId, toFolderId)
            return newUid

        return _result(move)

    def delete(self, folderId: str, uid: str) -> "Deferred[None]":
        def delete() -> None:
            self._message(folderId, uid)
            del self._messages[folderId][uid]
            self._changed(folderId)

        return _result(delete)

    def empty(self, folderId: str) -> "Deferred[None]":
        def empty() -> None:
            self._folder(folderId)
            if self._messages[folderId]:
                self._messages[folderId].clear()
                self._changed(folderId)

        return _result(empty)


@implementer(IMailboxBackend)
class MemoryBackend:
    """
    Mailboxes in memory, created on first use.
    """

    def __init__(self, clock: IReactorTime, notifier: Optional[IChangeNotifier] = None) -> None:
        self.clock = clock
        self.notifier = notifier if notifier is not None else LocalNotifier()
        self._mailboxes: Dict[str, MemoryMailbox] = {}
        #: (user, folders) of the watches in force: tests look at it.
        self.watches: List[Tuple[str, FrozenSet[str]]] = []

    def watch(self, user: str, folderIds: FrozenSet[str]) -> Callable[[], None]:
        """
        Every change passes through this backend, so it is always announced.
        """
        watch = (user, frozenset(folderIds))
        self.watches.append(watch)
        done = []

        def unwatch() -> None:
            if not done:  # calling it again is harmless
                done.append(True)
                self.watches.remove(watch)

        return unwatch

    def mailbox(self, user: str) -> "Deferred[IMailbox]":
        if user not in self._mailboxes:
            self._mailboxes[user] = MemoryMailbox(user, self)
        return succeed(self._mailboxes[user])
