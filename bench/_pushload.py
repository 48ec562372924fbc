"""
Load-generator pieces for bench/push.py: a worker process holding many EAS
devices on asyncio (standard library plus directpush.wbxml), and the mail
delivery process.

A worker owns the devices whose global index i has i % workers == w. Each
device is one keep-alive HTTP/1.1 connection from the worker's own
127.x.y.z source address. It does its setup (FolderSync key 0, Sync key 0,
Sync with that key; against the floor: only the connection), then Pings;
after Status 2 it Syncs the Inbox and Pings again, after Status 1 it Pings
again at once, after Status 5 it adopts the bound the server gave.

Coordinator -> worker (over a multiprocessing Pipe):
  ("grow", k)   run this worker's first k devices (already running ones stay)
  ("release",)  devices waiting at the gate send their first Ping
  ("stop",)     close everything and exit
Worker -> coordinator:
  ("counts", {...})   ready / failed / pings sent / responses so far
  ("events", [...])   (kind, index, seq, time.time(), status) tuples:
                      kind "sent" (Ping request written), "resp" (answer read),
                      "eof" (connection lost while waiting), "error"
  ("fatal", text)
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import resource
import ssl
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

from directpush import wbxml
from directpush.wbxml import E

WBXML_TYPE = "application/vnd.ms-sync.wbxml"
PASSWORD = "pw"


def userName(u: int) -> str:
    return f"u{u:05d}@bench.example"


def deviceId(i: int) -> str:
    return f"bench{i:05d}"


def raiseNoFile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class HTTPError(Exception):
    pass


class Connection:
    """
    One keep-alive HTTP/1.1 connection; requests one at a time.
    """

    def __init__(self, port: int, context: Optional[ssl.SSLContext], source: str) -> None:
        self.port = port
        self.context = context
        self.source = source
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context,
            server_hostname="localhost" if self.context else None,
            local_addr=(self.source, 0), limit=1 << 20,
        )

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.transport.abort()
            except Exception:
                pass
        self.reader = self.writer = None

    async def send(self, path: str, headers: str, body: bytes) -> None:
        if self.writer is None:
            await self.open()
        assert self.writer is not None
        head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        await self.writer.drain()

    async def receive(self) -> Tuple[int, bytes]:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields: Dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, body


class Device:
    def __init__(self, worker: "Worker", index: int) -> None:
        self.worker = worker
        self.index = index
        self.user = userName(index // worker.config["devicesPerUser"])
        token = base64.b64encode(f"{self.user}:{PASSWORD}".encode()).decode()
        self.headers = (
            f"Authorization: Basic {token}\r\nMS-ASProtocolVersion: 14.1\r\n"
            f"Content-Type: {WBXML_TYPE}\r\nUser-Agent: Apple-iPhone15C2/2101.100\r\n"
        )
        self.path = f"/Microsoft-Server-ActiveSync?Cmd=%s&User={self.user}&DeviceId={deviceId(index)}&DeviceType=iPhone"
        self.conn = Connection(worker.config["port"], worker.context, worker.source)
        self.inbox = ""
        self.key = "0"
        self.heartbeat = worker.config["heartbeat"]

    async def call(self, command: str, document: wbxml.Element) -> Optional[wbxml.Element]:
        """
        Send and decode; None for an empty 200 (a Sync with nothing new).
        """
        for busy in range(30):
            for attempt in (1, 2):
                try:
                    await self.conn.send(self.path % command, self.headers, wbxml.encode(document))
                    status, body = await self.conn.receive()
                    break
                except (ConnectionError, asyncio.IncompleteReadError, OSError):
                    self.conn.close()
                    if attempt == 2:
                        raise
            if status != 503:
                break
            # The server is busy (at first: too many password checks at
            # once); a phone honours Retry-After, which is a few seconds.
            await asyncio.sleep(random.uniform(1.0, 5.0))
        if status != 200:
            raise HTTPError(f"{command}: HTTP {status} {body[:200]!r}")
        return wbxml.decode(body) if body else None

    async def setup(self) -> None:
        if self.worker.config["floor"]:
            await self.conn.open()
            return
        answer = await self.call("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", "0")))
        if answer is None:
            raise HTTPError("empty FolderSync answer")
        for add in answer.findall("Changes/Add"):
            if add.findtext("Type") == "2":
                self.inbox = add.findtext("ServerId")
        if not self.inbox:
            raise HTTPError("no Inbox in FolderSync")
        await self.sync()
        await self.sync()

    async def sync(self) -> None:
        for _ in range(50):
            collection = E("AirSync:Collection", E("SyncKey", self.key), E("CollectionId", self.inbox))
            if self.key != "0":
                collection.add("DeletesAsMoves", "1")
                collection.add("GetChanges", "1")
                collection.add("WindowSize", "100")
            collection.add(
                "Options", E("FilterType", "0"),
                E("AirSyncBase:BodyPreference", E("Type", "2"), E("TruncationSize", "5120")),
            )
            answer = await self.call("Sync", E("AirSync:Sync", E("Collections", collection)))
            if answer is None:
                if self.key == "0":
                    raise HTTPError("empty answer to Sync key 0")
                return  # nothing new
            got = answer.find("Collections/Collection")
            if got is None or got.findtext("Status") != "1":
                raise HTTPError(f"Sync failed: {wbxml.toXML(answer)[:300]}")
            self.key = got.findtext("SyncKey")
            if got.find("MoreAvailable") is None:
                return

    def pingBody(self) -> bytes:
        return wbxml.encode(E(
            "Ping:Ping", E("HeartbeatInterval", str(self.heartbeat)),
            E("Folders", E("Folder", E("Id", self.inbox or "1"), E("Class", "Email"))),
        ))

    async def run(self) -> None:
        w = self.worker
        try:
            async with w.setupSlots:
                await asyncio.wait_for(self.setup(), w.config["setupTimeout"])
        except Exception as e:
            w.failed += 1
            w.lastError = f"{type(e).__name__}: {e}"
            self.conn.close()
            return
        w.ready += 1
        if w.config["gate"]:
            # twisted.web drops keep-alive connections idle for 60 s, and
            # the setup of everyone takes longer: a fresh connection each
            # (all opened just before the release), then the Ping.
            await w.reconnect.wait()
            try:
                async with w.setupSlots:
                    self.conn.close()
                    await asyncio.wait_for(self.conn.open(), w.config["setupTimeout"])
            except Exception as e:
                w.lastError = f"reconnect {type(e).__name__}: {e}"
            w.reconnected += 1
            await w.gate.wait()
        seq = 0
        while True:
            try:
                await self.conn.send(self.path % "Ping", self.headers, self.pingBody())
                w.sent += 1
                w.event("sent", self.index, seq, time.time(), 0)
                status, body = await self.conn.receive()
            except (ConnectionError, asyncio.IncompleteReadError, OSError, ssl.SSLError) as e:
                w.event("eof", self.index, seq, time.time(), 0)
                w.lastError = f"Ping {type(e).__name__}: {e}"
                reason = f"Ping {type(e).__name__}"
                w.errors[reason] = w.errors.get(reason, 0) + 1
                self.conn.close()
                await asyncio.sleep(1)
                seq += 1
                continue
            now = time.time()
            w.responses += 1
            ping = 0
            if status == 200 and body:
                try:
                    answer = wbxml.decode(body)
                    ping = int(answer.findtext("Status") or 0)
                    if ping == 5:
                        self.heartbeat = int(answer.findtext("HeartbeatInterval"))
                except Exception:
                    ping = -1
            else:
                ping = -status
            w.event("resp", self.index, seq, now, ping)
            seq += 1
            try:
                if ping == 2:
                    await self.sync()
                elif ping not in (1, 5):
                    await asyncio.sleep(5)
            except Exception as e:
                w.event("error", self.index, seq, time.time(), 0)
                w.lastError = f"Sync {type(e).__name__}: {e}"
                reason = f"Sync {type(e).__name__}"
                w.errors[reason] = w.errors.get(reason, 0) + 1
                self.conn.close()
                await asyncio.sleep(1)


class Worker:
    def __init__(self, pipe: Any, number: int, config: Dict[str, Any]) -> None:
        self.pipe = pipe
        self.number = number
        self.config = config
        self.source = config["sources"][number]
        self.context: Optional[ssl.SSLContext] = None
        if config["cafile"]:
            self.context = ssl.create_default_context(cafile=config["cafile"])
        self.devices: List[Device] = []
        self.tasks: List[asyncio.Task] = []
        self.ready = self.failed = self.sent = self.responses = self.reconnected = 0
        self.lastError = ""
        self.errors: Dict[str, int] = {}
        self.events: List[Tuple[str, int, int, float, int]] = []

    def event(self, *e: Any) -> None:
        self.events.append(e)

    def counts(self) -> Dict[str, Any]:
        return {"ready": self.ready, "failed": self.failed, "sent": self.sent, "responses": self.responses,
                "started": len(self.devices), "reconnected": self.reconnected, "lastError": self.lastError,
                "errors": dict(self.errors)}

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.gate = asyncio.Event()
        self.reconnect = asyncio.Event()
        self.setupSlots = asyncio.Semaphore(self.config["concurrency"])
        self.stopped = asyncio.Event()
        loop.add_reader(self.pipe.fileno(), self.command)
        while not self.stopped.is_set():
            try:
                await asyncio.wait_for(self.stopped.wait(), 0.25)
            except asyncio.TimeoutError:
                pass
            self.flush()
        for t in self.tasks:
            t.cancel()
        for d in self.devices:
            d.conn.close()
        self.flush()

    def flush(self) -> None:
        if self.events:
            events, self.events = self.events, []
            self.pipe.send(("events", events))
        self.pipe.send(("counts", self.counts()))

    def command(self) -> None:
        try:
            message = self.pipe.recv()
        except EOFError:
            self.stopped.set()
            return
        if message[0] == "grow":
            workers = self.config["workers"]
            target = message[1]
            while True:
                index = len(self.devices) * workers + self.number
                if index >= target:
                    break
                device = Device(self, index)
                self.devices.append(device)
                self.tasks.append(asyncio.ensure_future(device.run()))
        elif message[0] == "reconnect":
            self.reconnect.set()
        elif message[0] == "release":
            self.gate.set()
        elif message[0] == "stop":
            self.stopped.set()


def workerMain(pipe: Any, number: int, config: Dict[str, Any]) -> None:
    try:
        raiseNoFile()
        asyncio.run(Worker(pipe, number, config).main())
    except Exception:
        try:
            pipe.send(("fatal", traceback.format_exc()))
        except Exception:
            pass


def deliverMain(pipe: Any, mailRoot: str, users: int, rate: float, seconds: float, seed: int) -> None:
    """
    Deliver rate*seconds small messages into random users' maildirs as an
    MDA does (write tmp/, rename into new/); send back (user, time.time()
    just before the rename) for each.
    """
    rng = random.Random(seed)
    records = []
    count = int(rate * seconds)
    start = time.monotonic()
    host = "bench"
    try:
        for k in range(count):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            u = rng.randrange(users)
            user = userName(u)
            name = f"{int(time.time())}.M{k}P{os.getpid()}.{host}"
            tmp = os.path.join(mailRoot, user, "tmp", name)
            with open(tmp, "wb") as f:
                f.write(
                    f"From: Sender <sender@example.com>\r\nTo: <{user}>\r\nSubject: push {k}\r\n"
                    f"Message-ID: <push.{k}.{seed}@bench.example>\r\nDate: Mon, 2 Jun 2025 10:00:00 +0000\r\n\r\n"
                    f"Hello {k}\r\n".encode()
                )
            t = time.time()
            os.rename(tmp, os.path.join(mailRoot, user, "new", name))
            records.append((u, t))
        pipe.send(("delivered", records))
    except Exception:
        pipe.send(("fatal", traceback.format_exc()))
