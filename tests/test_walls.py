# -*- test-case-name: tests.test_walls -*-
"""
The house plan's walls (DESIGN.md), checked: the codec uses only the
standard library, the protocol core never loads twisted.web or a reactor,
and only tap.py names the global reactor.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

ROOT = FilePath(__file__).parent().parent()


def importedBy(module: str) -> set:
    """
    The modules a fresh interpreter has loaded after importing C{module}.
    """
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.path
    ).stdout
    return set(json.loads(out))


class WallTests(SynchronousTestCase):
    """
    What may import what.
    """

    def test_codecIsStandardLibraryOnly(self) -> None:
        """
        directpush.wbxml loads no third-party module at all.
        """
        loaded = importedBy("directpush.wbxml")
        self.assertEqual({m for m in loaded if m.split(".")[0] in ("twisted", "attrs", "zope")}, set())

    def test_protocolIsSansIO(self) -> None:
        """
        The protocol core loads neither a reactor nor twisted.web.
        """
        loaded = importedBy("directpush.protocol.dispatch")
        self.assertNotIn("twisted.internet.reactor", loaded)
        self.assertEqual({m for m in loaded if m.startswith("twisted.web")}, set())

    def test_onlyTapUsesTheGlobalReactor(self) -> None:
        """
        No module but tap.py imports the global reactor.
        """
        pattern = re.compile(r"from twisted\.internet import [^\n]*\breactor\b|twisted\.internet\.reactor")
        offenders = [
            p.path
            for p in ROOT.child("directpush").walk()
            if p.path.endswith(".py") and p.basename() != "tap.py" and pattern.search(p.getContent().decode())
        ]
        self.assertEqual(offenders, [])


class PackagingTests(SynchronousTestCase):
    """
    What a wheel carries.
    """

    def test_everyPackageListed(self) -> None:
        """
        setup.cfg names every package under directpush/ (it lists them one
        by one, so a new one is easy to forget and the installed server
        would not start).
        """
        import configparser

        config = configparser.ConfigParser()
        config.read(ROOT.child("setup.cfg").path)
        listed = set(config["options"]["packages"].split())
        present = {
            ".".join(p.parent().segmentsFrom(ROOT))
            for p in ROOT.child("directpush").walk()
            if p.basename() == "__init__.py"
        }
        self.assertEqual(present - listed, set())
        self.assertIn("twisted.plugins", listed)


class DeviceWallTests(SynchronousTestCase):
    """
    The device is a client, as a phone is.
    """

    def test_deviceImportsNoServerRoom(self) -> None:
        """
        directpush.device loads none of web, push, backends, state, tap.
        """
        loaded = importedBy("directpush.device.__main__")
        rooms = ("directpush.web", "directpush.push", "directpush.backends", "directpush.state", "directpush.tap")
        self.assertEqual({m for m in loaded if m.startswith(rooms)}, set())
