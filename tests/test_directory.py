# -*- test-case-name: tests.test_directory -*-
"""
Tests for L{directpush.directory}.
"""

from __future__ import annotations

import os
from typing import List, Optional

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from directpush.auth import PasswdFile
from directpush.directory import PasswdDirectory
from directpush.interfaces import IDirectory

from .util import assertProvides, runNow

USERS = """\
alice:{PLAIN}a
Bob:{PLAIN}b
carol@example.net:{PLAIN}c
albert@other.org:{PLAIN}d
# a comment
bad name:{PLAIN}x
"""


class PasswdDirectoryTests(SynchronousTestCase):
    """
    L{PasswdDirectory} answers from the users file.
    """

    def setUp(self) -> None:
        self.path = FilePath(self.mktemp())
        self.path.setContent(USERS.encode("utf-8"))
        self.calls: List[str] = []

    def directory(self, domain: Optional[str] = "example.org") -> PasswdDirectory:
        def runBlocking(f):  # type: ignore[no-untyped-def]
            self.calls.append("blocking")
            return runNow(f)

        return PasswdDirectory(PasswdFile(self.path), runBlocking, domain)

    def lookup(self, d: PasswdDirectory, query: str, limit: int = 10) -> List[dict]:
        return [dict(m) for m in self.successResultOf(d.lookup(query, limit))]

    def test_provides(self) -> None:
        """
        A L{PasswdDirectory} fully provides L{IDirectory}.
        """
        assertProvides(self, IDirectory, self.directory())

    def test_prefixOnNameAndAddress(self) -> None:
        """
        The query matches the start of the user name, of the address or of
        its local part; results are sorted by display name and carry the
        local part as the name.
        """
        d = self.directory()
        self.assertEqual(
            self.lookup(d, "al"),
            [
                {"name": "albert", "address": "albert@other.org"},
                {"name": "alice", "address": "alice@example.org"},
            ],
        )
        self.assertEqual(self.lookup(d, "carol@ex"), [{"name": "carol", "address": "carol@example.net"}])
        self.assertEqual(self.lookup(d, "carol@other"), [])
        self.assertEqual(self.lookup(d, "lice"), [], "a prefix, not a substring")

    def test_caseInsensitive(self) -> None:
        """
        Matching ignores the case of both the query and the names; names
        keep their own case in the results.
        """
        d = self.directory()
        self.assertEqual(self.lookup(d, "BO"), [{"name": "Bob", "address": "Bob@example.org"}])
        self.assertEqual(
            self.lookup(d, "ALICE@EXAMPLE.ORG"), [{"name": "alice", "address": "alice@example.org"}]
        )

    def test_limit(self) -> None:
        """
        At most C{limit} users come back: the first ones in sorted order;
        an empty query matches everyone and a limit below 1 matches no one.
        """
        d = self.directory()
        self.assertEqual([m["name"] for m in self.lookup(d, "", 3)], ["albert", "alice", "Bob"])
        self.assertEqual(len(self.lookup(d, "", 100)), 4)
        self.assertEqual(self.lookup(d, "a", 0), [])

    def test_noDomain(self) -> None:
        """
        Without a domain, a plain user's address is the bare name, and
        address-form users are unaffected.
        """
        d = self.directory(domain=None)
        self.assertEqual(self.lookup(d, "alice"), [{"name": "alice", "address": "alice"}])
        self.assertEqual(self.successResultOf(d.localUser("alice")), "alice")
        self.assertIsNone(self.successResultOf(d.localUser("alice@example.org")))
        self.assertEqual(self.successResultOf(d.localUser("carol@example.net")), "carol@example.net")

    def test_domainWithAt(self) -> None:
        """
        A domain given as C{@example.org} means C{example.org}.
        """
        d = self.directory(domain="@example.org")
        self.assertEqual(self.successResultOf(d.localUser("alice@example.org")), "alice")

    def test_localUser(self) -> None:
        """
        C{localUser} matches whole addresses ignoring case: address-form
        names, C{name@domain} for plain names, and the bare plain name.
        """
        d = self.directory()
        self.assertEqual(self.successResultOf(d.localUser("ALICE@Example.org")), "alice")
        self.assertEqual(self.successResultOf(d.localUser("bob@example.org")), "Bob")
        self.assertEqual(self.successResultOf(d.localUser("bob")), "Bob")
        self.assertEqual(self.successResultOf(d.localUser("Carol@Example.NET")), "carol@example.net")
        for other in ("carol", "alice@example.net", "alic", "", "someone@example.org"):
            self.assertIsNone(self.successResultOf(d.localUser(other)), other)

    def test_collisionPrefersAddressName(self) -> None:
        """
        When a plain name under the domain and an address-form name claim
        the same address, the address-form user receives the mail.
        """
        self.path.setContent(b"dave:{PLAIN}x\ndave@example.org:{PLAIN}y\n")
        d = self.directory()
        self.assertEqual(self.successResultOf(d.localUser("Dave@example.org")), "dave@example.org")
        self.assertEqual(self.successResultOf(d.localUser("dave")), "dave")

    def test_fileChangesPickedUp(self) -> None:
        """
        A user added to the file is found on the next call, without a
        restart; a removed one disappears; a missing file means no users.
        """
        d = self.directory()
        self.assertIsNone(self.successResultOf(d.localUser("erin@example.org")))
        self.path.setContent(USERS.encode("utf-8") + b"erin:{PLAIN}e\n")
        self.assertEqual(self.successResultOf(d.localUser("erin@example.org")), "erin")
        self.path.setContent(b"erin:{PLAIN}e\n")
        self.assertIsNone(self.successResultOf(d.localUser("alice@example.org")))
        self.assertEqual(self.lookup(d, ""), [{"name": "erin", "address": "erin@example.org"}])
        self.path.remove()
        self.assertEqual(self.lookup(d, ""), [])

    def test_sameSizeRewriteDetected(self) -> None:
        """
        A rewrite that keeps the size is seen through the modification time.
        """
        d = self.directory()
        self.assertEqual(self.lookup(d, "alice")[0]["address"], "alice@example.org")
        self.path.setContent(USERS.replace("alice", "alicf").encode("utf-8"))
        st = os.stat(self.path.path)
        os.utime(self.path.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        self.assertEqual(self.lookup(d, "alice"), [])
        self.assertEqual(self.lookup(d, "alicf")[0]["address"], "alicf@example.org")

    def test_readsThroughRunBlocking(self) -> None:
        """
        Every lookup runs its file access through C{runBlocking}.
        """
        d = self.directory()
        d.lookup("a", 5)
        d.localUser("alice@example.org")
        self.assertEqual(self.calls, ["blocking", "blocking"])
