"""
Initial Sync of a large Inbox by one device, against the real server.

What it measures: for each Inbox size N, a fresh data directory holds a
maildir of N realistic messages (3-6 KB: varied senders and subjects,
text/plain or multipart/alternative, about 1% with an attachment), and a
fresh ``twistd directpush`` process serves it on 127.0.0.1. One device
(DeviceId bench1, EAS 14.1, as an iPhone) does FolderSync, Sync key 0 of
the Inbox, then pages through it with WindowSize 512 and BodyPreference
Type 2 / TruncationSize 5120 (what iOS asks) until no MoreAvailable. The
bench checks that exactly N distinct items arrived, then prints per N:

  rounds        paged Syncs (after the key-0 Sync)
  seconds       wall time of the paged Syncs
  items/s       N / seconds
  median ms     median round-trip time of one paged Sync
  CPU s         server user+system CPU during the paged Syncs
  workers CPU s the same for its render worker processes
  RSS start     server resident memory once it is listening (baseline)
  peak RSS      server high-water mark (VmHWM) after the run
  peak-start    what the sync itself cost in memory, at its highest
  end-start     what the server still holds once the sync is over (the
                folder stays cached, as it does for a device's next Sync)

The client is a blocking http.client in this process and asks for gzip, as
phones do; its own decoding time is part of each round trip. Plain HTTP
on loopback by default (the server is told --listen tcp:...); --tls uses
HTTPS with a self-signed certificate the client trusts.

Bounded: each size has a timeout (--timeout, default 600 s) covering the
server start and the sync, and the number of rounds is capped, so the whole
run stops by itself; the server is stopped (SIGTERM, then SIGKILL) after
each size.

How to run it (standard library and directpush only):

    python bench/sync_initial.py                          # N = 2000, 10000, 20000
    python bench/sync_initial.py --sizes 500 --tls
    python bench/sync_initial.py --sizes 10000 --cprofile /tmp/prof.out
    python bench/sync_initial.py --sizes 10000 --py-spy /tmp/spy.txt
    python bench/sync_initial.py --reuse /tmp/maildirs   # A/B runs: write once

--cprofile runs the server under cProfile (main thread only: the thread
pools that read files and write the state database are not seen, and the
profiler slows the server, so the table row is not a throughput figure).
--py-spy attaches py-spy (if installed next to this Python) to the server
for the sync and writes its collapsed stacks, all threads included.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from email.utils import formatdate
from typing import Dict, List, Optional, Tuple

from twisted.python.filepath import FilePath

from directpush import auth, certificate, wbxml
from directpush.wbxml import E

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = "bench@example.org"
PASSWORD = "bench-password"
DEVICE = "bench1"
WINDOW = 512
WBXML_TYPE = "application/vnd.ms-sync.wbxml"
SEED = 20250601
STARTUP_SECONDS = 60

# Material for varied, realistic messages.
SENDERS = [
    ("Anna Schmidt", "anna.schmidt@example.com"), ("Bob Jones", "bob@example.net"),
    ("Chen Wei", "chen.wei@example.cn"), ("Dolores Ruiz", "druiz@example.es"),
    ("GitHub", "notifications@github.example"), ("Jörg Müller", "joerg@example.de"),
    ("Priya Natarajan", "priya@example.in"), ("Newsletter", "news@shop.example"),
    ("IT Service Desk", "servicedesk@corp.example"), ("Олег Петров", "oleg@example.ru"),
]
SUBJECTS = [
    "Re: Quarterly report {n}", "Meeting notes, week {w}", "Invoice #{n} due",
    "[project] Build {n} failed", "Fwd: Travel plans for {w}", "Your order {n} has shipped",
    "Lunch on Thursday?", "Re: Re: budget review ({n})", "Änderungen am Vertrag {n}",
    "Weekly digest {w}: 12 new posts",
]
WORDS = (
    "the project schedule review customer meeting agenda budget deadline update "
    "please find attached regards thanks invoice quarter numbers team release "
    "Müller café résumé Zürich — “quoted” €100 ok sure tomorrow morning call"
).split()


# The maildir


def paragraph(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def makeMessage(rng: random.Random, n: int, when: int) -> bytes:
    """
    One message of about 3-6 KB; every 97th carries a small PDF.
    """
    name, address = rng.choice(SENDERS)
    msg = EmailMessage()
    msg["From"] = f"{name} <{address}>"
    msg["To"] = f"Bench User <{USER}>"
    if n % 7 == 0:
        msg["Cc"] = "Team <team@example.org>, Carol <carol@example.org>"
    msg["Subject"] = rng.choice(SUBJECTS).format(n=n, w=n % 52 + 1)
    msg["Date"] = formatdate(when)
    msg["Message-ID"] = f"<bench.{n}.{SEED}@example.com>"
    msg["Received"] = f"from mx.example.com by mail.example.org; {formatdate(when)}"
    msg["X-Mailer"] = "BenchMail 1.0"
    # Text sizes chosen so the whole file lands between 3 and 6 KB; the
    # multipart ones carry the text twice (plain and HTML), so less of it.
    alternative = n % 3 == 0
    paragraphs = rng.randint(3, 4) if alternative else rng.randint(5, 7)
    text = "\n\n".join(paragraph(rng, rng.randint(50, 80)) for _ in range(paragraphs))
    msg.set_content(f"Hello,\n\n{text}\n\n-- \n{name}\n")
    if alternative:
        html = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
        msg.add_alternative(f"<html><body>{html}<p>{name}</p></body></html>", subtype="html")
    if n % 97 == 0:
        msg.add_attachment(rng.randbytes(3000), maintype="application", subtype="pdf", filename=f"report-{n}.pdf")
    return msg.as_bytes()


def prepareData(data: str, size: int) -> None:
    """
    Users file and a maildir of C{size} messages in new/, as an MDA leaves
    them: increasing mtimes, all in the past (so the server's scans settle).
    """
    os.makedirs(data, mode=0o700)
    auth.writePasswd(FilePath(os.path.join(data, "users")), {USER: "{PLAIN}" + PASSWORD})
    maildir = os.path.join(data, "mail", USER)
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub))
    rng = random.Random(SEED)
    start = int(time.time()) - size - 3600
    for n in range(size):
        when = start + n
        path = os.path.join(maildir, "new", f"{when}.M{n}P{os.getpid()}.bench")
        with open(path, "wb") as f:
            f.write(makeMessage(rng, n, when))
        os.utime(path, (when, when))


# The server process


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serverCommand(data: str, port: int, logfile: str, tlsFiles: Optional[Tuple[str, str]], cprofile: Optional[str]) -> List[str]:
    if tlsFiles:
        key, cert = tlsFiles
        listen = f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    else:
        listen = f"tcp:{port}:interface=127.0.0.1"
    # twistd's own profiler: it saves the stats when the reactor stops,
    # before twistd re-raises SIGTERM to end the process.
    profile = [f"--profile={cprofile}", "--profiler=cprofile", "--savestats"] if cprofile else []
    return [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", f"--logfile={logfile}", *profile,
        "directpush", "--data", data, "--listen", listen, "--policy", "none",
    ]


def logTail(command: List[str]) -> str:
    """
    The end of the server's log file, to say why it did not start.
    """
    for arg in command:
        if arg.startswith("--logfile="):
            try:
                with open(arg.partition("=")[2], errors="replace") as f:
                    return f.read()[-1500:]
            except OSError:
                break
    return ""


def startServer(command: List[str], port: int, deadline: float) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    limit = min(deadline, time.monotonic() + STARTUP_SECONDS)
    while time.monotonic() < limit:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}{logTail(command)}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    stopServer(proc)
    raise RuntimeError("server did not start listening in time")


def stopServer(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def procStatus(pid: int) -> Dict[str, int]:
    """
    VmRSS and VmHWM of C{pid}, in kB.
    """
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    return out


def cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the parenthesised name; utime and stime are 14 and 15.
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def childrenCpuSeconds(pid: int) -> float:
    """
    CPU time of the server's live child processes (the render workers):
    on a machine others share, CPU seconds say more than wall time.
    """
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return total
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = f.read().split()
        except OSError:
            continue
        for child in children:
            try:
                total += cpuSeconds(int(child))
            except OSError:
                pass
    return total


# The device


class Device:
    """
    A blocking EAS client over one keep-alive connection.
    """

    def __init__(self, port: int, cafile: Optional[str], deadline: float) -> None:
        self.deadline = deadline
        timeout = max(1.0, deadline - time.monotonic())
        if cafile:
            context = ssl.create_default_context(cafile=cafile)
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", port, timeout=timeout, context=context
            )
        else:
            self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.headers = {
            "Authorization": f"Basic {token}",
            "MS-ASProtocolVersion": "14.1",
            "Content-Type": WBXML_TYPE,
            "Accept-Encoding": "gzip",
            "User-Agent": "Apple-iPhone15C2/2101.100",
        }

    def call(self, command: str, document: wbxml.Element) -> wbxml.Element:
        if time.monotonic() > self.deadline:
            raise TimeoutError("per-size timeout reached")
        query = f"/Microsoft-Server-ActiveSync?Cmd={command}&User={USER}&DeviceId={DEVICE}&DeviceType=iPhone"
        self.conn.request("POST", query, body=wbxml.encode(document), headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{command}: HTTP {response.status}: {body[:200]!r}")
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if not body:
            raise RuntimeError(f"{command}: empty answer")
        return wbxml.decode(body)

    def inbox(self) -> str:
        answer = self.call("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", "0")))
        for add in answer.findall("Changes/Add"):
            if add.findtext("Type") == "2":
                return add.findtext("ServerId")
        raise RuntimeError("no Inbox (Type 2) in FolderSync")

    def syncRequest(self, collectionId: str, key: str) -> wbxml.Element:
        collection = E("AirSync:Collection", E("SyncKey", key), E("CollectionId", collectionId))
        if key != "0":
            collection.add("DeletesAsMoves", "1")
            collection.add("GetChanges", "1")
            collection.add("WindowSize", str(WINDOW))
        collection.add(
            "Options",
            E("FilterType", "0"),
            E("AirSyncBase:BodyPreference", E("Type", "2"), E("TruncationSize", "5120")),
        )
        return E("AirSync:Sync", E("Collections", collection))

    def sync(self, collectionId: str, key: str) -> Tuple[str, List[str], bool]:
        """
        One Sync: the new key, the ServerIds added, whether more is available.
        """
        answer = self.call("Sync", self.syncRequest(collectionId, key))
        collection = answer.find("Collections/Collection")
        if collection is None or collection.findtext("Status") != "1":
            raise RuntimeError(f"Sync failed: {wbxml.toXML(answer)[:500]}")
        adds = [c.findtext("ServerId") for c in collection.findall("Commands/Add")]
        return collection.findtext("SyncKey"), adds, collection.find("MoreAvailable") is not None


# One size


def runSize(size: int, args: argparse.Namespace, root: str) -> Dict[str, float]:
    deadline = time.monotonic() + args.timeout
    data = os.path.join(root, f"data-{size}")
    prepared = time.monotonic()
    if args.reuse:
        # Writing 10,000 messages takes longer than syncing them: keep one
        # copy per size and give each run its own.
        template = os.path.join(args.reuse, f"data-{size}")
        if not os.path.isdir(template):
            prepareData(template + ".partial", size)
            os.rename(template + ".partial", template)
        shutil.copytree(template, data, symlinks=True)
    else:
        prepareData(data, size)
    # Written back now, not by the kernel while the sync is timed.
    os.sync()
    print(f"# N={size}: maildir ready in {time.monotonic() - prepared:.1f} s", file=sys.stderr)
    tlsFiles = cafile = None
    if args.tls:
        key, cert, _ = certificate.ensureSelfSigned(FilePath(os.path.join(data, "tls")), "localhost")
        tlsFiles, cafile = (key.path, cert.path), cert.path
    port = freePort()
    logfile = os.path.join(root, f"server-{size}.log")
    proc = startServer(serverCommand(data, port, logfile, tlsFiles, args.cprofile), port, deadline)
    spy = None
    try:
        start = procStatus(proc.pid)
        device = Device(port, cafile, deadline)
        inbox = device.inbox()
        key, adds, _ = device.sync(inbox, "0")
        if adds:
            raise RuntimeError("Sync key 0 returned items")
        if args.py_spy:
            spy = startPySpy(proc.pid, args.py_spy)
        result = pagedSync(device, inbox, key, size, proc.pid)
        result["rssStart"] = start["VmRSS"] / 1024
        end = procStatus(proc.pid)
        result["rssEnd"] = end["VmRSS"] / 1024
        result["peak"] = end["VmHWM"] / 1024
        return result
    finally:
        stopServer(proc)
        if spy is not None:
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)


def pagedSync(device: Device, inbox: str, key: str, size: int, pid: int) -> Dict[str, float]:
    """
    Page through the Inbox; check every message arrived exactly once.
    """
    seen: set = set()
    duplicates = 0
    latencies: List[float] = []
    # A server that never stops saying MoreAvailable must not hang the bench.
    maxRounds = size // WINDOW + 10
    cpuBefore = cpuSeconds(pid)
    workersBefore = childrenCpuSeconds(pid)
    began = time.monotonic()
    more = True
    while more:
        if len(latencies) >= maxRounds:
            raise RuntimeError(f"still MoreAvailable after {maxRounds} rounds")
        t = time.monotonic()
        key, adds, more = device.sync(inbox, key)
        latencies.append(time.monotonic() - t)
        duplicates += sum(1 for a in adds if a in seen)
        seen.update(adds)
    elapsed = time.monotonic() - began
    cpu = cpuSeconds(pid) - cpuBefore
    workers = childrenCpuSeconds(pid) - workersBefore
    if len(seen) != size or duplicates:
        raise RuntimeError(f"received {len(seen)} distinct items, {duplicates} duplicates; expected {size}")
    return {
        "rounds": len(latencies),
        "seconds": elapsed,
        "rate": size / elapsed,
        "median": statistics.median(latencies) * 1000,
        "cpu": cpu,
        "workers": workers,
    }


def startPySpy(pid: int, out: str) -> Optional[subprocess.Popen]:
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if spy is None:
        print("# py-spy not found; not profiling", file=sys.stderr)
        return None
    # It stops by itself when the server exits; raw = collapsed stacks.
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--threads", "--output", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


# The table


COLUMNS = ["N", "rounds", "seconds", "items/s", "median round ms", "server CPU s", "workers CPU s", "RSS start MB", "peak RSS MB", "peak - start MB", "end - start MB"]


def row(size: int, r: Dict[str, float]) -> List[str]:
    return [
        f"{size}", f"{r['rounds']:.0f}", f"{r['seconds']:.2f}", f"{r['rate']:.0f}", f"{r['median']:.0f}",
        f"{r['cpu']:.2f}", f"{r['workers']:.2f}", f"{r['rssStart']:.1f}", f"{r['peak']:.1f}", f"{r['peak'] - r['rssStart']:.1f}",
        f"{r['rssEnd'] - r['rssStart']:.1f}",
    ]


def printRow(cells: List[str]) -> None:
    print(" | ".join(c.rjust(len(h)) for c, h in zip(cells, COLUMNS)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,10000,20000", help="Inbox sizes, comma-separated")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per size (start to stop)")
    parser.add_argument("--tls", action="store_true", help="HTTPS with a self-signed certificate")
    parser.add_argument("--cprofile", metavar="FILE", help="run the server under cProfile, stats to FILE")
    parser.add_argument("--py-spy", metavar="FILE", help="record the server with py-spy (raw stacks) to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    parser.add_argument("--window", type=int, default=512, help="WindowSize of the paged Syncs (1-512, default 512)")
    parser.add_argument(
        "--reuse", metavar="DIR", help="write each size's maildir once into DIR and copy it for every run"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    globals()["WINDOW"] = max(1, min(512, args.window))

    root = tempfile.mkdtemp(prefix="directpush-bench-")
    print(f"# directpush initial Sync, one device, WindowSize {WINDOW}, BodyPreference 2/5120, "
          f"{'HTTPS' if args.tls else 'plain HTTP'} on 127.0.0.1, gzip answers; Python {sys.version.split()[0]}")
    if args.cprofile or args.py_spy:
        print("# profiling: timings are not throughput figures")
    printRow(COLUMNS)
    failed = False
    try:
        for size in sizes:
            try:
                printRow(row(size, runSize(size, args, root)))
            except Exception as e:
                failed = True
                print(f"{size} | FAILED: {e}", flush=True)
    finally:
        if args.keep:
            print(f"# kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
