"""
Crash safety: a real server killed with SIGKILL at random moments while a
device syncs, changes, moves and sends mail, and an outside MDA delivers.

What it does: a fresh data directory with two users (alice, who owns the
device, and bob, who receives her mail), a ``twistd directpush`` process on
127.0.0.1 (plain HTTP, --policy none, no render workers so a restart is
quick; rate limits lifted, as the device here is far busier than a
phone), and one device (EAS 14.1) that keeps a mirror of alice's Inbox,
Work, Deleted Items and Sent Items. The device runs a random mix, seeded:

  deliver   an outside MDA writes a message into Inbox or Work (tmp/ then
            new/), each with a unique Message-ID
  sync      a Sync of one folder carrying up to three client changes (read,
            flag, unflag, delete with DeletesAsMoves)
  move      MoveItems of one message between Inbox and Work
  send      SendMail to bob with a ClientId and SaveInSentItems
  folder    FolderCreate of a scratch folder, or its FolderUpdate (rename)
            or FolderDelete

while a killer thread sends SIGKILL to the server at random moments (every
0.05-1.2 s) and starts it again. The device retries as MS-ASCMD says a
client does after a lost response: the very same request, the same SyncKey
and commands, the same ClientId. After the last cycle the server runs
unmolested, the device syncs every folder to the end, the server stops, and
the bench reads the maildirs on disk and checks:

  mirror    the device's mirror of each folder equals the folder (ids and
            read/flag state): no change of the device's lost or undone
  delivered every delivered Message-ID is in exactly one of alice's folders
  sent      every ClientId's mail is in bob's Inbox exactly once, and its
            Sent copy in exactly one of alice's folders
  folders   the device's folder list equals the mailbox's, and a FolderSync
            with its key finds nothing new
  protocol  no Sync answered Status 3 and no folder command Status 9 (a
            forced full resync), no Add of an item the device already had

and prints a table; it exits 1 when any check fails.

How to run it (standard library and directpush only; bounded by --cycles
and --timeout):

    python bench/torture_crash.py                      # 100 kill cycles
    python bench/torture_crash.py --cycles 5 --seed 3  # what CI runs
"""

from __future__ import annotations

import argparse
import base64
import email.parser
import email.policy
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Dict, List, Optional, Set, Tuple

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath

from directpush import auth, wbxml
from directpush.backends._diskindex import SPILL_ROWS
from directpush.backends.maildir import MaildirBackend
from directpush.model import Flag, FolderType
from directpush.wbxml import E

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALICE = "alice@example.org"
BOB = "bob@example.org"
PASSWORD = "crash-password"
DEVICE = "crash1"
WBXML_TYPE = "application/vnd.ms-sync.wbxml"
STARTUP_SECONDS = 60


# The server process


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """
    The twistd process, killed and restarted on the same port and data.
    """

    def __init__(self, data: str, port: int, logfile: str, spillRows: int) -> None:
        self.data = data
        self.port = port
        self.logfile = logfile
        self.spillRows = spillRows
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    def start(self) -> None:
        """
        Start the server; if its port was taken meanwhile (another program's
        outgoing connection may get it while the server is down), on a new
        one: the device follows L{port}.
        """
        for attempt in range(5):
            try:
                return self._start()
            except RuntimeError as e:
                if attempt == 4:
                    raise
                print(f"# restart failed ({str(e)[-200:]!r}); trying another port", file=sys.stderr)
                self.port = freePort()

    def _start(self) -> None:
        command = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", f"--logfile={self.logfile}",
            "directpush", "--data", self.data, "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--policy", "none", "--render-workers", "0",
            # The device here makes tens of requests a second, far beyond a
            # phone; the rate limits are not what this bench is about.
            "--device-rate", "1000/1000", "--user-rate", "1000/1000",
            "--spill-rows", str(self.spillRows),
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.starts += 1
        limit = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < limit:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start listening in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# The device


