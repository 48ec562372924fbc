# -*- test-case-name: tests.test_backend_memory -*-
"""
Value types shared by the protocol core and the backends.
"""

from __future__ import annotations

import enum
import re
from typing import FrozenSet, Optional

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
