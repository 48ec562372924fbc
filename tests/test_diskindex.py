"""
Tests for L{directpush.backends._diskindex}: a big maildir folder's index
in a temporary SQLite file, answering as a L{MessageTable} does.
"""

from __future__ import annotations

import random
from typing import List, Tuple, Union

from twisted.trial.unittest import SynchronousTestCase

from directpush.backends._diskindex import DiskIndex, DiskTable
from directpush.backends._messagetable import MessageTable

Table = Union[MessageTable, DiskTable]
Row = Tuple[int, str, str, str, float, int]

NAMES = ["a.host", "b.host", "c.host", "d.host", "\udcff.host", "e\u00e9.host", "f.host", "g.host"]
TAILS = ["", ":2,", ":2,S", ":2,FS", ":2,RS"]


def rows(table: Table) -> List[Row]:
    """
    Every row of C{table}, through its row handles.
    """
    handles = [table.indexOf(uid) for uid, _ in table.items()]
    return [(table.uid(h), table.basename(h), table.sub(h), table.tail(h), table.received(h), table.size(h)) for h in handles]


class DiskTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.index = DiskIndex()
        self.addCleanup(self.index.close)

    def test_sameAsMessageTable(self) -> None:
        """
        Random changes and scans, applied to a L{MessageTable} and to a
        L{DiskTable}, leave both with the same rows, lookups, listing,
        marks and stash.
        """
        for seed in range(30):
            rng = random.Random(seed)
            memory, disk = MessageTable(), self.index.table()
            nextUid = 1
            for step in range(60):
                op = rng.randrange(8)
                handles = {t: [t.indexOf(uid) for uid, _ in t.items()] for t in (memory, disk)}
                pick = rng.randrange(len(memory)) if len(memory) else None
                if op <= 1:
                    args = (nextUid, rng.choice(NAMES), rng.choice(["cur", "new"]), rng.choice(TAILS), float(rng.randrange(100)), rng.randrange(5000))
                    nextUid += rng.randrange(1, 4)
                    unstated = rng.random() < 0.2
                    for t in (memory, disk):
                        t.add(*args, unstated=unstated)
                elif op == 2 and pick is not None:
                    for t in (memory, disk):
                        t.remove([handles[t][pick]])
                elif op == 3 and pick is not None:
                    sub, tail = rng.choice(["cur", "new"]), rng.choice(TAILS)
                    for t in (memory, disk):
                        t.setFile(handles[t][pick], sub, tail)
                elif op == 4 and pick is not None:
                    name = rng.choice(NAMES)
                    for t in (memory, disk):
                        t.rename(handles[t][pick], name)
                elif op == 5 and pick is not None:
                    for t in (memory, disk):
                        t.setStat(handles[t][pick], 7.5, 77)
                elif op == 6:
                    # a scan: see some names, stash the unknown ones
                    # (one at a time, or in one batch, names repeating)
                    seen = [rng.choice(NAMES) for _ in range(rng.randrange(10))]
                    tails = [rng.choice(TAILS) for _ in seen]
                    batched = rng.random() < 0.5
                    results = []
                    for t in (memory, disk):
                        t.unmarkAll()
                        if batched:
                            handles = t.seeMany([(name, "cur", tail) for name, tail in zip(seen, tails)])
                        else:
                            handles = [(h, h >= 0 and t.unstated(h)) for h in (t.see(name, "cur", tail) for name, tail in zip(seen, tails))]
                        found = []
                        stated = []
                        for name, tail, (h, unstated) in zip(seen, tails, handles):
                            if h < 0:
                                t.stash(name, "cur", "")
                            elif unstated:
                                stated.append((h, "cur", tail, 9.5, 99))
                            found.append((h >= 0 and t.uid(h), unstated))
                        t.stated(stated)
                        results.append((found, sorted(t.uid(h) for h in t.unmarked()), t.stashCount(), list(t.unstash())))
                    self.assertEqual(results[0], results[1], (seed, step))
                elif op == 7:
                    self.assertEqual(
                        sorted(memory.uid(h) for h in memory.duplicates()),
                        sorted(disk.uid(h) for h in disk.duplicates()),
                    )
                self.assertEqual(rows(memory), rows(disk), (seed, step))
                self.assertEqual(len(memory), len(disk))
                self.assertEqual(memory.hasNew(), disk.hasNew())
                self.assertEqual(list(memory.listing()), list(disk.listing()))
                for name in NAMES:
                    found = [t.find(name) for t in (memory, disk)]
                    self.assertEqual(
                        [t.uid(h) if h >= 0 else -1 for t, h in zip((memory, disk), found)][0],
                        [t.uid(h) if h >= 0 else -1 for t, h in zip((memory, disk), found)][1],
                    )
                if len(memory):
                    low = rng.choice([u for u, _ in memory.items()])
                    self.assertEqual(list(memory.itemsFrom(low)), list(disk.itemsFrom(low)))
            disk.clear()
            self.assertEqual(len(disk), 0)

    def test_badUid(self) -> None:
        """
        A taken uid, 0, and a uid over 32 bits are refused.
        """
        table = self.index.table()
        table.add(1, "a", "cur", "", 0.0, 0)
        for uid in (1, 0, 1 << 32):
            self.assertRaises(ValueError, table.add, uid, "z", "cur", "", 0.0, 0)
        self.assertEqual(len(table), 1)
        self.assertEqual((table.indexOf(0), table.indexOf(1 << 40), table.indexOf(2)), (-1, -1, -1))

    def test_spill(self) -> None:
        """
        A spilled table has the L{MessageTable}'s rows, scan marks and
        stash; the L{MessageTable} is emptied.
        """
        memory = MessageTable()
        for uid in range(1, 6):
            memory.add(uid, f"m{uid}", "new" if uid == 3 else "cur", ":2,S" if uid % 2 else "", float(uid), uid * 10)
        expected = rows(memory)
        memory.unmarkAll()
        memory.see("m2", "cur", "")
        memory.see("m4", "cur", "")
        memory.stash("x", "new", "")
        disk = DiskTable.spill(self.index, memory)
        self.assertEqual(len(memory), 0)
        self.assertEqual(memory.stashCount(), 0)
        self.assertEqual(rows(disk), expected)
        self.assertEqual([disk.uid(h) for h in disk.unmarked()], [1, 3, 5])
        self.assertEqual(list(disk.unstash()), [("x", "new", "")])

    def test_spillBeforeAnyMark(self) -> None:
        """
        A scan that spills before it saw any known file goes on marking
        on disk: the rows it sees afterwards are not taken for gone.
        """
        memory = MessageTable()
        for uid in range(1, 4):
            memory.add(uid, f"m{uid}", "cur", "", float(uid), uid)
        memory.unmarkAll()
        memory.stash("x", "cur", "")
        disk = DiskTable.spill(self.index, memory)
        disk.see("m2", "cur", "")
        self.assertEqual([disk.uid(h) for h in disk.unmarked()], [1, 3])

    def test_foldersApart(self) -> None:
        """
        Two tables of one index hold their own rows; clearing one leaves
        the other.
        """
        one, two = self.index.table(), self.index.table()
        one.add(1, "same", "cur", "", 1.0, 1)
        two.add(1, "same", "new", ":2,S", 2.0, 2)
        two.add(2, "other", "cur", "", 3.0, 3)
        two.stash("late", "cur", "")
        self.assertEqual(rows(one), [(1, "same", "cur", "", 1.0, 1)])
        one.clear()
        self.assertEqual((len(one), one.find("same")), (0, -1))
        self.assertEqual(len(rows(two)), 2)
        self.assertEqual(two.stashCount(), 1)

    def test_findUsesNameIndex(self) -> None:
        """
        A lookup by name goes through the name index, not a walk of the
        folder (which made a rescan of a big folder quadratic).
        """
        table = self.index.table()
        table.add(1, "a", "cur", "", 0.0, 0)
        calls: List[str] = []
        self.index._connection().set_trace_callback(calls.append)
        table.find("a")
        self.index._connection().set_trace_callback(None)
        (query,) = calls
        plan = " ".join(str(row) for row in self.index._connection().execute("EXPLAIN QUERY PLAN " + query))
        self.assertIn("rows_name", plan)

    def test_fingerprint(self) -> None:
        """
        The fingerprint changes when a row comes or goes or its flags
        change, not when only its name does.
        """
        table = self.index.table()
        table.add(1, "a", "cur", ":2,", 0.0, 0)
        first = table.fingerprint()
        table.rename(1, "b")
        self.assertEqual(table.fingerprint(), first)
        table.setFile(1, "cur", ":2,S")
        flagged = table.fingerprint()
        self.assertNotEqual(flagged, first)
        table.add(2, "c", "new", "", 0.0, 0)
        self.assertNotEqual(table.fingerprint(), flagged)

    def test_batches(self) -> None:
        """
        Folders bigger than a read batch list, walk and unstash whole.
        """
        table = self.index.table()
        count = 10_000
        for uid in range(1, count + 1):
            table.add(uid, f"{uid:06d}.host", "cur", "", float(uid), uid)
            table.stash(f"s{uid:06d}", "cur", "")
        self.assertEqual(len(table.listing()), count)
        self.assertEqual(sum(1 for _ in table.items()), count)
        self.assertEqual([name for name, _, _ in table.unstash()], [f"s{uid:06d}" for uid in range(1, count + 1)])
        self.assertEqual(table.stashCount(), 0)
        table.unmarkAll()
        table.see("000005.host", "cur", "")
        self.assertEqual(len(table.unmarked()), count - 1)