class Trouble(Exception):
    """
    Something the checks count as a failure.
    """


class Device:
    """
    A blocking EAS 14.1 client that retries lost responses as a phone does.
    """

    def __init__(self, server: Server, rng: random.Random, stats: Counter, deadline: float) -> None:
        self.server = server
        self.rng = rng
        self.stats = stats
        self.deadline = deadline
        token = base64.b64encode(f"{ALICE}:{PASSWORD}".encode()).decode()
        self.headers = {
            "Authorization": f"Basic {token}",
            "MS-ASProtocolVersion": "14.1",
            "Content-Type": WBXML_TYPE,
            "User-Agent": "TortureDevice/1.0",
        }
        self.folders: Dict[int, str] = {}
        self.keys: Dict[str, str] = {}
        self.mirror: Dict[str, Dict[str, Tuple[bool, bool]]] = {}
        self.problems: List[str] = []
        self.aborted = False
        self.scratch: Dict[str, str] = {}  # ServerId -> name
        self.known: Dict[str, str] = {}  # every folder the device knows: ServerId -> name

    # transport

    def post(self, command: str, body: bytes) -> Tuple[int, bytes]:
        """
        POST until the server answers (the same bytes each time): a reset
        or a refused connection means the server died and is coming back.
        """
        query = f"/Microsoft-Server-ActiveSync?Cmd={command}&User={ALICE}&DeviceId={DEVICE}&DeviceType=Torture"
        first = True
        while True:
            if time.monotonic() > self.deadline:
                raise TimeoutError("the run's timeout was reached")
            if self.aborted:
                raise Trouble("the server could not be restarted")
            if not first:
                self.stats["retries"] += 1
                time.sleep(0.05)
            first = False
            self.stats["requests"] += 1
            conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
            try:
                conn.request("POST", query, body=body, headers=self.headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self.stats["lost responses"] += 1
                continue
            finally:
                conn.close()
            if response.status >= 500:
                # Only a server going down may answer 5xx (503 while stopping).
                self.stats[f"HTTP {response.status}"] += 1
                continue
            return response.status, data

    def call(self, command: str, document: wbxml.Element) -> Optional[wbxml.Element]:
        status, data = self.post(command, wbxml.encode(document))
        if status != 200:
            raise Trouble(f"{command}: HTTP {status}: {data[:200]!r}")
        return wbxml.decode(data) if data else None

    # setup

    def folderSync(self) -> None:
        answer = self.call("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", "0")))
        assert answer is not None
        for add in answer.findall("Changes/Add"):
            self.known[add.findtext("ServerId") or ""] = add.findtext("DisplayName") or ""
            kind = int(add.findtext("Type") or 0)
            name = add.findtext("DisplayName")
            if kind in (2, 4, 5) or name == "Work":
                self.folders[kind if kind != 12 else 12] = add.findtext("ServerId") or ""
        self.hierarchyKey = answer.findtext("SyncKey") or "0"
        if 12 not in self.folders:
            created = self.call(
                "FolderCreate",
                E("FolderHierarchy:FolderCreate", E("SyncKey", self.hierarchyKey), E("ParentId", "0"),
                  E("DisplayName", "Work"), E("Type", "12")),
            )
            assert created is not None and created.findtext("Status") == "1", created
            self.folders[12] = created.findtext("ServerId") or ""
            self.known[self.folders[12]] = "Work"
            self.hierarchyKey = created.findtext("SyncKey") or ""
        for folderId in self.folders.values():
            self.mirror[folderId] = {}
            self.keys[folderId] = "0"

    # sync

    def sync(self, folderId: str, changes: List[wbxml.Element]) -> bool:
        """
        One Sync of C{folderId} carrying C{changes}; whether more waits.
        """
        key = self.keys[folderId]
        collection = E("AirSync:Collection", E("SyncKey", key), E("CollectionId", folderId))
        if key != "0":
            collection.add("DeletesAsMoves", "1")
            collection.add("GetChanges", "1")
            collection.add("WindowSize", "25")
            collection.add("Options", E("FilterType", "0"), E("AirSyncBase:BodyPreference", E("Type", "1"), E("TruncationSize", "200")))
            if changes:
                collection.append(E("Commands", *changes))
        answer = self.call("Sync", E("AirSync:Sync", E("Collections", collection)))
        if answer is None:
            return False  # nothing changed (an empty answer is allowed)
        if answer.findtext("Status") not in (None, "1"):
            raise Trouble(f"Sync status {answer.findtext('Status')}")
        got = answer.find("Collections/Collection")
        assert got is not None
        status = got.findtext("Status")
        if status == "3":
            self.stats["forced resyncs"] += 1
            self.problems.append(f"Sync of {folderId} with key {key}: Status 3 (forced full resync)")
            self.keys[folderId] = "0"
            self.mirror[folderId] = {}
            return True
        if status != "1":
            raise Trouble(f"Sync of {folderId}: Status {status}")
        mirror = self.mirror[folderId]
        for change in changes:
            serverId = change.findtext("ServerId") or ""
            if change.name == "Delete":
                mirror.pop(serverId, None)
            elif serverId in mirror:
                read, flagged = mirror[serverId]
                data = change.find("ApplicationData")
                assert data is not None
                if data.find("Email:Read") is not None:
                    read = data.findtext("Email:Read") == "1"
                if data.find("Email:Flag") is not None:
                    flagged = data.findtext("Email:Flag/Status") == "2"
                mirror[serverId] = (read, flagged)
        for response in children(got, "Responses"):
            if response.findtext("Status") not in ("1", "8"):
                self.problems.append(f"client change answered {wbxml.toXML(response)[:200]}")
        for command in children(got, "Commands"):
            serverId = command.findtext("ServerId") or ""
            if command.name == "Add":
                if serverId in mirror:
                    self.stats["duplicate adds"] += 1
                    self.problems.append(f"Add of {serverId}, which the device already has")
                mirror[serverId] = readFlags(command.find("ApplicationData"), (False, False))
            elif command.name == "Change":
                if serverId not in mirror:
                    self.problems.append(f"Change of {serverId}, which the device does not have")
                mirror[serverId] = readFlags(command.find("ApplicationData"), mirror.get(serverId, (False, False)))
            elif command.name in ("Delete", "SoftDelete"):
                mirror.pop(serverId, None)
        self.keys[folderId] = got.findtext("SyncKey") or key
        return got.find("MoreAvailable") is not None or key == "0"

    def syncAll(self, folderId: str) -> None:
        for _ in range(10_000):
            if not self.sync(folderId, []):
                return
        raise Trouble(f"Sync of {folderId} never ended")

    def randomChanges(self, folderId: str) -> List[wbxml.Element]:
        items = sorted(self.mirror[folderId])
        changes = []
        for serverId in self.rng.sample(items, min(len(items), self.rng.randint(0, 3))):
            read, flagged = self.mirror[folderId][serverId]
            roll = self.rng.random()
            if roll < 0.15 and folderId != self.folders[4]:
                changes.append(E("Delete", E("ServerId", serverId)))
            elif roll < 0.6:
                changes.append(E("Change", E("ServerId", serverId), E("ApplicationData", E("Email:Read", "0" if read else "1"))))
            else:
                flag = E("Email:Flag", E("Email:Status", "2"), E("Email:FlagType", "Follow up")) if not flagged else E("Email:Flag")
                changes.append(E("Change", E("ServerId", serverId), E("ApplicationData", flag)))
        return changes

    # folders

    def folderChange(self, n: int) -> None:
        """
        Make, rename or remove a scratch folder.
        """
        if not self.scratch or (len(self.scratch) < 3 and self.rng.random() < 0.4):
            command, children = "FolderCreate", [E("ParentId", "0"), E("DisplayName", f"Scratch {n}"), E("Type", "12")]
        else:
            folderId = self.rng.choice(sorted(self.scratch))
            if self.rng.random() < 0.5:
                command, children = "FolderUpdate", [E("ServerId", folderId), E("ParentId", "0"), E("DisplayName", f"Renamed {n}")]
            else:
                command, children = "FolderDelete", [E("ServerId", folderId)]
        answer = self.call(command, E(f"FolderHierarchy:{command}", E("SyncKey", self.hierarchyKey), *children))
        assert answer is not None
        status = answer.findtext("Status")
        if status != "1":
            if status == "9":
                self.stats["forced resyncs"] += 1
            self.problems.append(f"{command} answered Status {status}")
            return
        self.hierarchyKey = answer.findtext("SyncKey") or ""
        if command == "FolderCreate":
            folderId = answer.findtext("ServerId") or ""
            self.scratch[folderId] = self.known[folderId] = f"Scratch {n}"
        elif command == "FolderUpdate":
            self.scratch[folderId] = self.known[folderId] = f"Renamed {n}"
        else:
            del self.scratch[folderId]
            del self.known[folderId]

    def folderSyncChanges(self) -> int:
        answer = self.call("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", self.hierarchyKey)))
        assert answer is not None
        if answer.findtext("Status") != "1":
            self.problems.append(f"FolderSync answered Status {answer.findtext('Status')}")
            return -1
        return int(answer.findtext("Changes/Count") or 0)

    # moves and sends

    def move(self, source: str, destination: str) -> None:
        items = sorted(self.mirror[source])
        if not items:
            return
        serverId = self.rng.choice(items)
        answer = self.call(
            "MoveItems",
            E("Move:MoveItems", E("Move", E("SrcMsgId", serverId), E("SrcFldId", source), E("DstFldId", destination))),
        )
        assert answer is not None
        status = answer.findtext("Response/Status")
        flags = self.mirror[source].pop(serverId, (False, False))
        if status == "3":
            newId = answer.findtext("Response/DstMsgId") or ""
            if newId in self.mirror[destination]:
                self.problems.append(f"MoveItems gave {newId}, which the device already has")
            self.mirror[destination][newId] = flags
        elif status == "1":
            # A repeat of a move the lost answer had done: the item now
            # comes through the destination's Sync.
            self.stats["moves already done"] += 1
        else:
            raise Trouble(f"MoveItems status {status}")

    def send(self, n: int) -> str:
        clientId = f"torture-{n}"
        mime = (
            f"From: Alice <{ALICE}>\r\nTo: Bob <{BOB}>\r\nSubject: sent {n}\r\n"
            f"Message-ID: <sent.{n}@torture.example>\r\nDate: Fri, 27 Nov 2026 02:00:00 +0000\r\n\r\nbody {n}\r\n"
        ).encode()
        answer = self.call(
            "SendMail",
            E("ComposeMail:SendMail", E("ClientId", clientId), E("SaveInSentItems"), E("Mime", mime)),
        )
        if answer is not None:
            status = answer.findtext("Status")
            if status == "118":
                self.stats["sends already done"] += 1
            else:
                raise Trouble(f"SendMail status {status}")
        return f"<sent.{n}@torture.example>"


