# -*- test-case-name: tests.test_render -*-
"""
Tests for L{directpush.protocol.render} and L{directpush.renderpool}.
"""

from __future__ import annotations

from typing import List

from twisted.trial.unittest import SynchronousTestCase, TestCase

from directpush import wbxml
from directpush.protocol import mail
from directpush.protocol.render import RenderJob, renderAll, renderEncoded, renderInline
from directpush.renderpool import RenderPool
from directpush.wbxml import E

PLAIN = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: Lunch\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n\r\nSee you at noon.\r\n"
)
ALTERNATIVE = (
    b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.de>\r\nTo: bob@example.org\r\nSubject: Re: budget\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n\r\n"
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nCaf\xc3\xa9 at ten.\r\n"
    b"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Caf\xc3\xa9 at <b>ten</b>.</p>\r\n--b1--\r\n"
)


def jobs() -> List[RenderJob]:
    options = mail.parseOptions(
        E("AirSync:Options", E("AirSyncBase:BodyPreference", E("Type", "2"), E("TruncationSize", "5120")))
    )
    return [
        RenderJob(raw, bool(n % 2), False, False, 1_700_000_000.0 + n, options, f"1:{n}")
        for n, raw in enumerate([PLAIN, ALTERNATIVE, PLAIN.replace(b"Lunch", b"Dinner")] * 3)
    ]


def document(items: List[wbxml.Element]) -> wbxml.Element:
    commands = [E("Add", E("ServerId", f"1:{n}"), item) for n, item in enumerate(items)]
    return E("AirSync:Sync", E("Collections", E("Collection", E("SyncKey", "k-2"), E("Commands", *commands))))


class RenderEncodedTests(SynchronousTestCase):
    """
    L{renderEncoded}, what the worker processes run.
    """

    def test_sameAnswer(self) -> None:
        """
        Its results carry their tokens and make the same document as those
        of L{renderAll}.
        """
        encoded = renderEncoded(jobs())
        self.assertTrue(all(isinstance(item, wbxml.Encoded) for item in encoded))
        plain = renderAll(jobs())
        self.assertEqual(wbxml.decode(wbxml.encode(document(encoded))), document(plain))


class RenderPoolTests(TestCase):
    """
    L{RenderPool} with a real worker process.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.pool = RenderPool(reactor, 1)
        self.pool.startService()
        self.addCleanup(self.pool.stopService)

    async def test_render(self) -> None:
        """
        Jobs rendered in a worker come back in order, equal to those
        rendered here, as L{wbxml.Encoded} elements.
        """
        rendered = await self.pool(jobs())
        self.assertEqual(rendered, renderAll(jobs()))
        self.assertTrue(all(isinstance(item, wbxml.Encoded) for item in rendered))

    async def test_manyParts(self) -> None:
        """
        More jobs than one batch are split and joined back in order.
        """
        many = jobs() * 10
        rendered = await self.pool(many)
        self.assertEqual(len(rendered), len(many))
        self.assertEqual([item.findtext("Email:Subject") for item in rendered], [
            item.findtext("Email:Subject") for item in self.successResultOf(renderInline(many))
        ])

    async def test_stopped(self) -> None:
        """
        A stopped pool renders in the calling process rather than fail.
        """
        await self.pool.stopService()
        self.assertEqual(self.successResultOf(self.pool(jobs())), renderAll(jobs()))

    async def test_stopWaitsForWorkers(self) -> None:
        """
        Stopping the pool fires once its worker processes have exited, so
        that none outlives the server.
        """
        await self.pool(jobs())
        executor = self.pool._executor
        workers = list(executor._processes.values())
        self.assertTrue(workers)
        self.assertTrue(all(worker.is_alive() for worker in workers))
        await self.pool.stopService()
        self.assertEqual([worker.is_alive() for worker in workers], [False] * len(workers))
