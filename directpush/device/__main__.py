"""
The push tester: C{python -m directpush.device --server HOST:PORT --user NAME}.

Sets up a device on the account, syncs the Inbox and keeps a Direct Push
Ping going with the adaptive heartbeat, printing one JSON object per line
for each event until stopped (SIGINT or SIGTERM). With
C{--carrier-idle-timeout S} it runs the carrier simulator in this process
on 127.0.0.1, between itself and the server, to show what a network that
silently cuts idle connections after S seconds does to push.
"""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any, Callable, List, Optional, TextIO, Tuple

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.python import usage

from .carrier import CarrierRelay
from .client import Device, Event, HTTPTransport, makeAgent
from .heartbeat import Heartbeat


class Options(usage.Options):
    synopsis = "python -m directpush.device --server HOST:PORT --user NAME [options]"
    longdesc = (
        "The push tester: sets up a device on the account, syncs the Inbox and "
        "keeps a Direct Push Ping going with the adaptive heartbeat, printing one "
        "JSON object per line for each event until stopped (Ctrl-C). With "
        "--carrier-idle-timeout S a simulated carrier between it and the server "
        "silently cuts connections idle for S seconds."
    )
    optParameters = [
        ["server", None, None, "The server, as HOST:PORT (HTTPS)."],
        ["user", None, None, "The account name."],
        ["password-file", None, None, "File whose first line is the password (else it is asked for)."],
        ["ca-file", None, None, "PEM file of the authority (or the self-signed certificate) to trust."],
        ["carrier-idle-timeout", None, None, "Relay through a simulated carrier that silently cuts connections idle this many seconds."],
        ["initial-heartbeat", None, "900", "First Ping heartbeat, in seconds."],
        ["min-heartbeat", None, "480", "Shortest heartbeat, in seconds (the fall-back after a drop)."],
        ["max-heartbeat", None, "1680", "Longest heartbeat, in seconds."],
        ["heartbeat-step", None, "240", "How much a clean expiry adds to the heartbeat, in seconds."],
        ["ping-grace", None, "30", "Seconds past the heartbeat after which a Ping counts as dropped."],
        ["device-id", None, "directpushtester", "The DeviceId to use."],
    ]
    optFlags = [["insecure", None, "Do not check the server's certificate."]]

    def postOptions(self) -> None:
        if not self["server"] or not self["user"]:
            raise usage.UsageError("--server and --user are required")
        host, sep, port = self["server"].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise usage.UsageError("--server must be HOST:PORT")
        self["host"], self["port"] = host.strip("[]"), int(port)
        if self["insecure"] and self["ca-file"]:
            raise usage.UsageError("--insecure and --ca-file exclude each other")
        for name in ("initial-heartbeat", "min-heartbeat", "max-heartbeat", "heartbeat-step"):
            value = str(self[name])
            if not value.isdigit() or int(value) < 1:
                raise usage.UsageError(f"--{name} must be a positive whole number of seconds")
            self[name] = int(value)
        if self["min-heartbeat"] > self["max-heartbeat"]:
            raise usage.UsageError("--min-heartbeat must not exceed --max-heartbeat")
        for name in ("carrier-idle-timeout", "ping-grace"):
            if self[name] is not None:
                try:
                    self[name] = float(self[name])
                except ValueError:
                    raise usage.UsageError(f"--{name} must be a number of seconds")
                if self[name] <= 0:
                    raise usage.UsageError(f"--{name} must be positive")


def readPassword(options: Options) -> str:
    """
    The password: the first line of --password-file, else asked for.
    """
    if options["password-file"]:
        with open(options["password-file"], encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    return getpass.getpass(f"Password for {options['user']}: ")


def printer(out: TextIO) -> Any:
    def emit(event: Event) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    return emit


def main(argv: Optional[List[str]] = None, out: TextIO = sys.stdout) -> int:
    """
    The command: parse, read the password, then run L{run} under
    L{react}, which hands it the reactor and stops on SIGINT or SIGTERM.
    """
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write(f"{options.synopsis}\n{e}\n")
        return 2
    try:
        password = readPassword(options)
    except (OSError, EOFError) as e:
        sys.stderr.write(f"cannot read the password: {e}\n")
        return 2
    from twisted.internet.task import react

    react(lambda reactor: Deferred.fromCoroutine(run(reactor, options, password, printer(out))))
    return 0


async def run(reactor: Any, options: Options, password: str, emit: Callable[[Event], None]) -> None:
    """
    Set up the carrier relay (if asked for) and the device, and push until
    the reactor stops.
    """
    host, port = options["host"], options["port"]
    connectTo: Optional[Tuple[str, int]] = None
    carrier: Optional[CarrierRelay] = None
    if options["carrier-idle-timeout"] is not None:
        carrier = CarrierRelay(endpoints.HostnameEndpoint(reactor, host, port), reactor, options["carrier-idle-timeout"])
        listening = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(carrier)
        connectTo = ("127.0.0.1", listening.getHost().port)
        emit({"event": "carrier", "idle-timeout": options["carrier-idle-timeout"], "port": connectTo[1]})
    agent = makeAgent(reactor, caFile=options["ca-file"], insecure=options["insecure"], connectTo=connectTo)
    base = f"https://{host}:{port}/Microsoft-Server-ActiveSync".encode()
    transport = HTTPTransport(agent, base, options["user"], password)
    heartbeat = Heartbeat.create(
        options["initial-heartbeat"], options["min-heartbeat"], options["max-heartbeat"], options["heartbeat-step"]
    )
    device = Device(
        transport.request,
        reactor,
        heartbeat,
        emit,
        user=options["user"],
        deviceId=options["device-id"],
        pingGrace=options["ping-grace"],
    )

    def shutdown() -> None:
        device.stop()
        if carrier is not None:
            carrier.abortAll()

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    await device.run()


if __name__ == "__main__":
    sys.exit(main())
