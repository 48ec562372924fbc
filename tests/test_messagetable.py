"""
Tests for L{directpush.backends._messagetable}: the maildir backend's
per-folder store of message files.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from directpush.backends import _messagetable
from directpush.backends._messagetable import INSERT_LIMIT, MAX_UID, MessageTable, flagsOf
from directpush.model import Flag, MessageInfo

Row = Tuple[int, str, str, str, float, int]


def rowsOf(table: MessageTable) -> Iterator[Row]:
    """
    Every row of C{table} as (uid, basename, sub, tail, received, size).
    """
    for index in range(len(table)):
        yield table.uid(index), table.basename(index), table.sub(index), table.tail(index), table.received(index), table.size(index)


def table(*rows: Row) -> MessageTable:
    t = MessageTable()
    for row in rows:
        t.add(*row)
    return t


class MessageTableTests(SynchronousTestCase):
    def test_addAndRead(self) -> None:
        """
        A row reads back as added; rows stay in uid order whatever order
        they come in.
        """
        t = table((5, "b.host", "new", "", 2.5, 20), (2, "a.host", "cur", ":2,S", 1.5, 10))
        self.assertEqual(list(rowsOf(t)), [(2, "a.host", "cur", ":2,S", 1.5, 10), (5, "b.host", "new", "", 2.5, 20)])
        self.assertEqual(t.filename(0), "a.host:2,S")
        self.assertEqual(flagsOf(t.tail(0)), {Flag.SEEN})
        self.assertEqual((t.indexOf(5), t.indexOf(2), t.indexOf(3), t.indexOf(99)), (1, 0, -1, -1))
        self.assertEqual((t.find("b.host"), t.find("a.host"), t.find("c.host")), (1, 0, -1))
        self.assertTrue(t.hasNew())

    def test_badUid(self) -> None:
        """
        A taken uid, 0, and a uid over 32 bits are refused.
        """
        t = table((1, "a", "cur", "", 0.0, 0))
        for uid in (1, 0, MAX_UID + 1):
            self.assertRaises(ValueError, t.add, uid, "z", "cur", "", 0.0, 0)
        self.assertEqual(len(t), 1)

    def test_undecodableName(self) -> None:
        """
        File names os.scandir gives with surrogates (bytes not UTF-8) are
        stored and found as they are.
        """
        name = b"17\xff.host".decode("utf-8", "surrogateescape")
        t = table((1, name, "cur", ":2,", 0.0, 0))
        self.assertEqual(t.basename(0), name)
        self.assertEqual(t.find(name), 0)

    def test_collisions(self) -> None:
        """
        Names whose hashes collide are told apart by the stored name.
        """
        self.patch(_messagetable, "_key", lambda basename, uid: (7 << 32) | uid)
        t = table(*[(uid, f"m{uid}", "cur", "", 0.0, 0) for uid in range(1, 6)])
        self.assertEqual([t.find(f"m{uid}") for uid in range(1, 6)], [0, 1, 2, 3, 4])
        self.assertEqual(t.find("m9"), -1)
        t.remove([2])
        self.assertEqual([t.find(f"m{uid}") for uid in (1, 2, 4, 5)], [0, 1, 2, 3])
        self.assertEqual(t.find("m3"), -1)

    def test_indexOfWithGaps(self) -> None:
        """
        Uid lookups find every row of a folder with many gaps.
        """
        t = table(*[(uid, f"m{uid}", "cur", "", 0.0, 0) for uid in range(1, 400, 3)])
        t.remove(range(0, len(t), 5))
        uids = [t.uid(i) for i in range(len(t))]
        self.assertEqual([t.indexOf(uid) for uid in uids], list(range(len(uids))))
        self.assertEqual([t.indexOf(uid) for uid in range(0, 402) if uid not in uids], [-1] * (402 - len(uids)))

    def test_removeFewAndMany(self) -> None:
        """
        Removing a few rows and removing more than L{INSERT_LIMIT} at once
        leave the same table, found by uid and by name.
        """
        rows = [(uid, f"name{uid}", "cur" if uid % 3 else "new", ":2,S" if uid % 2 else ":2,", float(uid), uid) for uid in range(1, 301)]
        doomed = list(range(0, 300, 2))
        few, many = table(*rows), table(*rows)
        for start in range(0, len(doomed), 10):
            few.remove([i - start for i in doomed[start : start + 10]])
        many.remove(doomed)
        self.assertGreater(len(doomed), INSERT_LIMIT)
        expected = [row for i, row in enumerate(rows) if i % 2]
        for t in (few, many):
            self.assertEqual(list(rowsOf(t)), expected)
            self.assertEqual([t.find(row[1]) for row in expected], list(range(len(expected))))
            self.assertEqual(t.find("name1"), -1)

    def test_collect(self) -> None:
        """
        Once most of the name buffer is names of rows gone, it is rewritten;
        the rows keep their names.
        """
        t = table(*[(uid, "x" * 200 + str(uid), "cur", "", 0.0, 0) for uid in range(1, 1001)])
        size = len(t._names)
        t.remove(range(0, 900))
        self.assertLess(len(t._names), size // 2)
        self.assertEqual([t.basename(i) for i in range(len(t))], ["x" * 200 + str(uid) for uid in range(901, 1001)])
        self.assertEqual(t.find("x" * 200 + "950"), 49)

    def test_rename(self) -> None:
        """
        A renamed row keeps its uid and is found by its new name only.
        """
        t = table((1, "a", "cur", ":2,S", 1.0, 5), (2, "b", "cur", "", 2.0, 6))
        t.rename(0, "c")
        self.assertEqual(list(rowsOf(t))[0], (1, "c", "cur", ":2,S", 1.0, 5))
        self.assertEqual((t.find("a"), t.find("c")), (-1, 0))

    def test_reindexAndDuplicates(self) -> None:
        """
        Rows added without the index are found after L{reindex}; of rows
        sharing a basename, all but the highest uid are duplicates.
        """
        t = MessageTable()
        for uid, name in [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "a")]:
            t.add(uid, name, "cur", "", 0.0, 0, indexed=False, unstated=True)
        self.assertEqual(t.find("b"), -1)
        t.reindex()
        self.assertEqual(t.find("b"), 1)
        self.assertEqual(t.duplicates(), [0, 2])
        self.assertTrue(t.unstated(1))

    def test_scanMarks(self) -> None:
        """
        L{MessageTable.see} marks stated rows and records their file;
        L{MessageTable.unmarked} gives the rest.
        """
        t = table((1, "a", "new", "", 0.0, 0), (2, "b", "cur", ":2,", 0.0, 0), (3, "c", "cur", ":2,", 0.0, 0))
        t.add(4, "d", "cur", "", 0.0, 0, unstated=True)
        t.unmarkAll()
        self.assertEqual((t.see("a", "cur", ":2,S"), t.see("c", "cur", ":2,"), t.see("d", "cur", ":2,"), t.see("z", "cur", "")), (0, 2, 3, -1))
        self.assertEqual(t.unmarked(), [1, 3])
        self.assertEqual((t.sub(0), t.tail(0)), ("cur", ":2,S"))
        self.assertFalse(t.hasNew())
        t.setStat(3, 9.0, 99)
        t.see("d", "cur", ":2,F")
        self.assertEqual(t.unmarked(), [1])
        self.assertEqual(list(rowsOf(t))[3], (4, "d", "cur", ":2,F", 9.0, 99))

    def test_listingIsASnapshot(self) -> None:
        """
        A listing gives the rows as they were: later changes do not show.
        """
        t = table((1, "a", "cur", ":2,S", 1.0, 5), (2, "b", "new", "", 2.0, 6))
        listing = t.listing()
        t.setFile(1, "cur", ":2,F")
        t.remove([0])
        t.setStat(0, 7.0, 7)
        t.add(3, "c", "cur", "", 3.0, 3)
        again = t.listing()
        t.setFile(0, "new", "")
        self.assertEqual(list(again), [MessageInfo("2", frozenset({Flag.FLAGGED}), 7.0, 7), MessageInfo("3", frozenset(), 3.0, 3)])
        self.assertEqual(
            list(listing),
            [MessageInfo("1", frozenset({Flag.SEEN}), 1.0, 5), MessageInfo("2", frozenset(), 2.0, 6)],
        )
        self.assertEqual(list(listing.rows()), [(0, "1", {Flag.SEEN}, 1.0), (1, "2", frozenset(), 2.0)])

    def test_fingerprint(self) -> None:
        """
        The fingerprint changes with the rows and their flags, not with
        letters that are no flags of ours (Dovecot keywords).
        """
        t = table((1, "a", "cur", ":2,S", 1.0, 5))
        prints: List[Tuple[int, int]] = [t.fingerprint()]
        t.setFile(0, "cur", ":2,Sa")
        self.assertEqual(t.fingerprint(), prints[0])
        t.setFile(0, "cur", ":2,FS")
        prints.append(t.fingerprint())
        t.add(2, "b", "new", "", 2.0, 6)
        prints.append(t.fingerprint())
        self.assertEqual(len(set(prints)), 3)

    def test_items(self) -> None:
        """
        L{MessageTable.items} gives (uid, basename) from a position on.
        """
        t = table((1, "a", "cur", "", 0.0, 0), (3, "b", "cur", "", 0.0, 0), (4, "c", "cur", "", 0.0, 0))
        self.assertEqual(list(t.items()), [(1, "a"), (3, "b"), (4, "c")])
        self.assertEqual(list(t.items(2)), [(4, "c")])

    def test_tailsCollected(self) -> None:
        """
        The list of distinct name tails does not grow without end when
        rows change their tails over and over.
        """
        t = table((1, "a", "cur", "", 0.0, 0))
        for n in range(1000):
            t.setFile(0, "cur", f":2,{n}")
            t.rename(0, "a")
        self.assertLess(len(t._tails), 100)
        self.assertEqual(t.filename(0), "a:2,999")

    def test_emptyTablesIndependent(self) -> None:
        """
        Empty tables share their empty columns, and rows added to one (or
        to one emptied by L{MessageTable.clear}) show in no other.
        """
        a, b = MessageTable(), MessageTable()
        self.assertIs(a._uids, b._uids)
        empty = b.listing()
        a.add(1, "a", "new", "", 1.0, 1)
        a.clear()
        a.add(2, "b", "cur", ":2,S", 2.0, 2)
        b.unmarkAll()
        self.assertEqual((len(b), b.find("b"), list(empty), b.hasNew()), (0, -1, [], False))
        self.assertEqual(list(rowsOf(a)), [(2, "b", "cur", ":2,S", 2.0, 2)])
        self.assertEqual(len(MessageTable()._tails), 0)
