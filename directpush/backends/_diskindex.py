# -*- test-case-name: tests.test_diskindex -*-
"""
The index of a big maildir folder, kept in a temporary SQLite file
instead of memory.

A folder's L{MessageTable} costs some 75 bytes a message for as long as
the folder stays cached, and more while it is built: a 100,000-message
Inbox holds several megabytes of a process meant to serve thousands of
users. Past L{SPILL_ROWS} rows the maildir backend moves the folder's
rows into a L{DiskTable}: the same rows, in a table of a SQLite database
that exists only for this process (SQLite's temporary database: a file
unlinked when the connection closes), read through a page cache of
L{CACHE_KIB}. What stays in memory is that cache, whatever the folder's
size. The uid list in the maildir stays the durable record; this file
is a cache of it and of the last scan, rebuilt by each process.

A L{DiskTable} answers the same calls as a L{MessageTable}, but its row
handles are the rows' uids rather than positions. The maildir backend
treats handles as opaque, so it serves either.

One L{DiskIndex} per mailbox holds the tables of its big folders (one
connection, some 120 KiB, made when the first folder spills). Every call
blocks: the maildir backend makes them in its thread pool, under its
mailbox lock, and calls L{DiskIndex.commit} when each operation ends.
"""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from array import array
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ._messagetable import MAX_UID, NEW, SEEN, UNSTATED, MessageTable, TableListing, flagsOf

__all__ = ["CACHE_KIB", "SEE_BATCH", "SPILL_ROWS", "DiskIndex", "DiskTable"]

#: A folder with more rows than this moves to disk. Below it a
#: L{MessageTable} costs less: about 75 bytes a row kept and 110 at the
#: peak of a first scan, against some 1.5 MB of peak memory for a
#: connection, its page cache, and reading a folder through in batches
#: (measured with bench/sync_initial.py), and the disk is slower to walk.
SPILL_ROWS = 16384

#: SQLite's page cache for one mailbox's index.
CACHE_KIB = 256

#: Rows fetched at a time when reading a folder through.
_BATCH = 1024

#: Names looked up at once by L{DiskTable.seeMany} (SQLite allows 999
#: parameters in one statement in its older releases).
SEE_BATCH = 512

_ENCODING = ("utf-8", "surrogateescape")

_SCHEMA = """
CREATE TABLE rows (
    folder INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    name BLOB NOT NULL,
    tail BLOB NOT NULL,
    bits INTEGER NOT NULL,
    received REAL NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (folder, uid)
) WITHOUT ROWID;
CREATE INDEX rows_name ON rows (folder, name);
CREATE TABLE stash (
    folder INTEGER NOT NULL,
    name BLOB NOT NULL,
    new INTEGER NOT NULL,
    tail BLOB NOT NULL,
    PRIMARY KEY (folder, name)
) WITHOUT ROWID;
"""

# (name, tail, bits, received, size) of one row
_Row = Tuple[bytes, bytes, int, float, int]


def _encode(text: str) -> bytes:
    return text.encode(*_ENCODING)


def _decode(data: bytes) -> str:
    return data.decode(*_ENCODING)


