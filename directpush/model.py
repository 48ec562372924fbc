# -*- test-case-name: tests.test_backend_memory -*-
"""
Value types shared by the protocol core and the backends.
"""

from __future__ import annotations

import enum
import re
from typing import FrozenSet, Iterator, Optional, Sequence, Tuple, overload

import attrs


class FolderType(enum.IntEnum):
    """
    EAS folder types (MS-ASCMD FolderSync Type).
    """

    GENERIC = 1
    INBOX = 2
    DRAFTS = 3
    DELETED = 4
    SENT = 5
    OUTBOX = 6
    TASKS = 7
    CALENDAR = 8
    CONTACTS = 9
    NOTES = 10
    JOURNAL = 11
    MAIL = 12
    USER_CALENDAR = 13
    USER_CONTACTS = 14
    USER_TASKS = 15
    USER_JOURNAL = 16
    USER_NOTES = 17
    UNKNOWN = 18
    RECIPIENT_CACHE = 19


#: The folders every mailbox has; a backend creates them when missing.
SPECIAL_FOLDERS = (
    FolderType.INBOX,
    FolderType.DRAFTS,
    FolderType.DELETED,
    FolderType.SENT,
    FolderType.OUTBOX,
)


class Flag(str, enum.Enum):
    """
    Message flags, as maildir (letter) and IMAP name them.
    """

    SEEN = "S"
    FLAGGED = "F"
    ANSWERED = "R"
    DELETED = "T"
    DRAFT = "D"


#: Folder ids and message uids travel inside EAS ServerIds
#: ("<folder>:<uid>", at most 64 characters), so they are short and plain.
ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,30}\Z")


def validId(value: str) -> bool:
    """
    Is C{value} a well-formed folder id or message uid?
    """
    return ID_PATTERN.match(value) is not None


@attrs.frozen
class Folder:
    """
    One folder of a mailbox.

    @ivar id: stable for the folder's life, renames included; matches
        L{ID_PATTERN}.
    @ivar parentId: the parent folder's id, or L{None} at the top level
        (the Inbox and the special folders are top level).
    @ivar name: the display name (the last path element, not the path).
    @ivar type: the EAS folder type.
    """

    id: str
    parentId: Optional[str]
    name: str
    type: FolderType


@attrs.frozen
class MessageInfo:
    """
    What a listing says about one message, without reading it.

    @ivar uid: stable within its folder for the message's life, whatever
        its flags do; matches L{ID_PATTERN}. A moved message gets a new uid
        in its new folder.
    @ivar flags: the message's flags.
    @ivar received: when it arrived, seconds since the epoch (maildir: the
        file's modification time, as Dovecot uses it).
    @ivar size: the raw message's size in bytes.
    """

    uid: str
    flags: FrozenSet[Flag]
    received: float
    size: int


#: One message of a listing as L{listingRows} gives it: its position in
#: the listing, uid, flags and arrival time.
Row = Tuple[int, str, FrozenSet[Flag], float]


class Listing(Sequence[MessageInfo]):
    """
    A folder's listing that makes each L{MessageInfo} only when asked for
    it, so that a big folder's listing is not as many objects as it has
    messages. Subclasses give C{__len__}, C{info} and, if they can give
    rows more cheaply than through L{MessageInfo}s, C{rows}.
    """

    def __len__(self) -> int:
        raise NotImplementedError()

    def info(self, index: int) -> MessageInfo:
        """
        The message at C{index} (0 <= index < len).
        """
        raise NotImplementedError()

    def size(self, index: int) -> int:
        """
        The size of the message at C{index}, without a L{MessageInfo}
        where the subclass can.
        """
        return self.info(index).size

    def rows(self) -> Iterator[Row]:
        for index in range(len(self)):
            info = self.info(index)
            yield index, info.uid, info.flags, info.received

    @overload
    def __getitem__(self, index: int) -> MessageInfo: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[MessageInfo]: ...

    def __getitem__(self, index: "int | slice") -> "MessageInfo | Sequence[MessageInfo]":
        if isinstance(index, slice):
            return [self.info(i) for i in range(*index.indices(len(self)))]
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(index)
        return self.info(index)

    def __iter__(self) -> Iterator[MessageInfo]:
        for index in range(len(self)):
            yield self.info(index)

    def __eq__(self, other: object) -> bool:
        # Equal to a list (or listing) of the same messages, as a list is.
        if isinstance(other, (list, Listing)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"


def listingRows(listing: Sequence[MessageInfo]) -> Iterator[Row]:
    """
    The rows of any listing: a L{Listing}'s own, or made from the
    L{MessageInfo}s of a list.
    """
    if isinstance(listing, Listing):
        return listing.rows()
    return ((index, info.uid, info.flags, info.received) for index, info in enumerate(listing))


@attrs.frozen
class FolderChange:
    """
    Something changed in these folders of this user's mailbox.
    """

    user: str
    folderIds: FrozenSet[str]


class MailboxError(Exception):
    """
    Base of the errors a mailbox raises for requests it cannot carry out.
    """


class NoSuchFolder(MailboxError):
    """
    No folder has that id.
    """


class NoSuchMessage(MailboxError):
    """
    No message has that uid in that folder.
    """


class FolderExists(MailboxError):
    """
    A folder of that name already exists under that parent.
    """


class InvalidFolderName(MailboxError):
    """
    The name cannot be a folder name (empty, too long, or characters the
    store cannot hold).
    """


class SpecialFolder(MailboxError):
    """
    The special folders (Inbox, Drafts, Deleted Items, Sent Items, Outbox)
    cannot be renamed, moved or deleted.
    """
