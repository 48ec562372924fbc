# -*- test-case-name: tests.test_backend_memory -*-
"""
Every contract between the protocol core and what serves it: mailbox
backends, change notification, device and sync state, mail submission.

Implementations live in L{directpush.backends} and L{directpush.state};
each proves itself with the shared contract test suites in C{tests/}.
Every method that may touch a disk or a network returns a L{Deferred}
and never blocks the reactor thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from .model import Flag, Folder, FolderChange, MessageInfo


class IMailbox(Interface):
    """
    One user's mailbox: a tree of mail folders holding raw RFC 5322
    messages. Methods fail with the errors of L{directpush.model}
    (L{NoSuchFolder}, L{NoSuchMessage}, L{FolderExists},
    L{InvalidFolderName}, L{SpecialFolder}).
    """

    user = Attribute("C{str}: the user whose mailbox this is.")

    def folders() -> "Deferred[List[Folder]]":
        """
        Every folder, parents before children; always includes one folder
        of each of L{SPECIAL_FOLDERS}' types.
        """

    def createFolder(parentId: Optional[str], name: str) -> "Deferred[Folder]":
        """
        Create a mail folder C{name} under C{parentId} (L{None}: top level).
        """

    def updateFolder(folderId: str, parentId: Optional[str], name: str) -> "Deferred[Folder]":
        """
        Rename and/or move a folder; its id and its messages' uids stay.
        """

    def deleteFolder(folderId: str) -> "Deferred[None]":
        """
        Delete a folder with its messages and subfolders.
        """

    def messages(folderId: str) -> "Deferred[Sequence[MessageInfo]]":
        """
        List a folder's messages without reading them. Messages that
        arrived from outside (an MDA writing into C{new/}, another IMAP
        client) are included. A list, or a L{directpush.model.Listing}
        that makes each L{MessageInfo} when asked (a big folder's listing
        need not be as many objects as it has messages).
        """

    def message(folderId: str, uid: str) -> "Deferred[bytes]":
        """
        The raw message.
        """

    def messagesData(folderId: str, uids: "Sequence[str]") -> "Deferred[Dict[str, bytes]]":
        """
        Several raw messages in one go (a Sync window), by uid: cheaper
        than one L{message} call each, which may cost a thread hop or a
        server round trip apiece. Uids the folder does not hold (gone since
        the listing, or malformed) are left out rather than failing the
        batch; an unknown folder fails with L{NoSuchFolder}.
        """

    def append(
        folderId: str, raw: bytes, flags: "Sequence[Flag]" = (), received: Optional[float] = None
    ) -> "Deferred[str]":
        """
        Store a new message durably; return its uid.

        @param received: its arrival time (default: now).
        """

    def setFlags(folderId: str, uid: str, flags: "Sequence[Flag]") -> "Deferred[None]":
        """
        Replace the message's flags with C{flags}.
        """

    def replace(folderId: str, uid: str, raw: bytes) -> "Deferred[None]":
        """
        Replace the message's content (an edited draft); its uid, flags
        and arrival time stay.
        """

    def move(folderId: str, uid: str, toFolderId: str) -> "Deferred[str]":
        """
        Move a message, keeping its flags; return its uid in C{toFolderId}.
        """

    def delete(folderId: str, uid: str) -> "Deferred[None]":
        """
        Remove a message for good.
        """

    def empty(folderId: str) -> "Deferred[None]":
        """
        Remove every message of the folder (subfolders stay).
        """


class IMessagePages(Interface):
    """
    Optional, for a mailbox whose uids are numbers: a folder's listing a
    page at a time, so that walking a big folder (as a Sync does, to find
    what a device lacks) holds one page rather than the whole listing.
    """

    def messagesAfter(folderId: str, afterUid: int, limit: int) -> "Deferred[Sequence[MessageInfo]]":
        """
        The folder's messages of uid over C{afterUid}, in uid order, at
        most C{limit} of them: the same messages L{IMailbox.messages}
        lists. A walk starts at C{afterUid} 0 (which looks at the folder
        afresh, as L{IMailbox.messages} does) and goes on after the last
        uid of each full page; what changes meanwhile shows in the pages
        still to come, or in the next walk.
        """


class IMailboxBackend(Interface):
    """
    Where mailboxes come from: a maildir tree, an IMAP server, memory.
    """

    notifier = Attribute(
        "L{IChangeNotifier}: announces changes to this backend's mailboxes, "
        "whoever made them."
    )

    def mailbox(user: str) -> "Deferred[IMailbox]":
        """
        The mailbox of C{user} (a name L{directpush.auth.validUserName}
        accepts), created on first use where the backend can.
        """

    def watch(user: str, folderIds: "FrozenSet[str]") -> "Callable[[], None]":
        """
        Start announcing, through L{notifier}, changes made to these folders
        from outside (an MDA delivering, another mail client), until the
        returned function is called. Several watches of one folder share
        one watcher; a backend whose every change passes through it may do
        nothing here. Unknown folders are ignored.
        """


class IChangeNotifier(Interface):
    """
    Tells subscribers which folders of which user changed. A backend
    announces every change it sees: those made through it and, where it
    can watch its store, those made by others.
    """

    def subscribe(user: str, callback: "Callable[[FolderChange], None]") -> "Callable[[], None]":
        """
        Call C{callback} for each change to C{user}'s mailbox until the
        returned function is called.
        """

    def announce(change: "FolderChange") -> None:
        """
        Tell the subscribers of C{change.user} about C{change}.
        """


class IStateStore(Interface):
    """
    Device and sync state: small values (bytes, JSON by convention) under
    string keys, per (user, device). The device C{""} holds per-user
    values. Writes are atomic per call and durable before their Deferred
    fires, so a response leaves only after the state it relies on is
    safe. Several server processes may share one store.
    """

    def load(user: str, device: str, key: str) -> "Deferred[Optional[bytes]]":
        """
        The value under C{key}, or L{None}.
        """

    def keys(user: str, device: str, prefix: str = "") -> "Deferred[List[str]]":
        """
        The keys starting with C{prefix}, sorted.
        """

    def save(user: str, device: str, values: "Mapping[str, Optional[bytes]]") -> "Deferred[None]":
        """
        Write all C{values} at once (L{None} deletes the key).
        """

    def devices(user: str) -> "Deferred[List[str]]":
        """
        The devices (not C{""}) that have state for C{user}, sorted.
        """


class ISubmission(Interface):
    """
    Sends mail on a user's behalf: to local users' mailboxes directly, to
    others through a smarthost.
    """

    def submit(
        user: str, sender: str, recipients: "Sequence[str]", raw: bytes, retrySince: Optional[float] = None
    ) -> "Deferred[None]":
        """
        Deliver C{raw} (RFC 5322, Bcc already removed) from C{sender} to
        every address in C{recipients}.

        @param retrySince: given when an earlier attempt to send this very
            message (same Message-ID), begun at that time, was cut short:
            recipients whose mailbox the submission can see and who already
            have it do not get it again.
        """


class IDirectory(Interface):
    """
    The users this server knows: for the GAL, ResolveRecipients and local
    delivery.
    """

    def lookup(query: str, limit: int) -> "Deferred[List[Mapping[str, str]]]":
        """
        Users whose name or address starts with C{query} (case-insensitive),
        at most C{limit}, each a mapping with C{name}, C{address}.
        """

    def localUser(address: str) -> "Deferred[Optional[str]]":
        """
        The local user receiving mail for C{address}, if any.
        """


class IPushHub(Interface):
    """
    Holds the waits of hanging requests (Ping, Sync with Wait) until one of
    their folders changes, their time is up, or a newer request of the
    same device supersedes them. One change subscription per user with
    waiting devices, however many wait.
    """

    def wait(
        user: str,
        device: str,
        folderIds: "FrozenSet[str]",
        timeout: float,
        verify: "Callable[[FrozenSet[str]], Awaitable[FrozenSet[str]]]",
    ) -> "Deferred[Optional[FrozenSet[str]]]":
        """
        Wait for changes to C{folderIds}; a waiting request of the same
        device is superseded first.

        @param verify: given folders a change event names, returns those
            that really changed for this device (an event may be the
            device's own change, already known to it).
        @return: fires with the changed folders, with an empty set when
            C{timeout} seconds pass, or with L{None} when superseded.
            Cancelling it (the client went away) frees everything at once.
        """

    def supersede(user: str, device: str) -> None:
        """
        Answer the device's waiting request now (it has sent a new one).
        """