class DiskIndex:
    """
    One mailbox's temporary SQLite database, made on first use.
    """

    def __init__(self) -> None:
        self._db: Optional[sqlite3.Connection] = None
        self._folders = 0

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            # "": a temporary database on disk, deleted when closed. Its
            # contents can be rebuilt, so nothing is journalled or synced.
            db = sqlite3.connect("", check_same_thread=False)
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("PRAGMA synchronous = OFF")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def table(self) -> "DiskTable":
        """
        A new, empty table for one folder.
        """
        self._folders += 1
        return DiskTable(self._connection(), self._folders)

    def commit(self) -> None:
        if self._db is not None and self._db.in_transaction:
            self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class DiskTable:
    """
    One folder's message files as rows of a L{DiskIndex}: the calls of
    L{MessageTable}, with uids as row handles.
    """

    __slots__ = ("_db", "_folder", "_count", "_cached", "_cachedUid", "_marks", "_markBase")

    def __init__(self, db: sqlite3.Connection, folder: int) -> None:
        self._db = db
        self._folder = folder
        self._count = 0
        # The last row read: an operation on one message asks for several
        # of its columns in turn.
        self._cachedUid = -1
        self._cached: Optional[_Row] = None
        # The rows the scan in progress saw: bits by uid from _markBase
        # (or, for uids too sparse for that, a set). Kept here rather than
        # in the rows, so that a rescan writes only the rows that changed.
        self._marks: "bytearray | set[int] | None" = None
        self._markBase = 0

    @classmethod
    def spill(cls, index: DiskIndex, table: MessageTable) -> "DiskTable":
        """
        A L{DiskTable} of C{table}'s rows (with their scan marks) and
        stashed names.
        """
        disk = index.table()
        seen = array("I")

        def rows() -> Iterator[tuple]:
            for uid, name, tail, bits, received, size in table.dump():
                if bits & SEEN:
                    seen.append(uid)
                yield disk._folder, uid, name, tail, bits & ~SEEN, received, size

        disk._db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?)", rows())
        disk._count = len(table)
        # A spill may come in the middle of a scan, perhaps before it saw
        # any known file: from here on, its marks are the disk's.
        disk.unmarkAll()
        for uid in seen:
            disk._mark(uid)
        for basename, sub, tail in table.unstash():
            disk.stash(basename, sub, tail)
        table.clear()
        return disk

    # reading

    def __len__(self) -> int:
        return self._count

    def _row(self, uid: int) -> Optional[_Row]:
        if uid != self._cachedUid:
            self._cached = self._db.execute(
                "SELECT name, tail, bits, received, size FROM rows WHERE folder = ? AND uid = ?", (self._folder, uid)
            ).fetchone()
            self._cachedUid = uid
        return self._cached

    def _get(self, uid: int) -> _Row:
        row = self._row(uid)
        if row is None:
            raise IndexError(uid)
        return row

    def _forgetCached(self) -> None:
        self._cachedUid = -1
        self._cached = None

    def uid(self, index: int) -> int:
        return index

    def basename(self, index: int) -> str:
        return _decode(self._get(index)[0])

    def tail(self, index: int) -> str:
        return _decode(self._get(index)[1])

    def filename(self, index: int) -> str:
        name, tail = self._get(index)[:2]
        return _decode(name + tail)

    def sub(self, index: int) -> str:
        return "new" if self._get(index)[2] & NEW else "cur"

    def received(self, index: int) -> float:
        return self._get(index)[3]

    def size(self, index: int) -> int:
        return self._get(index)[4]

    def unstated(self, index: int) -> bool:
        return bool(self._get(index)[2] & UNSTATED)

    def hasNew(self) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM rows WHERE folder = ? AND bits & ? LIMIT 1", (self._folder, NEW)
            ).fetchone()
            is not None
        )

    def indexOf(self, uid: int) -> int:
        if not 0 < uid <= MAX_UID:
            return -1
        return uid if self._row(uid) is not None else -1

    def find(self, basename: str) -> int:
        found = self._db.execute(
            # (Without INDEXED BY, SQLite may walk the primary key for the
            # ORDER BY: a scan of the whole folder per lookup.)
            "SELECT uid, name, tail, bits, received, size FROM rows INDEXED BY rows_name"
            " WHERE folder = ? AND name = ? ORDER BY uid LIMIT 1",
            (self._folder, _encode(basename)),
        ).fetchone()
        if found is None:
            return -1
        self._cachedUid, self._cached = found[0], found[1:]
        return found[0]

    def see(self, basename: str, sub: str, tail: str) -> int:
        index = self.find(basename)
        if index >= 0:
            _, stored, bits, _, _ = self._get(index)
            if not bits & UNSTATED:
                self._mark(index)
                wanted = (bits & ~NEW) | (NEW if sub == "new" else 0)
                data = _encode(tail)
                if wanted != bits or data != stored:
                    self._db.execute(
                        "UPDATE rows SET bits = ?, tail = ? WHERE folder = ? AND uid = ?",
                        (wanted, data, self._folder, index),
                    )
                    self._forgetCached()
        return index

    def seeMany(self, entries: Sequence[Tuple[str, str, str]]) -> List[Tuple[int, bool]]:
        """
        L{see} of each (basename, sub, tail) in turn, with one lookup for
        all (at most L{SEE_BATCH}): each row's handle (or -1) and whether
        it is not yet stated.
        """
        rows: Dict[bytes, Tuple[int, bytes, int]] = {}
        names = [_encode(basename) for basename, _, _ in entries]
        distinct = list(set(names))
        query = (
            "SELECT uid, name, tail, bits FROM rows INDEXED BY rows_name"
            f" WHERE folder = ? AND name IN ({', '.join('?' * len(distinct))}) ORDER BY uid"
        )
        for uid, name, tail, bits in self._db.execute(query, [self._folder, *distinct]):
            rows.setdefault(name, (uid, tail, bits))
        found: List[Tuple[int, bool]] = []
        updates = []
        for name, (_, sub, tail) in zip(names, entries):
            row = rows.get(name)
            if row is None:
                found.append((-1, False))
                continue
            uid, stored, bits = row
            if bits & UNSTATED:
                found.append((uid, True))
                continue
            self._mark(uid)
            wanted = (bits & ~NEW) | (NEW if sub == "new" else 0)
            data = _encode(tail)
            if wanted != bits or data != stored:
                updates.append((wanted, data, self._folder, uid))
                rows[name] = (uid, data, wanted)
            found.append((uid, False))
        if updates:
            self._db.executemany("UPDATE rows SET bits = ?, tail = ? WHERE folder = ? AND uid = ?", updates)
            self._forgetCached()
        return found

    def _select(self, columns: str, after: int = 0, where: str = "") -> Iterator[tuple]:
        """
        Rows from uid C{after} + 1 on, in uid order, a batch at a time: no
        statement stays open between batches, so the table may change
        between them.
        """
        while True:
            batch = self._db.execute(
                f"SELECT uid, {columns} FROM rows WHERE folder = ? AND uid > ? {where} ORDER BY uid LIMIT ?",
                (self._folder, after, _BATCH),
            ).fetchall()
            yield from batch
            if len(batch) < _BATCH:
                return
            after = batch[-1][0]

    def items(self, first: int = 0) -> Iterator[Tuple[int, str]]:
        """
        (uid, basename) of every row, in uid order. C{first} must be 0:
        see L{itemsFrom}.
        """
        if first:
            raise ValueError("a DiskTable has no positions")
        return self.itemsFrom(0)

    def itemsFrom(self, uid: int) -> Iterator[Tuple[int, str]]:
        """
        (uid, basename) of every row of uid C{uid} or higher.
        """
        for found, name in self._select("name", after=uid - 1):
            yield found, _decode(name)

    def dump(self) -> Iterator[Tuple[int, bytes, bytes, int, float, int]]:
        """
        Every row as (uid, basename, tail, bits, received, size), the
        names as stored bytes, in uid order.
        """
        return self._select("name, tail, bits, received, size")

    def listing(self) -> TableListing:
        """
        The rows as they are now, read into columns (some 24 bytes a row,
        for as long as the listing is kept).
        """
        return self._columns(self._select("tail, received, size"))

    def page(self, after: int, limit: int) -> TableListing:
        """
        The rows of uid over C{after}, at most C{limit} of them.
        """
        return self._columns(
            self._db.execute(
                "SELECT uid, tail, received, size FROM rows WHERE folder = ? AND uid > ? ORDER BY uid LIMIT ?",
                (self._folder, after, limit),
            )
        )

    def _columns(self, rows: Iterable[tuple]) -> TableListing:
        tails: Dict[bytes, int] = {}
        uids, codes, received, sizes = array("I"), array("I"), array("d"), array("Q")
        # A batch at a time, a column at a time: the loop per row is C's.
        batches = iter(lambda: list(itertools.islice(rows, _BATCH)), [])
        for batch in batches:
            batchUids, batchTails, batchReceived, batchSizes = zip(*batch)
            uids.extend(batchUids)
            received.extend(batchReceived)
            sizes.extend(batchSizes)
            for tail in set(batchTails).difference(tails):
                tails[tail] = len(tails)
            codes.extend(map(tails.__getitem__, batchTails))
        return TableListing(uids, codes, received, sizes, [flagsOf(_decode(tail)) for tail in tails])

    def fingerprint(self) -> Tuple[int, int]:
        """
        Changes when a row comes or goes or its flags change.
        """
        digest = hashlib.blake2b(digest_size=8)
        bits: Dict[bytes, int] = {}
        for uid, tail in self._select("tail"):
            flagBits = bits.get(tail)
            if flagBits is None:
                flagBits = bits[tail] = sum(1 << "SFRTD".index(flag.value) for flag in flagsOf(_decode(tail)))
            digest.update(uid.to_bytes(4, "little") + bytes([flagBits]))
        return self._count, int.from_bytes(digest.digest(), "little")

    # changing

    def add(
        self,
        uid: int,
        basename: str,
        sub: str,
        tail: str,
        received: float,
        size: int,
        *,
        indexed: bool = True,
        unstated: bool = False,
    ) -> int:
        """
        Add a row and return its handle (its uid).

        @param indexed: ignored (SQLite keeps its own index).
        @raise ValueError: C{uid} is taken, or out of range.
        """
        if not 0 < uid <= MAX_UID:
            raise ValueError(f"uid {uid} out of range")
        bits = (NEW if sub == "new" else 0) | (UNSTATED if unstated else 0)
        try:
            self._db.execute(
                "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self._folder, uid, _encode(basename), _encode(tail), bits, received, size),
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"uid {uid} is taken") from None
        self._count += 1
        if uid == self._cachedUid:
            self._forgetCached()
        return uid

    def reindex(self) -> None:
        """
        Nothing to do: SQLite keeps the name index.
        """

    def _update(self, index: int, assignments: str, values: tuple) -> None:
        self._db.execute(f"UPDATE rows SET {assignments} WHERE folder = ? AND uid = ?", values + (self._folder, index))
        self._forgetCached()

    def setFile(self, index: int, sub: str, tail: str) -> None:
        bits = self._get(index)[2]
        self._update(index, "bits = ?, tail = ?", ((bits & ~NEW) | (NEW if sub == "new" else 0), _encode(tail)))

    def setStat(self, index: int, received: float, size: int) -> None:
        self._update(index, "received = ?, size = ?, bits = bits & ?", (received, size, ~UNSTATED))

    def stated(self, rows: Iterable[Tuple[int, str, str, float, int]]) -> None:
        """
        For scans: rows known from the uid list only are now seen, each
        (uid, sub, tail, received, size) as the file C{sub}/basename +
        C{tail} of this arrival time and size.
        """
        updates = []
        for uid, sub, tail, received, size in rows:
            updates.append((received, size, ~(NEW | UNSTATED), NEW if sub == "new" else 0, _encode(tail), self._folder, uid))
            self._mark(uid)
        self._db.executemany(
            "UPDATE rows SET received = ?, size = ?, bits = (bits & ?) | ?, tail = ? WHERE folder = ? AND uid = ?",
            updates,
        )
        self._forgetCached()

    def rename(self, index: int, basename: str) -> None:
        self._update(index, "name = ?", (_encode(basename),))

    def remove(self, indexes: Iterable[int]) -> None:
        cursor = self._db.executemany(
            "DELETE FROM rows WHERE folder = ? AND uid = ?", ((self._folder, uid) for uid in indexes)
        )
        self._count -= max(0, cursor.rowcount)
        self._forgetCached()

    def clear(self) -> None:
        self._db.execute("DELETE FROM rows WHERE folder = ?", (self._folder,))
        self._db.execute("DELETE FROM stash WHERE folder = ?", (self._folder,))
        self._count = 0
        self._forgetCached()

    # scans

    def unmarkAll(self) -> None:
        low, high = self._db.execute("SELECT min(uid), max(uid) FROM rows WHERE folder = ?", (self._folder,)).fetchone()
        span = high - low + 1 if low is not None else 0
        self._markBase = low or 0
        # An eighth of a byte a row, unless the uids are very sparse.
        self._marks = bytearray((span + 7) // 8) if span <= 64 * max(self._count, 1024) else set()

    def _mark(self, uid: int) -> None:
        marks = self._marks
        if isinstance(marks, set):
            marks.add(uid)
        elif marks is not None:
            offset = uid - self._markBase
            if 0 <= offset < 8 * len(marks):
                marks[offset >> 3] |= 1 << (offset & 7)

    def marked(self, index: int) -> bool:
        marks = self._marks
        if isinstance(marks, set):
            return index in marks
        offset = index - self._markBase
        return marks is not None and 0 <= offset < 8 * len(marks) and bool(marks[offset >> 3] & (1 << (offset & 7)))

    def unmarked(self) -> List[int]:
        """
        The rows the scan did not see (and the scan's marks are let go).
        """
        gone = [uid for uid, _ in self._select("1") if not self.marked(uid)]
        self._marks = None
        return gone

    def duplicates(self) -> List[int]:
        return [
            uid
            for (uid,) in self._db.execute(
                "SELECT a.uid FROM rows a WHERE a.folder = ? AND EXISTS "
                "(SELECT 1 FROM rows b WHERE b.folder = a.folder AND b.name = a.name AND b.uid > a.uid) ORDER BY a.uid",
                (self._folder,),
            )
        ]

    # files a scan found that have no row yet

    def stash(self, basename: str, sub: str, tail: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO stash VALUES (?, ?, ?, ?)",
            (self._folder, _encode(basename), 1 if sub == "new" else 0, _encode(tail)),
        )

    def stashed(self, basename: str, sub: str) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM stash WHERE folder = ? AND name = ? AND new = ?",
                (self._folder, _encode(basename), 1 if sub == "new" else 0),
            ).fetchone()
            is not None
        )

    def stashCount(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM stash WHERE folder = ?", (self._folder,)).fetchone()[0])

    def unstash(self) -> Iterator[Tuple[str, str, str]]:
        """
        Each stashed (basename, sub, tail), in basename order, taken out
        of the stash a batch at a time.
        """
        while True:
            batch = self._db.execute(
                "SELECT name, new, tail FROM stash WHERE folder = ? ORDER BY name LIMIT ?", (self._folder, _BATCH)
            ).fetchall()
            if not batch:
                return
            self._db.execute(
                "DELETE FROM stash WHERE folder = ? AND name <= ?", (self._folder, batch[-1][0])
            )
            for name, new, tail in batch:
                yield _decode(name), "new" if new else "cur", _decode(tail)
