# -*- test-case-name: tests.test_state -*-
"""
A state store in memory, for tests and as the reference implementation.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from ..interfaces import IStateStore


@implementer(IStateStore)
class MemoryStateStore:
    def __init__(self) -> None:
        self._values: Dict[Tuple[str, str, str], bytes] = {}

    def load(self, user: str, device: str, key: str) -> "Deferred[Optional[bytes]]":
        return succeed(self._values.get((user, device, key)))

    def keys(self, user: str, device: str, prefix: str = "") -> "Deferred[List[str]]":
        return succeed(
            sorted(k for (u, d, k) in self._values if u == user and d == device and k.startswith(prefix))
        )

    def save(self, user: str, device: str, values: Mapping[str, Optional[bytes]]) -> "Deferred[None]":
        for key, value in values.items():
            if value is None:
                self._values.pop((user, device, key), None)
            else:
                self._values[(user, device, key)] = bytes(value)
        return succeed(None)

    def devices(self, user: str) -> "Deferred[List[str]]":
        return succeed(sorted({d for (u, d, _) in self._values if u == user and d}))