def children(element: wbxml.Element, name: str) -> List[wbxml.Element]:
    found = element.find(name)
    return list(found.children) if found is not None else []


def readFlags(data: Optional[wbxml.Element], default: Tuple[bool, bool]) -> Tuple[bool, bool]:
    if data is None:
        return default
    read, flagged = default
    if data.find("Email:Read") is not None:
        read = data.findtext("Email:Read") == "1"
    if data.find("Email:Flag") is not None:
        flagged = data.findtext("Email:Flag/Status") == "2"
    return read, flagged


# Outside deliveries


def deliver(maildir: str, n: int) -> str:
    messageId = f"<delivered.{n}@torture.example>"
    raw = (
        f"From: Someone <someone@example.net>\r\nTo: {ALICE}\r\nSubject: delivered {n}\r\n"
        f"Message-ID: {messageId}\r\nDate: Fri, 27 Nov 2026 02:00:00 +0000\r\n\r\nhello {n}\r\n"
    ).encode()
    name = f"{int(time.time())}.T{n}P{os.getpid()}.torture"
    tmp = os.path.join(maildir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(maildir, "new", name))
    return messageId


# Reading the truth from disk


def _runNow(f):  # type: ignore[no-untyped-def]
    try:
        return succeed(f())
    except Exception:
        return fail()


