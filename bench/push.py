"""
Direct Push at scale: many devices each holding a Ping against a real
``twistd directpush`` process on 127.0.0.1.

Scenarios (each starts its own servers and load generator and stops them):

  idle     N devices each hold a Ping (N ramps through --ns in one run, so
           the devices of a step stay and more are added). Per step: server
           RSS per waiting request ((RSS with N - baseline) / N) once the
           server is quiet after the setup, again at the end of the idle
           window (the server lets go of mailboxes unused for 30 to 60 s),
           and server CPU over --idle-seconds of quiet. Run against directpush and
           against a "floor": bench/_floor.py, a bare twisted.web Resource
           whose render_POST returns NOT_DONE_YET and never answers, same
           transport, same certificate, measured the same way.
  latency  N devices hold a Ping; another process delivers mail into random
           users' maildirs at --rate per second for --seconds (tmp/ then
           rename into new/, recording time.time() just before the rename).
           Latency = delivery -> Ping answer read by the device. After
           Status 2 a device Syncs the Inbox and Pings again.
  storm    N devices Ping at the same moment with --storm-heartbeat (60 s,
           the server's default minimum) on fresh connections opened just
           before (twisted.web closes keep-alive connections idle for 60 s,
           and the setup of all devices takes longer), so all heartbeats expire at once;
           time from the first to the last Status 1 answer, and until every
           device has Pinged again.

Devices: FolderSync key 0, Sync key 0 and one more Sync of the Inbox (the
server then knows their state), then Ping; --policy none, so no
provisioning. One keep-alive HTTP/1.1 connection per device; the floor
gets only the connection and the Ping. The load generator is --workers
asyncio processes, each from its own 127.0.1.x source address; setup runs
--concurrency devices at a time. Users: one per --devices-per-user devices,
{PLAIN} passwords, empty maildirs.

Every process raises its open-file soft limit to the hard limit; with one
socket per device, the server's hard limit bounds N.

Bounded: --timeout bounds the whole run (SIGALRM), each wait has its own
limit; servers and workers are killed at the end.

    python bench/push.py idle                                   # floor + directpush, TLS and TCP, N = 1000,10000,18000
    python bench/push.py idle --transports tcp --servers floor --ns 1000 --idle-seconds 10
    python bench/push.py latency --n 10000 --rate 20 --seconds 30
    python bench/push.py storm --n 10000
"""

from __future__ import annotations

import argparse
import http.client
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.python.filepath import FilePath

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _pushload as load  # noqa: E402

from directpush import auth, certificate  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


class Timeout(Exception):
    pass


class OverallTimeout(BaseException):
    """
    Not an Exception, so that no scenario carries on after it.
    """


def onAlarm(signum: int, frame: Any) -> None:
    raise OverallTimeout("overall --timeout reached")


# Data, servers, /proc


def prepareData(data: str, users: int) -> None:
    os.makedirs(data, mode=0o700, exist_ok=True)
    auth.writePasswd(FilePath(os.path.join(data, "users")),
                     {load.userName(u): "{PLAIN}" + load.PASSWORD for u in range(users)})
    for u in range(users):
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(data, "mail", load.userName(u), sub), exist_ok=True)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raiseLimit() -> None:
    load.raiseNoFile()


