# -*- test-case-name: tests.test_torture_crash -*-
"""
The crash torture (C{bench/torture_crash.py}) at CI size: a real server
process killed with SIGKILL five times while a device syncs, moves and
sends, and an MDA delivers; the device's mirror must equal the mailbox and
nothing may be lost or doubled.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "torture_crash.py")


class CrashTortureTests(SynchronousTestCase):
    def torture(self, *argv: str) -> None:
        done = subprocess.run(
            [sys.executable, BENCH, "--cycles", "5", "--timeout", "240", *argv],
            capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        self.assertIn("5 SIGKILL cycles", done.stdout)
        for check in ("mirror", "delivered", "sent", "protocol"):
            self.assertRegex(done.stdout, rf"\n{check} +\| ok +\| 0 problems")

    def test_fiveKills(self) -> None:
        """
        Five SIGKILL cycles leave every check passing.
        """
        self.torture("--seed", "11")

    def test_fiveKillsSpilled(self) -> None:
        """
        The same with every maildir folder's index on disk.
        """
        self.torture("--seed", "12", "--spill-rows", "1")