def _result(d):  # type: ignore[no-untyped-def]
    box: list = []
    d.addBoth(box.append)
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def truth(data: str, user: str) -> Dict[str, Dict[str, Tuple[Tuple[bool, bool], str]]]:
    """
    Every folder of C{user}'s maildir: ServerId -> ((read, flagged), Message-ID).
    """
    backend = MaildirBackend(os.path.join(data, "mail"), _runNow, Clock())
    box = _result(backend.mailbox(user))
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    out: Dict[str, Dict[str, Tuple[Tuple[bool, bool], str]]] = {}
    for folder in _result(box.folders()):
        items = {}
        for info in _result(box.messages(folder.id)):
            raw = _result(box.message(folder.id, info.uid))
            messageId = str(parser.parsebytes(raw).get("Message-ID", ""))
            items[f"{folder.id}:{info.uid}"] = ((Flag.SEEN in info.flags, Flag.FLAGGED in info.flags), messageId)
        out[folder.id] = items
    out["types"] = {str(int(f.type)): ((False, False), f.id) for f in _result(box.folders())}  # type: ignore[assignment]
    out["names"] = {f.id: ((False, False), f.name) for f in _result(box.folders())}  # type: ignore[assignment]
    return out


# The run


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    stats: Counter = Counter()
    root = tempfile.mkdtemp(prefix="directpush-crash-")
    data = os.path.join(root, "data")
    os.makedirs(data, mode=0o700)
    auth.writePasswd(
        FilePath(os.path.join(data, "users")),
        {ALICE: "{PLAIN}" + PASSWORD, BOB: "{PLAIN}" + PASSWORD},
    )
    started = time.monotonic()
    deadline = started + args.timeout
    server = Server(data, freePort(), os.path.join(root, "server.log"), args.spill_rows)
    server.start()
    device = Device(server, rng, stats, deadline)
    delivered: Set[str] = set()
    sent: Set[str] = set()
    killing = threading.Event()
    killing.set()
    cycles = [0]
    failures: List[str] = []
    hierarchyChanges = -1

    def killer() -> None:
        killRng = random.Random(args.seed + 1)
        while cycles[0] < args.cycles and time.monotonic() < deadline:
            time.sleep(killRng.uniform(0.05, 1.2))
            if not killing.is_set():
                return
            server.kill()
            cycles[0] += 1
            try:
                server.start()
            except Exception as e:
                failures.append(f"restart failed: {e}")
                device.aborted = True
                return

    try:
        device.folderSync()
        inbox, work, trash, sentFolder = (device.folders[k] for k in (2, 12, 4, 5))
        for folderId in device.folders.values():
            device.syncAll(folderId)
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        n = 0
        while thread.is_alive() and not failures:
            n += 1
            roll = rng.random()
            if roll < 0.25:
                target = inbox if rng.random() < 0.8 else work
                sub = "" if target == inbox else ".Work"
                delivered.add(deliver(os.path.join(data, "mail", ALICE, sub) if sub else os.path.join(data, "mail", ALICE), n))
                stats["deliveries"] += 1
            elif roll < 0.7:
                folderId = rng.choice([inbox, inbox, work, trash, sentFolder])
                changes = device.randomChanges(folderId)
                stats["client changes"] += len(changes)
                device.sync(folderId, changes)
                stats["syncs"] += 1
            elif roll < 0.75:
                device.folderChange(n)
                stats["folder changes"] += 1
            elif roll < 0.9:
                source, destination = (inbox, work) if rng.random() < 0.6 else (work, inbox)
                device.move(source, destination)
                stats["moves"] += 1
            else:
                sent.add(device.send(n))
                stats["sends"] += 1
        killing.clear()
        thread.join()
        # Settle: every folder to its end, twice (the second must be quiet).
        for _ in range(2):
            for folderId in device.folders.values():
                device.syncAll(folderId)
        hierarchyChanges = device.folderSyncChanges()
    except (Trouble, TimeoutError, AssertionError) as e:
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        killing.clear()
        server.stop()

    checks: Dict[str, List[str]] = {"mirror": [], "delivered": [], "sent": [], "folders": [], "protocol": list(device.problems)}
    alice = truth(data, ALICE)
    bob = truth(data, BOB)
    for folderId, mirror in device.mirror.items():
        disk = {sid: flags for sid, (flags, _) in alice[folderId].items()}
        for sid in sorted(set(disk) | set(mirror)):
            if disk.get(sid) != mirror.get(sid):
                checks["mirror"].append(f"{sid}: device {mirror.get(sid)}, mailbox {disk.get(sid)}")
    names = alice.pop("names")  # type: ignore[arg-type]
    if not failures and hierarchyChanges != 0:
        checks["folders"].append(f"FolderSync after the run found {hierarchyChanges} changes")
    if {k: v[1] for k, v in names.items()} != device.known:
        checks["folders"].append(f"device knows {sorted(device.known.values())}, mailbox has {sorted(v[1] for v in names.values())}")
    where = Counter(mid for fid, items in alice.items() if fid != "types" for _, mid in items.values())
    for mid in sorted(delivered):
        if where[mid] != 1:
            checks["delivered"].append(f"{mid} is in {where[mid]} folders")
    bobInbox = Counter(mid for _, mid in bob[bob["types"]["2"][1]].values())
    for mid in sorted(sent):
        if bobInbox[mid] != 1:
            checks["sent"].append(f"{mid} reached bob {bobInbox[mid]} times")
        # Its Sent copy may since have been deleted (moved) by the device.
        if where[mid] != 1:
            checks["sent"].append(f"{mid} is in {where[mid]} of alice's folders")
    with open(server.logfile, errors="replace") as f:
        log = f.read()
    stats["tracebacks in log"] = log.count("Traceback")

    elapsed = time.monotonic() - started
    print(f"crash torture: seed {args.seed}, {cycles[0]} SIGKILL cycles, {server.starts} server starts, {elapsed:.0f} s")
    print()
    print(f"{'what':<22} | {'count':>7}")
    print(f"{'-' * 22}-+-{'-' * 7}")
    for name in ("requests", "lost responses", "retries", "syncs", "client changes", "moves", "moves already done",
                 "folder changes",
                 "sends", "sends already done", "deliveries", "duplicate adds", "forced resyncs", "tracebacks in log"):
        print(f"{name:<22} | {stats[name]:>7}")
    for name, value in sorted(stats.items()):
        if name.startswith("HTTP"):
            print(f"{name:<22} | {value:>7}")
    print()
    print(f"{'check':<10} | {'result':<6} | detail")
    ok = not failures
    for name, problems in checks.items():
        ok = ok and not problems
        print(f"{name:<10} | {'ok' if not problems else 'FAIL':<6} | {len(problems)} problems")
        for problem in problems[:10]:
            print(f"{'':<10} |        |   {problem}")
    for failure in failures:
        print(f"run        | FAIL   | {failure}")
    if ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"data and server log kept in {root}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100, help="SIGKILL/restart cycles (default 100)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--spill-rows", type=int, default=SPILL_ROWS,
        help="the server's --spill-rows (1: every maildir folder's index on disk)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds before the run gives up (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory even when all is well")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
