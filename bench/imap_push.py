"""
Direct Push through the IMAP bridge at scale: --users users, each with one
device holding a Ping, against ``twistd directpush --backend imap`` and a
private Dovecot (tests/dovecot.py), all on 127.0.0.1.

Measures:

  - the IMAP connections the bridge holds with every device waiting
    (target: one IDLE connection per user with a waiting device; the
    bridge also keeps one command connection per active user until it
    has been idle for 15 minutes), counted from the client side (TCP)
    and from Dovecot's side, where each connection is an imap process
    whose title says whether it is in IDLE;
  - delivery -> Ping answer latency, p50 / p99: --samples messages
    delivered with Dovecot's LDA (dovecot-lda, as an MTA would) to
    distinct users at --rate per second, timed from just before the LDA
    starts until the device has read its Ping answer;
  - beside it, in the same run and for the same deliveries, Dovecot's own
    IDLE notification latency: a plain IMAP client per sampled user,
    IDLEing on its Inbox, timed from the same instant until "* n EXISTS"
    arrives. The bridge's cost is the difference, per delivery.

Devices: FolderSync key 0, Sync key 0, one more Sync of the Inbox, then a
Ping (--heartbeat seconds) on one keep-alive HTTP/1.1 connection each;
--policy none (no provisioning), plain HTTP on 127.0.0.1 (TLS to phones is
not what is measured here). After Status 2 a device stops.

Dovecot watches an idling mailbox with inotify, one inotify instance per
imap process, and Linux allows a user (here the mail user, nobody) 128 of
them by default (fs.inotify.max_user_instances). Past that Dovecot logs
"Inotify instance limit ... exceeded" and polls those connections every
mailbox_idle_check_interval instead (1 s here, 30 s by default): whichever
IDLE connections come last, the bridge's or the plain clients', then learn
of new mail up to that long after the others. So the benchmark raises the
limit to fit the run (it runs as root) and puts it back at the end, unless
--keep-inotify-limit; it reports the connections Dovecot had to poll.

Bounded: --timeout bounds the whole run (SIGALRM); Dovecot and the server
are stopped at the end whatever happens.

    sudo .venv/bin/python bench/imap_push.py                       # 1,000 users, 100 deliveries
    sudo .venv/bin/python bench/imap_push.py --users 200 --samples 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from _pushload import WBXML_TYPE, Connection  # noqa: E402

from directpush import wbxml  # noqa: E402
from directpush.wbxml import E  # noqa: E402
from tests.dovecot import LDA, MISSING, Dovecot, freePort  # noqa: E402

PASSWORD = "bench-pw"
INOTIFY_INSTANCES = "/proc/sys/fs/inotify/max_user_instances"


def userName(u: int) -> str:
    return f"u{u:05d}@bench.example"


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Device:
    """
    One phone of one user: setup, then a Ping.
    """

    def __init__(self, port: int, index: int, heartbeat: int) -> None:
        import base64

        self.user = userName(index)
        token = base64.b64encode(f"{self.user}:{PASSWORD}".encode()).decode()
        self.headers = (
            f"Authorization: Basic {token}\r\nMS-ASProtocolVersion: 14.1\r\n"
            f"Content-Type: {WBXML_TYPE}\r\nUser-Agent: bench\r\n"
        )
        self.path = f"/Microsoft-Server-ActiveSync?Cmd=%s&User={self.user}&DeviceId=bench{index:05d}&DeviceType=iPhone"
        self.conn = Connection(port, None, "127.0.0.1")
        self.heartbeat = heartbeat
        self.inbox = ""
        self.key = "0"
        self.answered: "asyncio.Future[Tuple[float, str]]" = asyncio.get_running_loop().create_future()

    async def call(self, command: str, document: wbxml.Element) -> Optional[wbxml.Element]:
        await self.conn.send(self.path % command, self.headers, wbxml.encode(document))
        status, body = await self.conn.receive()
        if status != 200:
            raise RuntimeError(f"{command}: HTTP {status} {body[:200]!r}")
        return wbxml.decode(body) if body else None

    async def setup(self) -> None:
        answer = await self.call("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", "0")))
        assert answer is not None
        self.inbox = next(a.findtext("ServerId") for a in answer.findall("Changes/Add") if a.findtext("Type") == "2")
        for _ in range(2):
            collection = E("AirSync:Collection", E("SyncKey", self.key), E("CollectionId", self.inbox))
            answer = await self.call("Sync", E("AirSync:Sync", E("Collections", collection)))
            if answer is not None:
                self.key = answer.findtext("Collections/Collection/SyncKey") or self.key

    async def ping(self) -> None:
        body = E(
            "Ping:Ping",
            E("HeartbeatInterval", str(self.heartbeat)),
            E("Folders", E("Folder", E("Id", self.inbox), E("Class", "Email"))),
        )
        await self.conn.send(self.path % "Ping", self.headers, wbxml.encode(body))
        status, data = await self.conn.receive()
        now = time.time()
        result = wbxml.decode(data).findtext("Status") if status == 200 and data else f"HTTP {status}"
        if not self.answered.done():
            self.answered.set_result((now, result or "?"))


class IdleClient:
    """
    A plain IMAP client IDLEing on a user's Inbox: Dovecot's own latency.
    """

    def __init__(self, port: int, user: str) -> None:
        self.port = port
        self.user = user
        self.exists: "asyncio.Future[float]" = asyncio.get_running_loop().create_future()
        self.task: "Optional[asyncio.Future[None]]" = None

    async def start(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        await self.reader.readline()
        self.writer.write(f'a LOGIN "{self.user}" "{PASSWORD}"\r\nb EXAMINE INBOX\r\nc IDLE\r\n'.encode())
        while not (await self.reader.readline()).startswith(b"+"):
            pass
        self.task = asyncio.ensure_future(self.watch())

    async def watch(self) -> None:
        while True:
            line = await self.reader.readline()
            if not line:
                return
            if line.rstrip().endswith(b"EXISTS") and not self.exists.done():
                self.exists.set_result(time.time())

    def close(self) -> None:
        self.writer.transport.abort()


def imapConnections(port: int) -> int:
    """
    Established TCP connections to 127.0.0.1:port (from /proc/net/tcp),
    counted from the client side.
    """
    count = 0
    hexPort = f"{port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and remote.endswith(":" + hexPort) and not local.endswith(":" + hexPort):
                count += 1
    return count


def dovecotProcesses(master: int) -> Tuple[int, int]:
    """
    Dovecot's imap processes (one per connection) under C{master}: how
    many are in IDLE and how many are not, from their process titles
    (C{dovecot/imap [USER IP IDLE]}, with verbose_proctitle).
    """
    idle = other = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            if parent != master:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().rstrip(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if title.startswith(b"dovecot/imap ["):
            if title.endswith(b" IDLE]"):
                idle += 1
            else:
                other += 1
    return idle, other


def setInotifyInstances(value: int) -> None:
    with open(INOTIFY_INSTANCES, "w") as f:
        f.write(str(value))


def raiseInotifyInstances(needed: int) -> Optional[int]:
    """
    Raise fs.inotify.max_user_instances to C{needed} if it is lower;
    return the old value to put back, or L{None} if nothing changed.
    """
    try:
        with open(INOTIFY_INSTANCES) as f:
            current = int(f.read())
    except (OSError, ValueError):
        return None
    if current >= needed:
        return None
    try:
        setInotifyInstances(needed)
    except OSError as e:
        log(f"cannot raise {INOTIFY_INSTANCES} from {current} to {needed} ({e}): "
            "Dovecot will poll the IDLE connections past the limit")
        return None
    log(f"{INOTIFY_INSTANCES} raised from {current} to {needed} for this run")
    return current


async def gather(limit: int, coroutines: List) -> List:
    slots = asyncio.Semaphore(limit)

    async def one(c):  # type: ignore[no-untyped-def]
        async with slots:
            return await c

    return await asyncio.gather(*(one(c) for c in coroutines), return_exceptions=True)


async def run(args: argparse.Namespace, dovecot: Dovecot, httpPort: int) -> None:
    devices = [Device(httpPort, i, args.heartbeat) for i in range(args.users)]
    began = time.monotonic()
    results = await gather(args.concurrency, [d.setup() for d in devices])
    failures = [r for r in results if isinstance(r, Exception)]
    log(f"setup of {len(devices)} devices: {time.monotonic() - began:.1f} s, {len(failures)} failed"
        + (f" ({failures[0]!r})" if failures else ""))
    ready = [d for d, r in zip(devices, results) if not isinstance(r, Exception)]
    pings = [asyncio.ensure_future(d.ping()) for d in ready]
    sampled = random.Random(1).sample(ready, min(args.samples, len(ready)))
    baselines = {d.user: IdleClient(dovecot.port, d.user) for d in sampled}
    await gather(args.concurrency, [b.start() for b in baselines.values()])
    # Every Ping held and every IDLE connection up as Dovecot sees it (a
    # TCP connection may still be logging in): an imap process in IDLE
    # per user, or a count that stops growing, within --settle seconds.
    assert dovecot.process is not None
    master = dovecot.process.pid
    plain = sum(1 for b in baselines.values() if b.task is not None)  # they idle too
    began, last, still = time.monotonic(), -1, 0.0
    while time.monotonic() - began < args.settle:
        idling = dovecotProcesses(master)[0] - plain
        if idling >= len(ready):
            break
        still = still + 1 if idling == last else 0
        last = idling
        if still >= 5:
            break
        await asyncio.sleep(1)
    log(f"settled in {time.monotonic() - began:.0f} s")
    await asyncio.sleep(2)
    held = imapConnections(dovecot.port) - len(baselines)
    idling, commands = dovecotProcesses(master)
    idling -= plain
    waiting = sum(1 for p in pings if not p.done())
    log(f"{waiting} Pings waiting; the bridge holds {held} IMAP connections")

    rows: List[Tuple[float, float]] = []
    lost = 0
    early = [d.answered.result() for d in sampled if d.answered.done()]
    if early:
        log(f"{len(early)} sampled Pings answered before any delivery: {early[:3]}")
    for device in sampled:
        raw = (
            f"From: bench@example.org\r\nTo: {device.user}\r\nSubject: push {device.user}\r\n\r\nhello\r\n"
        ).encode()
        start = time.time()
        proc = await asyncio.create_subprocess_exec(
            LDA, "-c", dovecot.config, "-d", device.user, "-f", "bench@example.org",
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        await proc.communicate(raw)
        try:
            (answeredAt, status), idleAt = await asyncio.wait_for(
                asyncio.gather(device.answered, baselines[device.user].exists), args.wait
            )
        except asyncio.TimeoutError:
            lost += 1
            log(f"no answer for {device.user}: Ping {device.answered.done()}, IDLE {baselines[device.user].exists.done()}")
            continue
        if status != "2" or answeredAt < start:
            lost += 1
            log(f"{device.user}: Ping answered {status} at {answeredAt - start:+.3f} s")
            continue
        rows.append((answeredAt - start, idleAt - start))
        await asyncio.sleep(1 / args.rate)
    for b in baselines.values():
        b.close()
    for p in pings:
        p.cancel()
    for d in devices:
        d.conn.close()

    polled = dovecot.log().count("Inotify instance limit")

    ping = [r[0] * 1000 for r in rows]
    idle = [r[1] * 1000 for r in rows]
    added = [(r[0] - r[1]) * 1000 for r in rows]
    print()
    print(f"users / waiting Pings       {args.users} / {waiting}")
    print(f"IMAP connections held        {held}  ({held / max(waiting, 1):.2f} per waiting user)")
    print(f"  in IDLE (Dovecot's side)     {idling}  ({idling / max(waiting, 1):.2f} per waiting user)")
    print(f"  commands (Dovecot's side)    {commands}")
    print(f"IDLE polled by Dovecot       {polled}  (no inotify instance left; {args.inotifyNote})")
    print(f"deliveries measured          {len(rows)} of {len(sampled)} ({lost} without a fresh answer in {args.wait} s)")
    print(f"bridge adding over 50 ms     {sum(1 for a in added if a > 50)} of {len(added)}")
    print()
    print(f"{'latency (ms)':32} {'p50':>8} {'p99':>8} {'max':>8}")
    for name, values in [
        ("LDA delivery -> Ping answer", ping),
        ("LDA delivery -> Dovecot IDLE", idle),
        ("added by the bridge", added),
    ]:
        print(f"{name:32} {percentile(values, 50):8.1f} {percentile(values, 99):8.1f} {max(values, default=float('nan')):8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5.0, help="deliveries per second")
    parser.add_argument("--heartbeat", type=int, default=900)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--settle", type=float, default=120.0, help="longest wait for the IDLE connections")
    parser.add_argument("--wait", type=float, default=20.0, help="longest wait for one answer")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument(
        "--keep-inotify-limit", action="store_true",
        help="leave fs.inotify.max_user_instances as it is, even if too low for the run",
    )
    args = parser.parse_args()
    if MISSING:
        sys.exit(f"imap_push: {MISSING}")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("--timeout reached")))
    signal.alarm(args.timeout)

    dovecot = Dovecot(specialUse=True, imapClientLimit=200)
    data = tempfile.mkdtemp(prefix="directpush-imapbench-")
    server: Optional[subprocess.Popen[bytes]] = None
    oldInotify: Optional[int] = None
    try:
        # an instance per IDLE connection (the bridge's and the plain
        # clients'), and room for other mail-user processes
        needed = args.users + args.samples + 256
        if not args.keep_inotify_limit:
            oldInotify = raiseInotifyInstances(needed)
        with open(INOTIFY_INSTANCES) as f:
            args.inotifyNote = f"fs.inotify.max_user_instances {f.read().strip()}"
        for u in range(args.users):
            dovecot.users[userName(u)] = PASSWORD
        for u in range(args.users):
            dovecot.addUser(userName(u), PASSWORD)  # writes the file; cheap enough
        dovecot.start()
        for attempt in range(5):
            # another program may take the port between freePort and
            # twistd's listen: try another
            httpPort = freePort()
            env = dict(os.environ, PYTHONPATH=REPO)
            server = subprocess.Popen(
                [
                    sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                    "-n", "--pidfile=", f"--logfile={data}/server.log", "directpush", "--data", data,
                    "--listen", f"tcp:{httpPort}:interface=127.0.0.1", "--policy", "none", "--render-workers", "0",
                    "--backend", "imap", "--imap", f"tcp:127.0.0.1:{dovecot.port}", "--imap-allow-plaintext",
                ],
                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 60
            while server.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", httpPort), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            if server.poll() is None and time.monotonic() < deadline:
                break
            with open(f"{data}/server.log", errors="replace") as f:
                tail = f.read()[-2000:]
            if "Address already in use" not in tail or attempt == 4:
                raise RuntimeError("directpush did not start:\n" + tail)
        log(f"Dovecot on {dovecot.port}, directpush on {httpPort}, {args.users} users")
        asyncio.run(run(args, dovecot, httpPort))
    finally:
        if oldInotify is not None:
            # running processes keep their instances; new ones see the old limit
            setInotifyInstances(oldInotify)
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        dovecot.cleanup()
        import shutil

        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
