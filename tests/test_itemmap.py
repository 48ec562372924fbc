"""
Tests for L{directpush.protocol.itemmap}.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List

from twisted.trial.unittest import SynchronousTestCase

from directpush.protocol.itemmap import ItemMap


def packed(items: Dict[str, int]) -> Dict[str, str]:
    """
    C{items} in the older stored form: value -> uids, comma-separated.
    """
    groups: Dict[str, List[str]] = {}
    for uid, value in items.items():
        groups.setdefault(str(value), []).append(uid)
    return {bits: ",".join(uids) for bits, uids in groups.items()}


class ItemMapTests(SynchronousTestCase):
    def test_likeADict(self) -> None:
        """
        Under a random mix of operations on numeric, odd and huge uids, an
        L{ItemMap} answers as a dict does.
        """
        rng = random.Random(7)
        uids = [str(n) for n in range(1, 300)] + ["0", "007", "abc", "12a", "\u0663", "99999999999999999999", str(1 << 40)]
        for _ in range(20):
            model: Dict[str, Any] = {}
            items = ItemMap()
            for _ in range(500):
                uid = rng.choice(uids)
                op = rng.randrange(5)
                if op == 0:
                    value = rng.choice([0, 1, 2, 3, 254, 255, -1, [1, 0]])
                    model[uid] = items[uid] = value
                elif op == 1:
                    self.assertEqual(items.pop(uid, "none"), model.pop(uid, "none"))
                elif op == 2 and uid in model:
                    del model[uid]
                    del items[uid]
                elif op == 3:
                    self.assertEqual(items.get(uid), model.get(uid))
                    self.assertEqual(uid in items, uid in model)
                else:
                    self.assertEqual(len(items), len(model))
            self.assertEqual(dict(items.items()), model)
            self.assertEqual(sorted(items), sorted(model))
            self.assertEqual(items, model)
            self.assertRaises(KeyError, items.__delitem__, "nope")
            self.assertRaises(KeyError, items.__getitem__, "nope")

    def test_order(self) -> None:
        """
        Numeric uids come in ascending order, then the others as added.
        """
        items = ItemMap([("30", 1), ("x", 0), ("4", 2), ("007", 3), ("100", 0)])
        self.assertEqual(list(items), ["4", "30", "100", "x", "007"])

    def test_packedRoundTrip(self) -> None:
        """
        L{ItemMap.fromPacked} reads the older stored form (uids grouped by
        value), including uids that are not numbers.
        """
        model = {str(n): n % 4 for n in range(1, 10001)}
        model.update({"a-1": 2, "0": 1, str(1 << 50): 3})
        again = ItemMap.fromPacked(packed(model))
        self.assertEqual(again, model)
        self.assertEqual(len(again), 10003)
        self.assertEqual(ItemMap.fromPacked({"1": ""}), {})
        self.assertEqual(ItemMap.fromPacked({}), {})

    def test_sparseUidsStayInTheDict(self) -> None:
        """
        A few very high uids do not make a huge bytearray.
        """
        model = {"4000000000": 1, "3999999999": 0}
        items = ItemMap(model.items())
        self.assertLess(len(items._dense), 1 << 17)
        again = ItemMap.fromPacked(packed(model))
        self.assertEqual(again, items)
        self.assertLess(len(again._dense), 1 << 17)
        self.assertEqual(ItemMap.fromStored(*items.stored()), items)

    def test_small(self) -> None:
        """
        20,000 items of a dense folder cost about a byte each.
        """
        items = ItemMap.fromPacked({"0": ",".join(str(n) for n in range(1, 20001))})
        self.assertEqual(len(items), 20000)
        self.assertLessEqual(len(items._dense), 20001)
        self.assertEqual(items._other, {})

    def test_storedRoundTrip(self) -> None:
        """
        L{ItemMap.stored} gives the numeric uids as a short compressed
        string and the others packed; L{ItemMap.fromStored} reads it back,
        and refuses what it did not make.
        """
        items = ItemMap([(str(n), 0) for n in range(1, 20001)] + [("a-1", 2)])
        items["5"] = 3
        dense, others = items.stored()
        self.assertLess(len(dense), 200)
        self.assertEqual(others, {"2": "a-1"})
        self.assertEqual(ItemMap.fromStored(dense, others), items)
        self.assertEqual(ItemMap.fromStored(*ItemMap().stored()), {})
        for bad in ("!!", dense[:-8], "eJw=", dense + dense):
            self.assertRaises(ValueError, ItemMap.fromStored, bad, others)
        self.assertRaises(ValueError, ItemMap.fromStored, dense, {"1": "5"})

    def test_highUidStaysWhereItWas(self) -> None:
        """
        A numeric uid kept in the dict (too high when it came) reads back
        from the stored form, though the map is now big enough to hold it
        in the bytearray.
        """
        items = ItemMap([("100000", 1)])
        for n in range(1, 10001):
            items[str(n)] = 0
        self.assertEqual(items._other, {"100000": 1})
        self.assertEqual(ItemMap.fromStored(*items.stored()), items)
