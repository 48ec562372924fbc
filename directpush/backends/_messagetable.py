# -*- test-case-name: tests.test_messagetable -*-
"""
One maildir folder's messages as columns: what the maildir backend keeps
in memory for each folder it has listed, up to a size (a bigger folder
moves to a L{directpush.backends._diskindex.DiskTable}, which answers
the same calls).

A folder of 100,000 messages held as one object per message costs some
300 bytes a message, for as long as the folder stays cached; held as
arrays it costs the basename's bytes and about 50 more, and no object
at all. L{MessageTable} is that store: rows in uid order, each row a
message file (uid, basename, C{cur} or C{new}, the rest of its name,
arrival time, size), looked up by uid (a binary search of the uid
column) or by basename (a sorted array of 32-bit name hashes, each with
its row's uid; a hit is checked against the stored name, so a collision
costs a comparison, never a wrong answer).

It knows nothing of files: L{directpush.backends.maildir} reads and
writes them, under its mailbox lock, and keeps this table in step.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from bisect import bisect_left, insort
from typing import Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..model import Flag, Listing, MessageInfo, Row

__all__ = ["INSERT_LIMIT", "MAX_UID", "MessageTable", "TableListing", "flagsOf"]

#: Row bits: the file is in new/ (else cur/).
NEW = 1
#: Row bits: the scan in progress saw the file (see L{MessageTable.unmarkAll}).
SEEN = 2
#: Row bits: read from the uid list, its file not yet looked at (no size
#: or arrival time yet).
UNSTATED = 4

_CLEAR_SEEN = bytes(b & ~SEEN for b in range(256))
_ONLY_NEW = bytes(b & NEW for b in range(256))

#: How file names become the bytes stored (os.scandir gives undecodable
#: bytes as surrogates).
_ENCODING = ("utf-8", "surrogateescape")

#: The hash index packs a 32-bit name hash over a 32-bit uid.
_UID_BITS = 32
MAX_UID = (1 << _UID_BITS) - 1

#: Keys sorted at once when the index is rebuilt (see reindex()).
_RUN = 4096

#: Name offsets are 32-bit.
_MAX_NAMES = (1 << 32) - 1

#: Append one at a time (a sorted insert each) up to this many rows;
#: beyond it, append them all and sort the index once.
INSERT_LIMIT = 64

_LETTERS = {flag.value: flag for flag in Flag}
#: Flag sets by the letters that give them: rows share the few distinct
#: sets. Bounded; frozensets are immutable, so sharing is safe.
_FLAG_SETS: Dict[str, FrozenSet[Flag]] = {}
_EMPTY_FLAGS: FrozenSet[Flag] = frozenset()


def flagsOf(filename: str) -> FrozenSet[Flag]:
    """
    The flags of a maildir file name (or of the part after its basename):
    the letters after C{:2,}.
    """
    _, _, info = filename.partition(":")
    if not info.startswith("2,"):
        return _EMPTY_FLAGS
    letters = info[2:]
    flags = _FLAG_SETS.get(letters)
    if flags is None:
        flags = frozenset(_LETTERS[c] for c in letters if c in _LETTERS)
        if len(_FLAG_SETS) >= 1024:
            _FLAG_SETS.clear()
        _FLAG_SETS[letters] = flags
    return flags


def _key(basename: str, uid: int) -> int:
    return ((hash(basename) & 0xFFFFFFFF) << _UID_BITS) | uid


# The columns of every empty table: never changed in place (see
# MessageTable._own).
_NO_Q = array("Q")
_NO_D = array("d")
_NO_H = array("H")
_NO_I = array("I")
_NO_BYTES = bytearray()
_NO_TAILS: List[str] = []
_NO_CODES: Dict[str, int] = {}


class TableListing(Listing):
    """
    A folder's listing as of one moment: the table's columns, each row
    made into a L{MessageInfo} only when asked for. Later changes to the
    table do not show in it: the table changes copies of the columns it
    lent (see L{MessageTable.listing}).
    """

    __slots__ = ("_uids", "_codes", "_received", "_sizes", "_flags")

    def __init__(self, uids: "array[int]", codes: "array[int]", received: "array[float]", sizes: "array[int]", flags: List[FrozenSet[Flag]]) -> None:
        self._uids = uids
        self._codes = codes
        self._received = received
        self._sizes = sizes
        self._flags = flags

    def __len__(self) -> int:
        return len(self._uids)

    def info(self, index: int) -> MessageInfo:
        return MessageInfo(str(self._uids[index]), self._flags[self._codes[index]], self._received[index], self._sizes[index])

    def size(self, index: int) -> int:
        return self._sizes[index]

    def rows(self) -> Iterator[Row]:
        flags = self._flags
        for index, (uid, code, received) in enumerate(zip(self._uids, self._codes, self._received)):
            yield index, str(uid), flags[code], received


class MessageTable:
    """
    A folder's message files as columns, in uid order.

    Rows are addressed by position (valid until the next change) and found
    by uid (L{indexOf}) or basename (L{find}). The part of a file name
    after its basename (C{":2,S"}) is stored as a code into a list of the
    folder's distinct ones; basenames as UTF-8 bytes in one buffer.
    """

    __slots__ = (
        "_uids",
        "_sizes",
        "_received",
        "_starts",
        "_lengths",
        "_codes",
        "_bits",
        "_names",
        "_garbage",
        "_keys",
        "_tails",
        "_tailCodes",
        "_lent",
        "_stash",
    )

    def __init__(self) -> None:
        # An empty table shares empty columns with every other (a user
        # waiting in Ping keeps a table per folder it watches); the
        # first row gives it its own (see _own()).
        self._uids = _NO_I
        self._sizes = _NO_Q
        self._received = _NO_D
        # basename of row i: _names[_starts[i] : _starts[i] + _lengths[i]]
        self._starts = _NO_I
        self._lengths = _NO_H
        self._codes = _NO_I
        self._bits = _NO_BYTES
        self._names = _NO_BYTES
        # bytes of _names no row uses any more
        self._garbage = 0
        # sorted (name hash << 32 | uid) of every row
        self._keys = _NO_Q
        self._tails: List[str] = _NO_TAILS
        self._tailCodes: Dict[str, int] = _NO_CODES
        # whether a listing holds the columns it shows (see listing())
        self._lent = True
        # files a scan found that have no row yet: basename -> (sub, tail)
        # (made when first needed: waiting Pings keep many empty tables)
        self._stash: Optional[Dict[str, Tuple[str, str]]] = None

    # reading

    def __len__(self) -> int:
        return len(self._uids)

    def uid(self, index: int) -> int:
        return self._uids[index]

    def basename(self, index: int) -> str:
        start = self._starts[index]
        return self._names[start : start + self._lengths[index]].decode(*_ENCODING)

    def tail(self, index: int) -> str:
        """
        The file name after the basename (C{":2,FS"}, or C{""}).
        """
        return self._tails[self._codes[index]]

    def filename(self, index: int) -> str:
        return self.basename(index) + self.tail(index)

    def sub(self, index: int) -> str:
        return "new" if self._bits[index] & NEW else "cur"

    def received(self, index: int) -> float:
        return self._received[index]

    def size(self, index: int) -> int:
        return self._sizes[index]

    def unstated(self, index: int) -> bool:
        return bool(self._bits[index] & UNSTATED)

    def hasNew(self) -> bool:
        return NEW in self._bits.translate(_ONLY_NEW)

    def indexOf(self, uid: int) -> int:
        """
        The row of C{uid}, or -1.
        """
        uids = self._uids
        count = len(uids)
        if not count:
            return -1
        # Uids only grow, so C{uid} is at most C{uid - first} rows in, and
        # at most as many rows short of that as there are gaps: search
        # only there (a folder with few deletes is all but dense).
        first = uids[0]
        high = min(count, uid - first + 1)
        low = max(0, high - (uids[-1] - first + 1 - count) - 1)
        index = bisect_left(uids, uid, low, high) if high > 0 else 0
        return index if index < count and uids[index] == uid else -1

    def find(self, basename: str) -> int:
        """
        The row of C{basename}, or -1.
        """
        wanted = basename.encode(*_ENCODING)
        keys = self._keys
        low = _key(basename, 0)
        position = bisect_left(keys, low)
        high = low | MAX_UID
        starts, lengths, names = self._starts, self._lengths, self._names
        while position < len(keys) and keys[position] <= high:
            index = self.indexOf(keys[position] & MAX_UID)
            start = starts[index]
            if names[start : start + lengths[index]] == wanted:
                return index
            position += 1
        return -1

    def see(self, basename: str, sub: str, tail: str) -> int:
        """
        For scans: mark the row of C{basename} seen, as the file
        C{sub}/basename + C{tail} (the row's file is renamed so, if it was
        not), and return it; or -1 if no row has that basename. A row not
        yet stated is only found, not marked.
        """
        index = self.find(basename)
        if index >= 0:
            bits = self._bits[index]
            if not bits & UNSTATED:
                self._bits[index] = bits | SEEN
                if (bits & NEW) != (NEW if sub == "new" else 0) or self._tails[self._codes[index]] != tail:
                    self.setFile(index, sub, tail)
        return index

    def seeMany(self, entries: Sequence[Tuple[str, str, str]]) -> List[Tuple[int, bool]]:
        """
        L{see} of each (basename, sub, tail) in turn: each row (or -1)
        and whether it is not yet stated.
        """
        found = []
        for basename, sub, tail in entries:
            index = self.see(basename, sub, tail)
            found.append((index, index >= 0 and bool(self._bits[index] & UNSTATED)))
        return found

    def items(self, first: int = 0) -> Iterator[Tuple[int, str]]:
        """
        (uid, basename) of every row from position C{first} on, in uid
        order. The table must not change while this runs.
        """
        names = self._names
        for uid, start, length in itertools.islice(zip(self._uids, self._starts, self._lengths), first, None):
            yield uid, names[start : start + length].decode(*_ENCODING)

    def itemsFrom(self, uid: int) -> Iterator[Tuple[int, str]]:
        """
        (uid, basename) of every row of uid C{uid} or higher.
        """
        return self.items(bisect_left(self._uids, uid))

    def dump(self) -> Iterator[Tuple[int, bytes, bytes, int, float, int]]:
        """
        Every row as (uid, basename, tail, bits, received, size), the
        names as stored bytes, in uid order.
        """
        tails = [tail.encode(*_ENCODING) for tail in self._tails]
        for index in range(len(self)):
            yield (self._uids[index], self._nameBytes(index), tails[self._codes[index]], self._bits[index], self._received[index], self._sizes[index])

    def listing(self) -> TableListing:
        """
        The rows as they are now. The listing holds the very columns; the
        table copies them before it next changes them (each Sync of a big
        folder lists it, and most find it unchanged since the last).
        """
        self._lent = True
        return TableListing(self._uids, self._codes, self._received, self._sizes, [flagsOf(tail) for tail in self._tails])

    def page(self, after: int, limit: int) -> TableListing:
        """
        The rows of uid over C{after}, at most C{limit} of them, as copies.
        """
        start = bisect_left(self._uids, after + 1)
        end = min(len(self._uids), start + limit)
        return TableListing(
            self._uids[start:end],
            self._codes[start:end],
            self._received[start:end],
            self._sizes[start:end],
            [flagsOf(tail) for tail in self._tails],
        )

    def _own(self) -> None:
        """
        Before changing a column in place: stop sharing it with listings
        (and, in an empty table, with other tables).
        """
        if self._lent:
            self._uids = array("I", self._uids)
            self._codes = array("I", self._codes)
            self._received = array("d", self._received)
            self._sizes = array("Q", self._sizes)
            self._lent = False
            if self._names is _NO_BYTES:
                self._starts, self._lengths, self._keys = array("I"), array("H"), array("Q")
                self._bits, self._names = bytearray(), bytearray()
                self._tails, self._tailCodes = [], {}

    def fingerprint(self) -> Tuple[int, int]:
        """
        Changes when a row comes or goes or its flags change (and only
        then, but for hash collisions).
        """
        bits = [sum(1 << "SFRTD".index(flag.value) for flag in flagsOf(tail)) for tail in self._tails]
        return len(self), hash((self._uids.tobytes(), bytes([bits[code] for code in self._codes])))

    # changing

    def add(self, uid: int, basename: str, sub: str, tail: str, received: float, size: int, *, indexed: bool = True, unstated: bool = False) -> int:
        """
        Add a row in uid order and return its position.

        @param indexed: file it in the name index; without, the caller
            calls L{reindex} once it has added what it adds.
        @raise ValueError: C{uid} is taken, or out of range.
        """
        if not 0 < uid <= MAX_UID:
            raise ValueError(f"uid {uid} out of range")
        self._own()
        uids = self._uids
        if not uids or uid > uids[-1]:
            index = len(uids)
        else:
            index = bisect_left(uids, uid)
            if uids[index] == uid:
                raise ValueError(f"uid {uid} is taken")
        name = basename.encode(*_ENCODING)
        if len(self._names) + len(name) > _MAX_NAMES:
            raise ValueError("the folder's names fill the name buffer")
        uids.insert(index, uid)
        self._sizes.insert(index, size)
        self._received.insert(index, received)
        self._starts.insert(index, len(self._names))
        self._lengths.insert(index, len(name))
        self._codes.insert(index, self._code(tail))
        self._bits.insert(index, (NEW if sub == "new" else 0) | (UNSTATED if unstated else 0))
        self._names += name
        if indexed:
            insort(self._keys, _key(basename, uid))
        return index

    def reindex(self) -> None:
        """
        Rebuild the name index from the rows: sorted a slice at a time and
        merged into an array of the right size, so that no list of every
        key (some 45 bytes each) is made.
        """
        runs = []
        rows = self.items()
        while True:
            run = [_key(basename, uid) for uid, basename in itertools.islice(rows, _RUN)]
            if not run:
                break
            run.sort()
            runs.append(array("Q", run))
        keys = array("Q", bytes(8 * len(self)))
        for position, key in enumerate(heapq.merge(*runs)):
            keys[position] = key
        self._keys = keys

    def setFile(self, index: int, sub: str, tail: str) -> None:
        """
        The row's file is now C{sub}/basename + C{tail}.
        """
        self._own()
        self._bits[index] = (self._bits[index] & ~NEW) | (NEW if sub == "new" else 0)
        self._codes[index] = self._code(tail)

    def setStat(self, index: int, received: float, size: int) -> None:
        self._own()
        self._received[index] = received
        self._sizes[index] = size
        self._bits[index] &= ~UNSTATED

    def stated(self, rows: Iterable[Tuple[int, str, str, float, int]]) -> None:
        """
        For scans: rows known from the uid list only are now seen, each
        (row, sub, tail, received, size) as the file C{sub}/basename +
        C{tail} of this arrival time and size.
        """
        for index, sub, tail, received, size in rows:
            self.setStat(index, received, size)
            self.setFile(index, sub, tail)
            self._bits[index] |= SEEN

    def rename(self, index: int, basename: str) -> None:
        """
        Give the row another basename (same uid).
        """
        uid = self._uids[index]
        name = basename.encode(*_ENCODING)
        if len(self._names) + len(name) > _MAX_NAMES:
            raise ValueError("the folder's names fill the name buffer")
        self._unindex(index)
        self._garbage += self._lengths[index]
        self._starts[index] = len(self._names)
        self._lengths[index] = len(name)
        self._names += name
        insort(self._keys, _key(basename, uid))
        self._collect()

    def remove(self, indexes: Iterable[int]) -> None:
        """
        Drop the rows at C{indexes} (positions as they are now).
        """
        doomed = sorted(set(indexes), reverse=True)
        if not doomed:
            return
        self._own()
        if len(doomed) <= INSERT_LIMIT:
            for index in doomed:
                self._unindex(index)
                self._garbage += self._lengths[index]
                for column in (self._uids, self._sizes, self._received, self._starts, self._lengths, self._codes, self._bits):
                    del column[index]
        else:
            keep = bytearray(b"\1") * len(self)
            for index in doomed:
                keep[index] = 0
                self._garbage += self._lengths[index]
            for name in ("_uids", "_sizes", "_received", "_starts", "_lengths", "_codes"):
                column = getattr(self, name)
                setattr(self, name, array(column.typecode, [value for value, kept in zip(column, keep) if kept]))
            self._bits = bytearray(value for value, kept in zip(self._bits, keep) if kept)
            self.reindex()
        self._collect()

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    # scans

    def unmarkAll(self) -> None:
        """
        Start a scan: no row is marked seen.
        """
        self._bits = self._bits.translate(_CLEAR_SEEN)

    def marked(self, index: int) -> bool:
        return bool(self._bits[index] & SEEN)

    def unmarked(self) -> List[int]:
        """
        The rows the scan did not see.
        """
        return [index for index, bits in enumerate(self._bits) if not bits & SEEN]

    def duplicates(self) -> List[int]:
        """
        The rows whose basename a row of a higher uid has too.
        """
        found = []
        keys = self._keys
        for position in range(1, len(keys)):
            if keys[position] >> _UID_BITS != keys[position - 1] >> _UID_BITS:
                continue
            # Same hash: compare the names of every earlier row with it.
            here = self.indexOf(keys[position] & MAX_UID)
            name = self._nameBytes(here)
            back = position - 1
            while back >= 0 and keys[back] >> _UID_BITS == keys[position] >> _UID_BITS:
                earlier = self.indexOf(keys[back] & MAX_UID)
                if self._nameBytes(earlier) == name:
                    found.append(min(here, earlier))
                back -= 1
        return sorted(set(found))

    # files a scan found that have no row yet

    def stash(self, basename: str, sub: str, tail: str) -> None:
        if self._stash is None:
            self._stash = {}
        self._stash[basename] = (sub, tail)

    def stashed(self, basename: str, sub: str) -> bool:
        found = self._stash.get(basename) if self._stash else None
        return found is not None and found[0] == sub

    def stashCount(self) -> int:
        return len(self._stash) if self._stash else 0

    def unstash(self) -> Iterator[Tuple[str, str, str]]:
        """
        Each stashed (basename, sub, tail), in basename order, taken out
        of the stash as it goes (a first scan of a big folder with no uid
        list finds every file unknown).
        """
        stash, self._stash = self._stash, None
        if not stash:
            return
        names: List[Optional[str]] = sorted(stash)
        for position, basename in enumerate(names):
            names[position] = None
            assert basename is not None
            sub, tail = stash.pop(basename)
            yield basename, sub, tail

    # inside

    def _nameBytes(self, index: int) -> bytes:
        start = self._starts[index]
        return bytes(self._names[start : start + self._lengths[index]])

    def _code(self, tail: str) -> int:
        code = self._tailCodes.get(tail)
        if code is None:
            code = self._tailCodes[tail] = len(self._tails)
            self._tails.append(tail)
        return code

    def _unindex(self, index: int) -> None:
        key = _key(self.basename(index), self._uids[index])
        position = bisect_left(self._keys, key)
        if position < len(self._keys) and self._keys[position] == key:
            del self._keys[position]

    def _collect(self) -> None:
        """
        Rewrite the name buffer once most of it is names of rows gone, and
        the tail list once most of it is unused.
        """
        if self._garbage > max(65536, len(self._names) // 2):
            names = bytearray()
            starts = array("I")
            for start, length in zip(self._starts, self._lengths):
                starts.append(len(names))
                names += self._names[start : start + length]
            self._names, self._starts, self._garbage = names, starts, 0
        if len(self._tails) > max(64, 2 * len(self)):
            tails = [self._tails[code] for code in self._codes]
            self._tails, self._tailCodes = [], {}
            self._codes = array("I", [self._code(tail) for tail in tails])

