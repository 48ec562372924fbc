"""
Torture suite, groups 2-4 (hostile input, isolation, abuse) against real
``twistd directpush`` processes on 127.0.0.1 (plain TCP on loopback).

Users: alice (A), bob (B, whose mail and folder names carry the marker
SECRET-B / SecretB and who has folders and items A has not) and mallory (the
source of the hostile input), each with mail and a provisioned device.

  hostile    --requests seeded hostile requests (tests/hostile.py: every
             category) from mallory, --clients at a time, one connection
             each. Every answer must be a clear protocol status or 4xx
             (501 for commands not implemented); never 500 or a
             traceback. The server log must hold no Traceback / Unhandled
             lines, the process must stay up, RSS is sampled (flat).
  isolation  A reaches for B's mail (User parameter, B's folder and item
             ids, FileReferences, LongIds, ids with .., /, NUL or
             thousands of characters, B's DeviceId and policy key), then
             unauthenticated requests. No answer may carry B's markers;
             each of A's attempts must add a line to the server log; B's
             maildir must be byte for byte unchanged and B's device must
             carry on with its sync keys (no changes, no reset).
  abuse      a second server with the default rate limits (and short
             request deadlines, --policy none): Slowloris header and body
             tricklers, many connections from one address, thousands of
             Pings from one user, one device re-Pinging and re-Syncing in
             a tight loop, while B keeps syncing and waits on a Ping that
             must be answered when B gets mail.

Afterwards both A's and B's mailboxes and devices are checked intact.
Prints one table row per group. Bounded: --timeout (SIGALRM) for the run,
socket timeouts everywhere; servers are stopped at the end.

    python bench/torture.py                 # 100,000 hostile requests, a few minutes
    python bench/torture.py --quick         # CI-sized counts
"""

from __future__ import annotations

import argparse
import collections
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from twisted.python.filepath import FilePath  # noqa: E402

from directpush import auth, wbxml  # noqa: E402
from directpush.wbxml import E  # noqa: E402
from tests import hostile  # noqa: E402
from tests.phone import Phone  # noqa: E402

A, B, M = "alice@example.org", "bob@example.org", "mallory@example.org"
CAROL = "carol@example.org"
PASSWORDS = {A: "alice-pw", B: "bob-pw", M: "mallory-pw"}
SECRET = b"SECRET-B"
MAX_BODY = 64 * 1024
SEED = 20261127


class OverallTimeout(BaseException):
    pass


def onAlarm(signum: int, frame: Any) -> None:
    raise OverallTimeout("overall --timeout reached")


# Data


def message(marker: str, n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Carol <carol@example.org>"
    msg["To"] = "someone@example.org"
    msg["Subject"] = f"{marker} subject {n}"
    msg["Date"] = formatdate(time.time() - 86400 + n)
    msg["Message-ID"] = f"<{marker}.{n}@example.org>"
    msg.set_content(f"{marker} body {n}\n")
    msg.add_attachment(f"{marker} attachment {n}".encode(), maintype="application", subtype="octet-stream",
                       filename=f"{marker}-{n}.bin")
    return msg.as_bytes()


def deliver(data: str, user: str, marker: str, n: int, folder: str = "") -> None:
    base = os.path.join(data, "mail", user, folder)
    name = f"{int(time.time())}.M{n}P{os.getpid()}.{marker}"
    with open(os.path.join(base, "tmp", name), "wb") as f:
        f.write(message(marker, n))
    os.rename(os.path.join(base, "tmp", name), os.path.join(base, "new", name))


def prepareData(data: str) -> None:
    os.makedirs(data, mode=0o700)
    users = {u: "{PLAIN}" + p for u, p in PASSWORDS.items()}
    # A user with the real iterated hash, for the password-guessing flood.
    users[CAROL] = auth.hashPassword("carol-pw")
    auth.writePasswd(FilePath(os.path.join(data, "users")), users)
    counts = {A: 10, B: 40, M: 10}
    markers = {A: "alice", B: SECRET.decode(), M: "mallory"}
    for user, count in counts.items():
        folders = [""] + ([".SecretB1", ".SecretB2", ".SecretB3"] if user == B else [])
        for folder in folders:
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(data, "mail", user, folder, sub), exist_ok=True)
            if folder:
                open(os.path.join(data, "mail", user, folder, "maildirfolder"), "w").close()
        for n in range(count):
            deliver(data, user, markers[user], n)
        if user == B:
            for n in range(5):
                deliver(data, user, markers[user], 100 + n, ".SecretB1")