class Server:
    def __init__(self, kind: str, data: str, tls: Optional[Tuple[str, str]], extra: List[str]) -> None:
        self.kind = kind
        self.port = freePort()
        if tls:
            key, cert = tls
            listen = f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        else:
            listen = f"tcp:{self.port}:interface=127.0.0.1"
        self.log = os.path.join(data, f"{kind}-{self.port}.log")
        if kind == "floor":
            command = [sys.executable, os.path.join(HERE, "_floor.py"), "--listen", listen]
        else:
            command = [
                sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", f"--logfile={self.log}",
                "directpush", "--data", data, "--listen", listen, "--policy", "none",
                # Its load comes from a few source addresses, thousands each.
                "--peer-connections", "0", *extra,
            ]
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.logFile = open(self.log, "ab") if kind == "floor" else subprocess.DEVNULL
        self.proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=self.logFile, stderr=subprocess.STDOUT,
                                     preexec_fn=raiseLimit)
        limit = time.monotonic() + 60
        while time.monotonic() < limit:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} exited with {self.proc.returncode}: {self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{kind} did not start listening")

    def tail(self) -> str:
        try:
            with open(self.log, "rb") as f:
                return f.read()[-1500:].decode(errors="replace")
        except OSError:
            return ""

    def rssMB(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def openFiles(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return -1

    def floorPending(self, cafile: Optional[str]) -> Optional[int]:
        if self.kind != "floor":
            return None
        try:
            if cafile:
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    "localhost", self.port, timeout=10, context=ssl.create_default_context(cafile=cafile))
            else:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request("GET", "/")
            return int(conn.getresponse().read())
        except Exception:
            return None

    def settle(self, limit: float = 60, quiet: float = 0.03) -> float:
        """
        Wait until the server burns less than C{quiet} CPU seconds in a
        second, twice in a row; return the seconds waited.
        """
        began = time.monotonic()
        calm = 0
        while time.monotonic() - began < limit and calm < 2:
            c = self.cpu()
            time.sleep(1)
            calm = calm + 1 if self.cpu() - c < quiet else 0
        return time.monotonic() - began

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.logFile is not subprocess.DEVNULL:
            self.logFile.close()


# The load generator, seen from the coordinator


class Load:
    def __init__(self, server: Server, cafile: Optional[str], args: argparse.Namespace,
                 heartbeat: int, gate: bool) -> None:
        self.server = server
        self.workers = args.workers
        config = {
            "port": server.port, "cafile": cafile, "floor": server.kind == "floor",
            "devicesPerUser": args.devices_per_user, "heartbeat": heartbeat, "gate": gate,
            "workers": args.workers, "concurrency": max(1, args.concurrency // args.workers),
            "setupTimeout": args.setup_timeout,
            "sources": [f"127.0.1.{w + 1}" for w in range(args.workers)],
        }
        ctx = multiprocessing.get_context("fork")
        self.pipes = []
        self.procs = []
        for w in range(args.workers):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=load.workerMain, args=(theirs, w, config), daemon=True)
            p.start()
            theirs.close()
            self.pipes.append(mine)
            self.procs.append(p)
        self.counts: List[Dict[str, Any]] = [{} for _ in range(args.workers)]
        self.events: List[Tuple[str, int, int, float, int]] = []

    def total(self, name: str) -> int:
        return sum(c.get(name, 0) for c in self.counts)

    def errors(self) -> str:
        total: Dict[str, int] = {}
        for c in self.counts:
            for k, v in c.get("errors", {}).items():
                total[k] = total.get(k, 0) + v
        return ", ".join(f"{k}: {v}" for k, v in sorted(total.items()))

    def lastError(self) -> str:
        return "; ".join(sorted({c.get("lastError", "") for c in self.counts if c.get("lastError")}))[:400]

    def broadcast(self, message: Any) -> None:
        for p in self.pipes:
            p.send(message)

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            for conn in multiprocessing.connection.wait(self.pipes, min(left, 0.5)):
                w = self.pipes.index(conn)
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    raise RuntimeError(f"load worker {w} died")
                if kind == "counts":
                    self.counts[w] = payload
                elif kind == "events":
                    self.events.extend(payload)
                elif kind == "fatal":
                    raise RuntimeError(f"load worker {w}: {payload}")

    def waitUntil(self, predicate: Any, limit: float, what: str) -> float:
        began = time.monotonic()
        while not predicate():
            if time.monotonic() - began > limit:
                raise Timeout(f"{what}: not reached in {limit:.0f} s (ready {self.total('ready')}, "
                              f"failed {self.total('failed')}, sent {self.total('sent')}; {self.lastError()})")
            if self.server.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.server.tail()}")
            self.pump(0.5)
        return time.monotonic() - began

    def grow(self, n: int, limit: float) -> float:
        """
        Run devices 0..n-1; wait until each has failed or sent its Ping
        (with the gate, until each is ready).
        """
        self.broadcast(("grow", n))
        self.pump(0.6)
        gate = False
        return self.waitUntil(
            lambda: self.total("started") >= n and self.total("ready") + self.total("failed") >= n
            and (gate or self.total("sent") >= self.total("ready")),
            limit, f"setup of {n} devices")

    def stop(self) -> None:
        for p in self.pipes:
            try:
                p.send(("stop",))
            except Exception:
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)


