# -*- test-case-name: tests.test_imapclient -*-
"""
Tests for L{directpush.backends._imapclient}: the IMAP client driven over
a L{StringTransport}, byte for byte.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from directpush.backends._imapclient import (
    CommandFailed,
    IMAPClient,
    formatDate,
    formatSet,
    parseDate,
    parseSet,
)


class ClientTests(SynchronousTestCase):
    """
    L{IMAPClient} commands and responses.
    """

    def connect(self, capabilities: bytes = b"IMAP4rev1 LITERAL+ BINARY IDLE MOVE UIDPLUS ESEARCH") -> None:
        self.client = IMAPClient()
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)
        self.client.dataReceived(b"* OK [CAPABILITY " + capabilities + b"] ready\r\n")
        self.untagged: List[Any] = []
        self.client.onUntagged = self.untagged.append

    def sent(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def test_greetingCapabilities(self) -> None:
        """
        The greeting's capabilities are kept, upper case.
        """
        self.connect(b"IMAP4rev1 literal+ AUTH=PLAIN")
        self.assertEqual(self.client.capabilities, {b"IMAP4REV1", b"LITERAL+", b"AUTH=PLAIN"})
        self.assertTrue(self.client.greeting.called)

    def test_executeCollectsEverything(self) -> None:
        """
        A command's untagged responses, whatever they are, come back
        parsed with the tagged line.
        """
        self.connect()
        d = self.client.execute(b"LIST", b'""', b'"*"')
        self.assertEqual(self.sent(), b'0001 LIST "" "*"\r\n')
        self.client.dataReceived(
            b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n* ESEARCH (TAG "x") UID ALL 1:3\r\n0001 OK done\r\n'
        )
        result = self.successResultOf(d)
        self.assertEqual(result.untagged[0], [b"LIST", [b"\\HasNoChildren", b"\\Sent"], b"/", b"Sent"])
        self.assertEqual(result.untagged[1][0], b"ESEARCH")
        self.assertEqual(result.tagged, b"OK done")

    def test_failureCode(self) -> None:
        """
        NO fails with L{CommandFailed} carrying the response code.
        """
        self.connect()
        d = self.client.execute(b"CREATE", b'"x"')
        self.client.dataReceived(b"0001 NO [ALREADYEXISTS] Mailbox already exists\r\n")
        failure = self.failureResultOf(d, CommandFailed)
        self.assertEqual(failure.value.code, b"ALREADYEXISTS")

    def test_appendNonSynchronising(self) -> None:
        """
        With LITERAL+ and BINARY, APPEND sends the message at once as a
        non-synchronising literal8; APPENDUID gives its uid.
        """
        self.connect()
        raw = b"Subject: x\r\n\r\nnul\x00\r\n"
        d = Deferred.fromCoroutine(self.client.append(b"INBOX", raw, [b"\\Seen"], 1_600_000_000))
        self.assertEqual(
            self.sent(),
            b'0001 APPEND "INBOX" (\\Seen) "13-Sep-2020 12:26:40 +0000" ~{%d+}\r\n' % len(raw) + raw + b"\r\n",
        )
        self.client.dataReceived(b"0001 OK [APPENDUID 77 12] Append completed\r\n")
        self.assertEqual(self.successResultOf(d), (77, 12))

    def test_appendSynchronising(self) -> None:
        """
        Without LITERAL+, the message follows the server's continuation.
        """
        self.connect(b"IMAP4rev1 UIDPLUS")
        d = Deferred.fromCoroutine(self.client.append(b"INBOX", b"hello", []))
        self.assertEqual(self.sent(), b'0001 APPEND "INBOX" () {5}\r\n')
        self.client.dataReceived(b"+ go ahead\r\n")
        self.assertEqual(self.sent(), b"hello\r\n")
        self.client.dataReceived(b"0001 OK [APPENDUID 1 2] done\r\n")
        self.assertEqual(self.successResultOf(d), (1, 2))

    def test_idle(self) -> None:
        """
        While idling, untagged responses reach C{onUntagged} at once; DONE
        ends IDLE and its completion fires L{IMAPClient.done}'s Deferred.
        """
        self.connect()
        started = self.client.idle()
        self.assertEqual(self.sent(), b"0001 IDLE\r\n")
        self.assertNoResult(started)
        self.client.dataReceived(b"+ idling\r\n")
        self.successResultOf(started)
        self.assertTrue(self.client.idling)
        self.client.dataReceived(b"* 3 EXISTS\r\n* STATUS Lists (MESSAGES 2 UIDNEXT 9)\r\n")
        self.assertEqual(self.untagged, [[b"3", b"EXISTS"], [b"STATUS", b"Lists", [b"MESSAGES", b"2", b"UIDNEXT", b"9"]]])
        done = self.client.done()
        self.assertEqual(self.sent(), b"DONE\r\n")
        self.assertFalse(self.client.idling)
        self.assertNoResult(done)
        self.client.dataReceived(b"0001 OK Idle completed\r\n")
        self.successResultOf(done)

    def test_byeCloses(self) -> None:
        """
        A BYE while idling reaches C{onUntagged}, and the client closes the
        connection itself: a server on its way down may leave it open.
        """
        self.connect()
        self.client.idle()
        self.client.dataReceived(b"+ idling\r\n")
        self.assertFalse(self.transport.disconnecting)
        self.client.dataReceived(b"* BYE Server shutting down.\r\n")
        self.assertEqual(self.untagged, [[b"BYE", b"Server", b"shutting", b"down."]])
        self.assertTrue(self.transport.disconnecting)

    def test_idleQueued(self) -> None:
        """
        IDLE asked for while a command is pending goes out after it, and
        is then recognised as IDLE.
        """
        self.connect()
        d = self.client.execute(b"NOTIFY SET", b"(personal (MessageNew))")
        started = self.client.idle()
        self.assertEqual(self.sent(), b"0001 NOTIFY SET (personal (MessageNew))\r\n")
        self.client.dataReceived(b"0001 OK NOTIFY completed\r\n")
        self.successResultOf(d)
        self.assertEqual(self.sent(), b"0002 IDLE\r\n")
        self.client.dataReceived(b"+ idling\r\n* 4 EXISTS\r\n")
        self.successResultOf(started)
        self.assertEqual(self.untagged, [[b"4", b"EXISTS"]])

    def test_idleConnectionLost(self) -> None:
        """
        A connection lost while idling fails the start of IDLE that never
        came, but ends a running IDLE quietly.
        """
        self.connect()
        started = self.client.idle()
        self.client.dataReceived(b"+ idling\r\n")
        self.successResultOf(started)
        lost: List[Any] = []
        self.client.onLost = lost.append
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.client.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.successResultOf(self.client.done()))
        self.assertEqual(len(lost), 1)
        self.assertTrue(self.client.lost)

    def test_selectCondstore(self) -> None:
        """
        SELECT with QRESYNC keeps UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ,
        EXISTS, and what VANISHED (EARLIER) and FETCH said.
        """
        self.connect()
        self.client.enabled = frozenset({b"QRESYNC"})
        d = Deferred.fromCoroutine(self.client.select(b"INBOX", qresync=(67890007, 20050715194045000)))
        self.assertEqual(self.sent(), b'0001 SELECT "INBOX" (QRESYNC (67890007 20050715194045000))\r\n')
        self.client.dataReceived(
            b"* 172 EXISTS\r\n"
            b"* OK [UIDVALIDITY 67890007] UIDs valid\r\n"
            b"* OK [UIDNEXT 600] Predicted next UID\r\n"
            b"* OK [HIGHESTMODSEQ 20060115205545359] Highest\r\n"
            b"* VANISHED (EARLIER) 41,43:45\r\n"
            b"* 49 FETCH (UID 117 FLAGS (\\Seen \\Answered) MODSEQ (20060115194045000))\r\n"
            b"0001 OK [READ-WRITE] done\r\n"
        )
        sel = self.successResultOf(d)
        self.assertEqual(
            (sel.exists, sel.uidValidity, sel.uidNext, sel.highestModSeq, sel.vanished),
            (172, 67890007, 600, 20060115205545359, [41, 43, 44, 45]),
        )
        self.assertEqual(sel.fetched[0][b"UID"], b"117")
        self.assertEqual(self.client.selected, "INBOX")

    def test_uidFetchChangedSince(self) -> None:
        """
        UID FETCH with CHANGEDSINCE and VANISHED: items with a UID come
        back as dicts; VANISHED uids separately.
        """
        self.connect()
        d = Deferred.fromCoroutine(self.client.uidFetch(b"1:*", b"(UID FLAGS)", changedSince=12, vanished=True))
        self.assertEqual(self.sent(), b"0001 UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE 12 VANISHED)\r\n")
        self.client.dataReceived(
            b"* VANISHED (EARLIER) 3:4\r\n* 1 FETCH (UID 7 FLAGS (\\Flagged) MODSEQ (13))\r\n* 2 FETCH (FLAGS ())\r\n0001 OK\r\n"
        )
        fetched, gone = self.successResultOf(d)
        self.assertEqual([f[b"UID"] for f in fetched], [b"7"])
        self.assertEqual(fetched[0][b"FLAGS"], [b"\\Flagged"])
        self.assertEqual(gone, [3, 4])

    def test_binaryLiteral(self) -> None:
        """
        A BINARY[] literal8 is read whole, NUL included.
        """
        self.connect()
        d = Deferred.fromCoroutine(self.client.uidFetch(b"5", b"(UID BINARY.PEEK[])"))
        self.client.dataReceived(b"* 1 FETCH (UID 5 BINARY[] ~{6}\r\nab\x00c\r\n)\r\n0001 OK\r\n")
        fetched, _ = self.successResultOf(d)
        self.assertEqual(fetched[0][b"BINARY[]"], b"ab\x00c\r\n")

    def test_esearch(self) -> None:
        """
        UID SEARCH uses ESEARCH's compact form where offered.
        """
        self.connect()
        d = Deferred.fromCoroutine(self.client.uidSearchAll())
        self.assertEqual(self.sent(), b"0001 UID SEARCH RETURN (ALL) ALL\r\n")
        self.client.dataReceived(b'* ESEARCH (TAG "0001") UID ALL 1:3,9\r\n0001 OK\r\n')
        self.assertEqual(self.successResultOf(d), [1, 2, 3, 9])

    def test_moveCopyUid(self) -> None:
        """
        UID MOVE returns COPYUID's old -> new map, from the untagged OK
        Dovecot sends.
        """
        self.connect()
        d = Deferred.fromCoroutine(self.client.uidMove(b"4", b"Archive"))
        self.assertEqual(self.sent(), b'0001 UID MOVE 4 "Archive"\r\n')
        self.client.dataReceived(b"* OK [COPYUID 99 4 17] Moved\r\n* 1 EXPUNGE\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(d), {4: 17})

    def test_moveWithoutMove(self) -> None:
        """
        Without MOVE: UID COPY, STORE \\Deleted, UID EXPUNGE.
        """
        self.connect(b"IMAP4rev1 UIDPLUS")
        d = Deferred.fromCoroutine(self.client.uidMove(b"4", b"Archive"))
        self.assertEqual(self.sent(), b'0001 UID COPY 4 "Archive"\r\n')
        self.client.dataReceived(b"0001 OK [COPYUID 99 4 17] done\r\n")
        self.assertEqual(self.sent(), b"0002 UID STORE 4 +FLAGS.SILENT (\\Deleted)\r\n")
        self.client.dataReceived(b"0002 OK done\r\n")
        self.assertEqual(self.sent(), b"0003 UID EXPUNGE 4\r\n")
        self.client.dataReceived(b"0003 OK done\r\n")
        self.assertEqual(self.successResultOf(d), {4: 17})

    def test_loginPlain(self) -> None:
        """
        AUTHENTICATE PLAIN with an initial response where SASL-IR is
        offered; non-ASCII passwords travel as UTF-8.
        """
        self.connect(b"IMAP4rev1 SASL-IR AUTH=PLAIN")
        d = Deferred.fromCoroutine(self.client.loginAs("bob@example.org", "s\u00e9cret"))
        self.assertEqual(self.sent(), b"0001 AUTHENTICATE PLAIN AGJvYkBleGFtcGxlLm9yZwBzw6ljcmV0\r\n")
        self.client.dataReceived(b"0001 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
        self.successResultOf(d)
        self.assertIn(b"IDLE", self.client.capabilities)

    def test_loginFallback(self) -> None:
        """
        LOGIN with quoted strings where AUTHENTICATE PLAIN is not offered.
        """
        self.connect(b"IMAP4rev1")
        d = Deferred.fromCoroutine(self.client.loginAs("bob", 'a"b'))
        self.assertEqual(self.sent(), b'0001 LOGIN "bob" "a\\"b"\r\n')
        self.client.dataReceived(b"0001 NO [AUTHENTICATIONFAILED] bad\r\n")
        self.assertEqual(self.failureResultOf(d, CommandFailed).value.code, b"AUTHENTICATIONFAILED")


class HelperTests(SynchronousTestCase):
    """
    Sequence sets and dates.
    """

    def test_sets(self) -> None:
        """
        Sets parse and format compactly.
        """
        self.assertEqual(parseSet(b"1:3,7,9:8"), [1, 2, 3, 7, 8, 9])
        self.assertEqual(formatSet([9, 1, 2, 3, 7, 8]), b"1:3,7:9")

    def test_dates(self) -> None:
        """
        Dates round trip to the second and honour the zone.
        """
        self.assertEqual(parseDate(formatDate(1_600_000_000.7)[1:-1]), 1_600_000_000)
        self.assertEqual(parseDate(b"13-Sep-2020 14:26:40 +0200"), 1_600_000_000)
        self.assertEqual(parseDate(b" 3-Jan-2021 00:00:00 -0100"), 1_609_635_600)