def tree(path: str) -> Dict[str, Tuple[int, bytes]]:
    """
    Every file under C{path} with its size and first bytes (a maildir's
    content, minus the index files the server itself keeps).
    """
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if name.startswith("dovecot") or name.startswith("directpush"):
                continue
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = (os.path.getsize(full), f.read(64))
    return out


# Servers


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, data: str, name: str, extra: List[str]) -> None:
        self.port = freePort()
        self.log = os.path.join(data, f"{name}.log")
        command = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", f"--logfile={self.log}",
            "directpush", "--data", data, "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--max-body", str(MAX_BODY), "--render-workers", "0", *extra,
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        limit = time.monotonic() + 60
        while time.monotonic() < limit:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start")

    def rssMB(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def logFiles(self) -> List[str]:
        # twistd rotates its log every megabyte: name.log.1, .2 ...
        directory, name = os.path.split(self.log)
        return [os.path.join(directory, f) for f in os.listdir(directory) if f == name or f.startswith(name + ".")]

    def logText(self) -> str:
        parts = []
        for path in self.logFiles():
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
        return "".join(parts)

    def logSize(self) -> int:
        return sum(os.path.getsize(p) for p in self.logFiles())

    def badLogLines(self) -> List[str]:
        return [line for line in self.logText().splitlines() if "Traceback" in line or "Unhandled" in line]

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        code, _, _ = exchange(self.port, hostile.request(hostile.Target(A, PASSWORDS[A]), b"", method=b"OPTIONS"))
        return code == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# Clients


def readResponse(sock: socket.socket) -> Tuple[int, Dict[str, str], bytes]:
    """
    One final response from C{sock} (interim 1xx skipped); (0, {}, b"")
    when the server closed without answering.
    """
    data = b""
    while True:
        responses = list(hostile.parseResponses(data))
        if responses:
            code, headers, body = responses[0]
            length = int(headers.get("content-length", "0"))
            if len(body) >= length:
                return responses[0]
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            responses = list(hostile.parseResponses(data))
            return responses[0] if responses else (0, {}, b"")
        data += chunk


def exchange(port: int, raw: bytes, timeout: float = 6.0, source: str = "127.0.0.1") -> Tuple[int, Dict[str, str], bytes]:
    """
    Send C{raw} on a fresh connection and read the answer. A server that
    answers and closes while the request is still being sent (413, 431)
    may reset the connection: (-1, {}, b"") then, unless the answer made it.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            try:
                answer = readResponse(sock)
            except OSError:
                return -1, {}, b""
            return answer if answer[0] else (-1, {}, b"")
        try:
            return readResponse(sock)
        except socket.timeout:
            return -2, {}, b""


def siteTransport(port: int, user: str) -> Any:
    async def send(query: bytes, headers: Dict[str, str], body: bytes) -> Tuple[int, Optional[str], bytes]:
        target = hostile.Target(user, PASSWORDS[user])
        extra = [(k.encode(), v.encode()) for k, v in headers.items() if k not in ("Content-Type", "MS-ASProtocolVersion")]
        raw = hostile.request(target, query, body, headers.get("Content-Type"), headers=extra,
                              version=headers["MS-ASProtocolVersion"].encode())
        code, h, data = exchange(port, raw)
        return code, h.get("content-type"), data

    return send


def run(coroutine: Any) -> Any:
    """
    Drive a L{Phone} coroutine whose transport never suspends.
    """
    try:
        coroutine.send(None)
    except StopIteration as e:
        return e.value
    raise RuntimeError("the phone coroutine suspended")


def setUpPhone(port: int, user: str, deviceId: str, provision: bool = True) -> Phone:
    phone = Phone(siteTransport(port, user), deviceId=deviceId)
    if provision:
        run(phone.provision())
    run(phone.folderSync())
    run(phone.syncAll(phone.folderOfType(2)))
    return phone


def syncAllFolders(phone: Phone) -> Dict[str, int]:
    out = {}
    for folderId, (_, name, kind) in sorted(phone.folders.items()):
        if kind in (2, 12):
            run(phone.syncAll(folderId))
            out[name] = len(phone.collections[folderId].items)
    return out


def blast(port: int, raws: List[bytes], wait: float, source: "str | List[str]" = "127.0.0.1") -> List[int]:
    """
    Open one connection per request, a hundred every 0.1 s (the listen
    backlog is small), send them, and collect each final status within
    C{wait} seconds (0: still open, no answer; -1: closed without an
    answer). C{source}: the local address(es), in turn.
    """
    sel = selectors.DefaultSelector()
    socks = []
    sources = [source] if isinstance(source, str) else source
    for index, raw in enumerate(raws):
        if index and index % 100 == 0:
            time.sleep(0.1)
        s = socket.socket()
        s.bind((sources[index % len(sources)], 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
        sel.register(s, selectors.EVENT_WRITE, [index, raw, b""])
    codes = [0] * len(raws)
    deadline = time.monotonic() + wait
    open_ = len(raws)
    while open_ and time.monotonic() < deadline:
        for key, events in sel.select(timeout=0.2):
            s, state = key.fileobj, key.data
            index = state[0]
            try:
                if events & selectors.EVENT_WRITE and state[1]:
                    sent = s.send(state[1])
                    state[1] = state[1][sent:]
                    if not state[1]:
                        sel.modify(s, selectors.EVENT_READ, state)
                    continue
                chunk = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            if chunk:
                state[2] += chunk
                answers = list(hostile.parseResponses(state[2]))
                if not answers:
                    continue
                codes[index] = answers[0][0]
            else:
                codes[index] = codes[index] or -1
            sel.unregister(s)
            s.close()
            open_ -= 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    sel.close()
    return codes


# Groups


def hostileGroup(server: Server, mallory: Phone, count: int, clients: int, seconds: float) -> Dict[str, Any]:
    inbox = mallory.folderOfType(2)
    target = hostile.Target(M, PASSWORDS[M], mallory.deviceId, mallory.policyKey, tuple(mallory.folders),
                            tuple(mallory.collections[inbox].items), MAX_BODY)
    codes: collections.Counter = collections.Counter()
    bad: List[Tuple[str, Any]] = []
    lock = threading.Lock()
    rss: List[float] = [server.rssMB()]
    began = time.monotonic()
    done = [0]

    def one(case: hostile.Case) -> None:
        code, headers, body = exchange(server.port, case.raw)
        with lock:
            done[0] += 1
            if code in (-1,) and case.category in ("oversized-headers", "oversized-body", "huge-length", "bad-http"):
                codes["reset"] += 1
                return
            codes[code] += 1
            verdict = hostile.judge(code, headers, body)
            if not verdict.ok and len(bad) < 20:
                bad.append((case.category, verdict.reason, case.raw[:120]))
            elif not verdict.ok:
                bad.append((case.category, verdict.reason, b""))

    cases = hostile.generate(target, SEED, count)

    def worker() -> None:
        while time.monotonic() - began < seconds:
            with lock:
                case = next(cases, None)
            if case is None:
                return
            one(case)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        threads[0].join(2) if threads[0].is_alive() else time.sleep(2)
        rss.append(server.rssMB())
    rss.append(server.rssMB())
    return {
        "sent": done[0],
        "seconds": time.monotonic() - began,
        "codes": dict(sorted(codes.items(), key=lambda kv: str(kv[0]))),
        "bad": bad,
        "rss": rss,
    }


def isolationGroup(server: Server, data: str, alice: Phone, bob: Phone) -> Dict[str, Any]:
    inboxA, inboxB = alice.folderOfType(2), bob.folderOfType(2)
    onlyB = tuple(f for f in bob.folders if f not in alice.folders)
    itemsA = set(alice.collections[inboxA].items)
    onlyBItems = tuple(i for i in bob.collections[inboxB].items if i not in itemsA)[:6]
    a = hostile.Target(A, PASSWORDS[A], alice.deviceId, alice.policyKey, tuple(sorted(alice.folders)),
                       tuple(sorted(itemsA)), MAX_BODY)
    b = hostile.Victim(B, bob.deviceId, bob.policyKey, onlyB, onlyBItems)
    bTree = tree(os.path.join(data, "mail", B))
    topBefore = sorted(os.listdir(os.path.join(data, "mail")))
    bad, unlogged, crossed = [], [], []
    codes: collections.Counter = collections.Counter()
    attempts = list(hostile.isolationAttempts(a, b))
    for label, raw in attempts:
        size = server.logSize()
        code, headers, body = exchange(server.port, raw)
        codes[code] += 1
        if not hostile.judge(code, headers, body).ok:
            bad.append((label, code))
        if SECRET in body or b"SecretB" in body:
            crossed.append(label)
        for _ in range(200):
            if server.logSize() > size:
                break
            time.sleep(0.01)
        else:
            unlogged.append(label)
    unauth: collections.Counter = collections.Counter()
    unauthList = list(hostile.unauthenticatedAttempts(a, b))
    for label, raw in unauthList:
        code, _, body = exchange(server.port, raw)
        unauth[code] += 1
        if SECRET in body:
            crossed.append(label)
    return {
        "attempts": len(attempts),
        "unauthenticated": len(unauthList),
        "codes": dict(codes),
        "unauthCodes": dict(unauth),
        "bad": bad,
        "unlogged": unlogged,
        "crossed": crossed,
        "bTreeSame": tree(os.path.join(data, "mail", B)) == bTree,
        "topSame": sorted(os.listdir(os.path.join(data, "mail"))) == topBefore,
        "onlyB": (len(onlyB), len(onlyBItems)),
    }


def abuseGroup(data: str, quick: bool) -> Dict[str, Any]:
    server = Server(data, "abuse", ["--policy", "none", "--request-timeout", "5/5/500", "--peer-connections", "200",
                                    "--user-concurrent", "30"])
    out: Dict[str, Any] = {}
    try:
        bob = setUpPhone(server.port, B, "bobphone2", provision=False)
        alice = setUpPhone(server.port, A, "alicephone2", provision=False)
        rss = [server.rssMB()]
        probe: Dict[str, Any] = {"codes": collections.Counter(), "latency": [], "worst": {}}
        phase = ["start"]
        stop = threading.Event()

        def probeLoop() -> None:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    run(bob.sync(bob.folderOfType(2)))
                    probe["codes"][200] += 1
                except Exception as e:  # noqa: BLE001 (counted and reported)
                    probe["codes"][type(e).__name__ + str(e)[:40]] += 1
                took = time.monotonic() - began
                probe["latency"].append(took)
                probe["worst"][phase[0]] = max(probe["worst"].get(phase[0], 0.0), round(took, 2))
                stop.wait(0.25)

        prober = threading.Thread(target=probeLoop, daemon=True)
        prober.start()
        t = hostile.Target(A, PASSWORDS[A], "x")
        head = hostile.request(t, hostile.plainQuery(t, "Ping"), b"")
        n = 60 if quick else 150

        # Slowloris: headers one byte a second; bodies one byte a second.
        def trickle(raw: bytes, source: str) -> Tuple[float, bytes]:
            began = time.monotonic()
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30, source_address=(source, 0))
            got = b""
            try:
                for byte in raw:
                    s.sendall(bytes([byte]))
                    time.sleep(1)
                    if time.monotonic() - began > 20:
                        break
            except OSError:
                pass
            try:
                s.settimeout(5)
                got = s.recv(200)
            except OSError:
                pass
            s.close()
            return time.monotonic() - began, got

        phase[0] = "slowloris"
        body = b"\x03\x01\x6a\x00" + b"x" * 200
        ping = hostile.request(t, hostile.plainQuery(t, "Ping"), body)
        split = len(ping) - len(body)
        with ThreadPoolExecutor(2 * n) as pool:
            slowHeads = [pool.submit(trickle, head, "127.0.0.2") for _ in range(n)]
            heads = [f.result() for f in slowHeads]
        out["slowloris"] = {"n": n, "cut408": sum(1 for _, got in heads if got.startswith(b"HTTP/1.1 408")),
                            "maxHeld": max(h for h, _ in heads)}
        socks = []
        for _ in range(n // 2):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30, source_address=("127.0.0.5", 0))
            s.sendall(ping[:split])
            socks.append(s)
        began = time.monotonic()
        held = [0.0] * len(socks)
        answers = [b""] * len(socks)
        while time.monotonic() - began < 25 and any(not a for a in answers):
            for i, s in enumerate(socks):
                if answers[i]:
                    continue
                try:
                    s.sendall(b"x")
                except OSError:
                    answers[i] = answers[i] or b"closed"
                    held[i] = time.monotonic() - began
            time.sleep(1)
            for i, s in enumerate(socks):
                if answers[i]:
                    continue
                s.setblocking(False)
                try:
                    got = s.recv(200)
                    answers[i] = got or b"closed"
                    held[i] = time.monotonic() - began
                except (BlockingIOError, OSError):
                    pass
                s.setblocking(True)
        for s in socks:
            s.close()
        bodies = answers
        out["slowbody"] = {"n": len(socks), "cut408": sum(1 for a in bodies if a.startswith(b"HTTP/1.1 408")),
                           "maxHeld": max(held)}

        phase[0] = "connections"
        # Many connections from one address: idle ones held open.
        many = []
        refused = 0
        for _ in range(400 if not quick else 250):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=("127.0.0.3", 0))
            many.append(s)
        time.sleep(1)
        for s in many:
            s.setblocking(False)
            try:
                if s.recv(100).startswith(b"HTTP/1.1 503"):
                    refused += 1
            except (BlockingIOError, OSError):
                pass
        other = exchange(server.port, hostile.request(hostile.Target(B, PASSWORDS[B]), b"", method=b"OPTIONS"),
                         source="127.0.0.4")[0]
        for s in many:
            s.close()
        out["connections"] = {"opened": len(many), "refused503": refused, "otherServed": other}

        phase[0] = "guessing"
        # Password guessing: wrong passwords for a user with the iterated
        # hash, all at once.
        carol = hostile.Target(CAROL, "x")
        guesses = [hostile.request(carol, hostile.plainQuery(carol, "FolderSync"), b"",
                                   authorization=hostile.basic(CAROL, f"guess{i}")) for i in range(1000 if not quick else 300)]
        began = time.monotonic()
        guessed = blast(server.port, guesses, 60, source=[f"127.0.0.{i}" for i in range(40, 60)])
        out["guessing"] = {"n": len(guesses), "codes": dict(collections.Counter(guessed)), "seconds": time.monotonic() - began}

        phase[0] = "pings"
        # Thousands of Pings from one user: 40 devices that have synced
        # their Inbox (so each Ping would wait), the Pings round-robin.
        devices = [setUpPhone(server.port, A, f"pingdev{i}", provision=False) for i in range(40 if not quick else 20)]
        raws = []
        for i in range(2000 if not quick else 600):
            phone = devices[i % len(devices)]
            target = hostile.Target(A, PASSWORDS[A], phone.deviceId)
            body = wbxml.encode(E("Ping:Ping", E("HeartbeatInterval", "120"), E("Folders", E(
                "Folder", E("Id", phone.folderOfType(2)), E("Class", "Email")))))
            raws.append(hostile.request(target, hostile.plainQuery(target, "Ping"), body))
        pingBody = wbxml.encode(E("Ping:Ping", E("HeartbeatInterval", "120"), E("Folders", E(
            "Folder", E("Id", alice.folderOfType(2)), E("Class", "Email")))))
        # B waits on a Ping meanwhile (its own device); mail for B must
        # wake it.
        bobPinger = setUpPhone(server.port, B, "bobping", provision=False)
        bobPing = hostile.Target(B, PASSWORDS[B], bobPinger.deviceId)
        bobBody = wbxml.encode(E("Ping:Ping", E("HeartbeatInterval", "120"), E("Folders", E(
            "Folder", E("Id", bobPinger.folderOfType(2)), E("Class", "Email")))))
        result: Dict[str, Any] = {}

        def bobWaits() -> None:
            began = time.monotonic()
            code, _, answer = exchange(server.port, hostile.request(bobPing, hostile.plainQuery(bobPing, "Ping"), bobBody), 60,
                                       source="127.0.0.6")
            result["bob"] = (code, wbxml.decode(answer).findtext("Status") if code == 200 and answer else None,
                             round(time.monotonic() - began, 1))

        waiter = threading.Thread(target=bobWaits)
        waiter.start()
        time.sleep(1)
        pings = blast(server.port, raws, 15, source=[f"127.0.0.{i}" for i in range(20, 40)])
        delivered = time.monotonic()
        deliver(data, B, "wakeup", 999)
        waiter.join(70)
        out["pings"] = {"n": len(raws), "devices": len(devices), "codes": dict(collections.Counter(pings)),
                        "bob": result.get("bob"), "bobAfterMail": time.monotonic() - delivered}
        # Those waiting Pings end when their connections close (blast did).

        phase[0] = "loops"
        # One device in a tight loop: Ping, and Sync.
        loop = hostile.Target(A, PASSWORDS[A], alice.deviceId)
        tight = blast(server.port, [hostile.request(loop, hostile.plainQuery(loop, "Ping"), pingBody)] * 400, 10, "127.0.0.8")
        syncBody = wbxml.encode(E("AirSync:Sync", E("Collections", alice.collectionRequest(alice.folderOfType(2)))))
        syncs: collections.Counter = collections.Counter()
        retry = set()
        for _ in range(300):
            code, headers, _ = exchange(server.port, hostile.request(loop, hostile.plainQuery(loop, "Sync"), syncBody))
            syncs[code] += 1
            if code == 503:
                retry.add(headers.get("retry-after"))
        out["tight"] = {"pingCodes": dict(collections.Counter(tight)), "syncCodes": dict(syncs), "retryAfter": sorted(retry)}
        stop.set()
        prober.join(10)
        rss.append(server.rssMB())
        lat = sorted(probe["latency"]) or [float("nan")]
        out["probe"] = {"codes": dict(probe["codes"]), "n": len(lat), "median": lat[len(lat) // 2], "max": lat[-1],
                        "worst": probe["worst"]}
        out["rss"] = rss
        out["bad"] = server.badLogLines()
        out["alive"] = server.alive()
        out["logged503"] = server.logText().count("over the request rate") + server.logText().count("requests in progress")
        out["logged408"] = server.logText().count("did not send the request")
        out["loggedConn"] = server.logText().count("connections from it already open")
    finally:
        server.stop()
    return out


def fmt(rss: List[float]) -> str:
    return f"{rss[0]:.0f}->{rss[-1]:.0f} MB (max {max(rss):.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized counts")
    parser.add_argument("--requests", type=int, default=None, help="hostile requests (default 100000; --quick 5000)")
    parser.add_argument("--clients", type=int, default=48, help="hostile requests in flight")
    parser.add_argument("--hostile-seconds", type=float, default=400, help="stop sending hostile requests after this")
    parser.add_argument("--groups", default="hostile,isolation,abuse")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    count = args.requests or (5000 if args.quick else 100_000)
    groups = args.groups.split(",")
    signal.signal(signal.SIGALRM, onAlarm)
    signal.alarm(int(args.timeout))
    root = tempfile.mkdtemp(prefix="torture-")
    data = os.path.join(root, "data")
    rows = []
    ok = True
    server = None
    try:
        prepareData(data)
        unlimited = ["--device-rate", "1e8/100000000", "--user-rate", "1e8/100000000", "--user-concurrent", "100000000",
                     "--peer-connections", "0", "--request-timeout", "2/2/500", "--min-heartbeat", "1", "--max-heartbeat", "2"]
        server = Server(data, "main", unlimited)
        alice = setUpPhone(server.port, A, "alicephone")
        bob = setUpPhone(server.port, B, "bobphone")
        mallory = setUpPhone(server.port, M, "hostile1")
        before = {"alice": syncAllFolders(alice), "bob": syncAllFolders(bob)}
        treeA, treeB = tree(os.path.join(data, "mail", A)), tree(os.path.join(data, "mail", B))
        if "hostile" in groups:
            r = hostileGroup(server, mallory, count, args.clients, args.hostile_seconds)
            badLog = server.badLogLines()
            alive = server.alive()
            good = not r["bad"] and not badLog and alive and r["rss"][-1] - r["rss"][1 if len(r["rss"]) > 1 else 0] < 30
            ok &= good
            rows.append(("2 hostile input", f"{r['sent']} requests, 13 categories, {r['seconds']:.0f} s, {args.clients} clients",
                         f"answers {r['codes']}; not acceptable {len(r['bad'])}; Traceback/Unhandled log lines {len(badLog)}; "
                         f"alive {alive}; RSS {fmt(r['rss'])}", good))
            for item in r["bad"][:10]:
                print("  hostile bad:", item)
            for line in badLog[:10]:
                print("  log:", line[:200])
        if "isolation" in groups:
            r = isolationGroup(server, data, alice, bob)
            good = not (r["bad"] or r["unlogged"] or r["crossed"]) and r["bTreeSame"] and r["topSame"] \
                and set(r["unauthCodes"]) == {401}
            ok &= good
            rows.append(("3 isolation", f"{r['attempts']} attempts by A on B ({r['onlyB'][0]} B-only folders, {r['onlyB'][1]} B-only items),"
                         f" {r['unauthenticated']} unauthenticated",
                         f"answers {r['codes']}, unauthenticated {r['unauthCodes']}; not acceptable {len(r['bad'])}; "
                         f"unlogged {len(r['unlogged'])}; B's data in A's answers {len(r['crossed'])}; "
                         f"B's maildir unchanged {r['bTreeSame']}; nothing outside A's {r['topSame']}", good))
            for item in (r["bad"] + r["unlogged"] + r["crossed"])[:10]:
                print("  isolation:", item)
        # Both users intact on the main server: same counts, devices carry on.
        after = {"alice": syncAllFolders(alice), "bob": syncAllFolders(bob)}
        unchanged = tree(os.path.join(data, "mail", A)) == treeA and tree(os.path.join(data, "mail", B)) == treeB
        freshA = syncAllFolders(setUpPhone(server.port, A, "alicefresh"))
        freshB = syncAllFolders(setUpPhone(server.port, B, "bobfresh"))
        intact = after == before and unchanged and freshA == before["alice"] and freshB == before["bob"]
        ok &= intact
        rows.append(("  mailboxes", "A and B: existing devices re-sync, fresh devices sync",
                     f"items per folder before {before}; after {after}; fresh {freshA}/{freshB}; maildirs byte-identical {unchanged}",
                     intact))
        server.stop()
        if "abuse" in groups:
            r = abuseGroup(data, args.quick)
            p = r["pings"]
            bobOk = p["bob"] is not None and p["bob"][:2] == (200, "2")
            good = (r["slowloris"]["cut408"] == r["slowloris"]["n"] and r["slowbody"]["cut408"] == r["slowbody"]["n"]
                    and r["connections"]["refused503"] == r["connections"]["opened"] - 200
                    and r["connections"]["otherServed"] == 200 and set(r["probe"]["codes"]) == {200}
                    and set(p["codes"]) <= {200, 503, 0} and p["codes"].get(0, 0) <= 30
                    and bobOk and not r["bad"] and r["alive"] and set(r["guessing"]["codes"]) <= {401, 503})
            ok &= good
            rows.append(("4 abuse", f"{r['slowloris']['n']} header tricklers, {r['slowbody']['n']} body tricklers, "
                         f"{r['connections']['opened']} connections from one address, {p['n']} Pings from one user's {p['devices']} devices, "
                         f"{r['guessing']['n']} wrong passwords at once, 400 Pings + 300 Syncs of one device in a loop; "
                         f"B syncing every 0.25 s",
                         f"tricklers cut with 408: {r['slowloris']['cut408']}/{r['slowloris']['n']} "
                         f"(held at most {r['slowloris']['maxHeld']:.0f} s), {r['slowbody']['cut408']}/{r['slowbody']['n']} "
                         f"(at most {r['slowbody']['maxHeld']:.0f} s); connections refused 503: {r['connections']['refused503']}, "
                         f"other address served {r['connections']['otherServed']}; Pings {p['codes']} (0: still waiting); "
                         f"B's Ping (code, status, s) {p['bob']}; guesses {r['guessing']['codes']} in {r['guessing']['seconds']:.1f} s; loop Pings {r['tight']['pingCodes']}, Syncs {r['tight']['syncCodes']} "
                         f"Retry-After {r['tight']['retryAfter']}; B's syncs {r['probe']['codes']} median "
                         f"{r['probe']['median'] * 1000:.0f} ms, worst per phase (s) {r['probe']['worst']}; "
                         f"logged 503 {r['logged503']}, 408 {r['logged408']}, refused connections {r['loggedConn']}; "
                         f"Traceback lines {len(r['bad'])}; alive {r['alive']}; RSS {fmt(r['rss'])}", good))
    except OverallTimeout as e:
        rows.append(("timeout", str(e), "", False))
        ok = False
    finally:
        signal.alarm(0)
        if server is not None:
            server.stop()
        if args.keep:
            print("data kept in", root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print("| group | tried | result | ok |")
    print("|---|---|---|---|")
    for group, tried, result, good in rows:
        print(f"| {group} | {tried} | {result} | {'yes' if good else 'NO'} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