def percentile(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# Tables


def printTable(columns: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    print(" | ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.rjust(w) for c, w in zip(r, widths)))
    sys.stdout.flush()


def log(text: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


# Scenarios


def setupRun(args: argparse.Namespace, root: str, transport: str, users: int) -> Tuple[str, Optional[Tuple[str, str]], Optional[str]]:
    data = os.path.join(root, "data")
    if not os.path.exists(os.path.join(data, "users")):
        began = time.monotonic()
        prepareData(data, users)
        log(f"{users} users and maildirs written in {time.monotonic() - began:.1f} s")
    tls = cafile = None
    if transport == "tls":
        key, cert, _ = certificate.ensureSelfSigned(FilePath(os.path.join(data, "tls")), "localhost")
        tls, cafile = (key.path, cert.path), cert.path
    return data, tls, cafile


def freshState(data: str) -> None:
    """
    Forget device state between servers (keep users, maildirs, certificate).
    """
    for name in os.listdir(data):
        if name not in ("users", "mail", "tls") and not name.endswith(".log"):
            path = os.path.join(data, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


IDLE_COLUMNS = ["transport", "server", "N", "held", "RSS baseline MB", "RSS with N MB", "KB per waiting request",
                "KB per waiting request after idle window", "CPU s over idle window", "CPU % of a core", "answers in window", "setup s", "server fds"]


def runIdle(args: argparse.Namespace, root: str) -> None:
    ns = [int(n) for n in args.ns.split(",")]
    users = math.ceil(max(ns) / args.devices_per_user)
    rows: List[List[str]] = []
    for transport in args.transports.split(","):
        for kind in args.servers.split(","):
            data, tls, cafile = setupRun(args, root, transport, users)
            freshState(data)
            server = Server(kind, data, tls, args.server_arg)
            loadgen = None
            try:
                server.settle(20)
                baseline = server.rssMB()
                loadgen = Load(server, cafile, args, args.heartbeat, gate=False)
                for n in ns:
                    log(f"{transport} {kind}: growing to {n}")
                    try:
                        setup = loadgen.grow(n, args.setup_limit)
                    except Timeout as e:
                        log(f"{transport} {kind}: {e}")
                        setup = float("nan")
                    server.settle(60)
                    loadgen.pump(1)
                    held = loadgen.total("sent") - loadgen.total("responses")
                    pending = server.floorPending(cafile)
                    rss = server.rssMB()
                    fds = server.openFiles()
                    before = len(loadgen.events)
                    respBefore = loadgen.total("responses")
                    cpu0 = server.cpu()
                    began = time.monotonic()
                    loadgen.pump(args.idle_seconds)
                    cpu = server.cpu() - cpu0
                    window = time.monotonic() - began
                    rssAfter = server.rssMB()
                    answers = loadgen.total("responses") - respBefore
                    eofs = sum(1 for e in loadgen.events[before:] if e[0] == "eof")
                    codes: Dict[int, int] = {}
                    for e in loadgen.events[before:]:
                        if e[0] == "resp":
                            codes[e[4]] = codes.get(e[4], 0) + 1
                    if codes:
                        log("answers in window by Ping status (negative: HTTP status): "
                            + " ".join(f"{c}:{k}" for c, k in sorted(codes.items())))
                    heldText = f"{held}" + (f" (srv {pending})" if pending is not None else "")
                    if loadgen.total("failed"):
                        heldText += f" ({loadgen.total('failed')} failed)"
                    row = [transport, kind, f"{n}", heldText, f"{baseline:.1f}", f"{rss:.1f}",
                           f"{(rss - baseline) * 1024 / max(1, held):.1f}",
                           f"{(rssAfter - baseline) * 1024 / max(1, held):.1f}", f"{cpu:.2f}",
                           f"{100 * cpu / window:.2f}", f"{answers}" + (f" +{eofs} eof" if eofs else ""),
                           f"{setup:.1f}", f"{fds}"]
                    rows.append(row)
                    log(" | ".join(row))
                    if loadgen.total("failed"):
                        log(f"failures: {loadgen.lastError()}")
                        break
            except Exception as e:
                log(f"{transport} {kind}: FAILED {type(e).__name__}: {e}")
                rows.append([transport, kind, "-", f"FAILED: {str(e)[:150]}"] + [""] * (len(IDLE_COLUMNS) - 4))
            finally:
                if loadgen:
                    loadgen.stop()
                server.stop()
    print(f"\n## idle: devices hold a Ping (HeartbeatInterval {args.heartbeat}), "
          f"{args.idle_seconds:.0f} s idle window; RSS is the server's main process")
    printTable(IDLE_COLUMNS, rows)


def runLatency(args: argparse.Namespace, root: str) -> None:
    users = math.ceil(args.n / args.devices_per_user)
    rows = []
    for transport in args.transports.split(","):
        data, tls, cafile = setupRun(args, root, transport, users)
        freshState(data)
        server = Server("directpush", data, tls, args.server_arg)
        loadgen = None
        try:
            loadgen = Load(server, cafile, args, args.heartbeat, gate=False)
            log(f"latency {transport}: growing to {args.n}")
            setup = loadgen.grow(args.n, args.setup_limit)
            server.settle(60)
            loadgen.pump(1)
            held = loadgen.total("sent") - loadgen.total("responses")
            log(f"latency {transport}: {held} Pings held after {setup:.0f} s setup; delivering")
            start = len(loadgen.events)
            ctx = multiprocessing.get_context("fork")
            mine, theirs = ctx.Pipe()
            deliverer = ctx.Process(target=load.deliverMain, daemon=True, args=(
                theirs, os.path.join(data, "mail"), users, args.rate, args.seconds, 7))
            cpu0 = server.cpu()
            deliverer.start()
            records = None
            limit = time.monotonic() + args.seconds + 60
            while records is None:
                if time.monotonic() > limit:
                    raise Timeout("delivery did not finish")
                loadgen.pump(0.5)
                if mine.poll():
                    kind, payload = mine.recv()
                    if kind == "fatal":
                        raise RuntimeError(payload)
                    records = payload
            loadgen.pump(args.drain)
            cpu = server.cpu() - cpu0
            deliverer.join(5)
            # Match: each device's Status 2 answers all its user's deliveries
            # not yet answered for that device and made before the answer.
            byUser: Dict[int, List[float]] = {}
            for u, t in records:
                byUser.setdefault(u, []).append(t)
            answered: Dict[Tuple[int, int], bool] = {}
            latencies: List[float] = []
            statuses: Dict[int, int] = {}
            spurious = 0
            for kind, index, seq, t, status in sorted(loadgen.events[start:], key=lambda e: e[3]):
                if kind != "resp":
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                if status != 2:
                    continue
                u = index // args.devices_per_user
                matched = False
                for k, td in enumerate(byUser.get(u, [])):
                    if td <= t and (index, k) not in answered:
                        answered[(index, k)] = True
                        latencies.append(t - td)
                        matched = True
                if not matched:
                    spurious += 1
            expected = sum(min(args.devices_per_user, args.n - u * args.devices_per_user) for u, _ in records)
            eofs = sum(1 for e in loadgen.events[start:] if e[0] in ("eof", "error"))
            ms = [x * 1000 for x in latencies]
            rows.append([transport, f"{args.n}", f"{held}", f"{len(records)}", f"{len(latencies)}/{expected}",
                         f"{percentile(ms, 0.5):.1f}", f"{percentile(ms, 0.99):.1f}",
                         f"{max(ms) if ms else float('nan'):.1f}", f"{spurious}",
                         " ".join(f"{s}:{c}" for s, c in sorted(statuses.items())) + (f" eof/err:{eofs}" if eofs else ""),
                         f"{cpu:.1f}"])
            log(" | ".join(rows[-1]))
            log(f"client errors: {loadgen.errors()}; last: {loadgen.lastError()}")
        except Exception as e:
            log(f"latency {transport}: FAILED {type(e).__name__}: {e}")
            rows.append([transport, f"{args.n}", f"FAILED: {str(e)[:200]}"] + [""] * 8)
        finally:
            if loadgen:
                loadgen.stop()
            server.stop()
    print(f"\n## latency: {args.rate:g} deliveries/s for {args.seconds:g} s into random users' maildirs "
          f"(tmp/ + rename), devices-per-user {args.devices_per_user}; delivery -> Ping answer read")
    printTable(["transport", "N", "held", "deliveries", "answered", "p50 ms", "p99 ms", "max ms",
                "unmatched Status 2", "Ping statuses", "server CPU s"], rows)


def runStorm(args: argparse.Namespace, root: str) -> None:
    users = math.ceil(args.n / args.devices_per_user)
    rows = []
    for transport in args.transports.split(","):
        data, tls, cafile = setupRun(args, root, transport, users)
        freshState(data)
        server = Server("directpush", data, tls, args.server_arg)
        loadgen = None
        try:
            loadgen = Load(server, cafile, args, args.storm_heartbeat, gate=True)
            log(f"storm {transport}: setting up {args.n}")
            loadgen.broadcast(("grow", args.n))
            loadgen.pump(0.6)
            loadgen.waitUntil(lambda: loadgen.total("started") >= args.n
                              and loadgen.total("ready") + loadgen.total("failed") >= args.n,
                              args.setup_limit, f"setup of {args.n}")
            ready = loadgen.total("ready")
            log(f"storm {transport}: {ready} ready; fresh connections")
            loadgen.broadcast(("reconnect",))
            reconnect = loadgen.waitUntil(lambda: loadgen.total("reconnected") >= ready, 300, "fresh connections")
            log(f"storm {transport}: {ready} connected in {reconnect:.1f} s; releasing the Pings")
            start = len(loadgen.events)
            released = time.time()
            loadgen.broadcast(("release",))
            loadgen.waitUntil(lambda: loadgen.total("sent") >= ready, 300, "first Pings")
            firstSent = time.time()
            server.settle(60)
            log(f"storm {transport}: all sent {firstSent - released:.1f} s after release; waiting for the expiry")
            cpu0 = server.cpu()
            # Until every device has its answer and has Pinged again.
            loadgen.waitUntil(lambda: loadgen.total("sent") >= 2 * ready,
                              args.storm_heartbeat + 300, "second round of Pings")
            allResent = time.time()
            quiet = server.settle(120)
            cpu = server.cpu() - cpu0 - 1.0 * 0  # includes the settle seconds (quiet ones)
            events = loadgen.events[start:]
            sent0 = [e[3] for e in events if e[0] == "sent" and e[2] == 0]
            resp0 = [e for e in events if e[0] == "resp" and e[2] == 0]
            sent1 = [e[3] for e in events if e[0] == "sent" and e[2] == 1]
            statuses: Dict[int, int] = {}
            for e in resp0:
                statuses[e[4]] = statuses.get(e[4], 0) + 1
            ones = sorted(e[3] for e in resp0 if e[4] == 1)
            sentAt = {e[1]: e[3] for e in events if e[0] == "sent" and e[2] == 0}
            waited = [e[3] - sentAt[e[1]] for e in resp0 if e[4] == 1 and e[1] in sentAt]
            eofs = sum(1 for e in events if e[0] in ("eof", "error"))
            rows.append([
                transport, f"{ready}", f"{max(sent0) - min(sent0):.2f}",
                f"{percentile(waited, 0.0):.2f}/{percentile(waited, 0.5):.2f}/{max(waited):.2f}" if waited else "-",
                f"{ones[-1] - ones[0]:.2f}" if ones else "-",
                f"{max(sent1) - ones[0]:.2f}" if ones and sent1 else "-",
                f"{allResent - ones[0] + quiet:.1f}" if ones else "-",
                " ".join(f"{s}:{c}" for s, c in sorted(statuses.items())) + (f" eof/err:{eofs}" if eofs else ""),
                f"{cpu:.1f}",
            ])
            log(" | ".join(rows[-1]))
            log(f"client errors: {loadgen.errors()}; last: {loadgen.lastError()}")
        except Exception as e:
            log(f"storm {transport}: FAILED {type(e).__name__}: {e}")
            rows.append([transport, f"{args.n}", f"FAILED: {str(e)[:200]}"] + [""] * 6)
        finally:
            if loadgen:
                loadgen.stop()
            server.stop()
    print(f"\n## storm: N devices Ping together with HeartbeatInterval {args.storm_heartbeat}; "
          "times from the first Status 1 answer")
    printTable(["transport", "N", "Ping burst s", "answer after s min/p50/max", "first->last Status 1 s",
                "first answer->last re-Ping sent s", "->server quiet s", "first-round statuses",
                "server CPU s (expiry+re-Ping)"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("scenario", choices=["idle", "latency", "storm"])
    parser.add_argument("--transports", default="tls,tcp", help="tls and/or tcp, comma-separated")
    parser.add_argument("--servers", default="floor,directpush", help="idle: floor and/or directpush")
    parser.add_argument("--max-n", type=int, default=18000, help="idle: the last (largest) step")
    parser.add_argument("--ns", default=None, help="idle: N steps, comma-separated (default 1000,10000,MAX_N)")
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--heartbeat", type=int, default=1800,
                        help="HeartbeatInterval of idle and latency Pings (long enough not to expire during the run)")
    parser.add_argument("--n", type=int, default=10000, help="latency, storm: devices")
    parser.add_argument("--rate", type=float, default=20, help="latency: deliveries per second")
    parser.add_argument("--seconds", type=float, default=30, help="latency: seconds of deliveries")
    parser.add_argument("--drain", type=float, default=15, help="latency: seconds to wait for answers afterwards")
    parser.add_argument("--storm-heartbeat", type=int, default=60)
    parser.add_argument("--devices-per-user", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=200, help="devices in setup at once (all workers)")
    parser.add_argument("--setup-timeout", type=float, default=120, help="seconds for one device's setup")
    parser.add_argument("--setup-limit", type=float, default=900, help="seconds for one setup step of all devices")
    parser.add_argument("--server-arg", action="append", default=[], help="extra twistd directpush argument")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for the whole run")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    args = parser.parse_args()
    if args.ns is None:
        args.ns = f"1000,10000,{args.max_n}"
    hard = load.raiseNoFile()
    signal.signal(signal.SIGALRM, onAlarm)
    signal.alarm(int(args.timeout))
    root = tempfile.mkdtemp(prefix="directpush-push-")
    print(f"# directpush Direct Push bench: {args.scenario}; {os.cpu_count()} CPUs, open files hard limit {hard}, "
          f"Python {sys.version.split()[0]}; load: {args.workers} asyncio processes")
    try:
        {"idle": runIdle, "latency": runLatency, "storm": runStorm}[args.scenario](args, root)
    finally:
        signal.alarm(0)
        if args.keep:
            print(f"# kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
