# -*- test-case-name: tests.test_backend_imap -*-
"""
A private Dovecot for the IMAP tests: its own configuration, runtime
directory, users file and maildirs under a temporary directory, listening
on 127.0.0.1 on a free port (plain IMAP, and implicit TLS when asked).

Dovecot refuses to serve mail as root, so mail belongs to C{nobody}, and
the directories are made reachable to Dovecot's own users. Without
Dovecot installed the tests that need it skip, unless the environment
variable C{CI} is set: CI must run them, so there they fail instead.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
LDA = "/usr/lib/dovecot/dovecot-lda"

#: Why the tests skip, or None when they can run.
MISSING: Optional[str] = None
if not os.path.exists(DOVECOT) or not os.path.exists("/usr/lib/dovecot/imap"):
    MISSING = "Dovecot is not installed (apt-get install dovecot-imapd)"
elif os.geteuid() != 0:
    MISSING = "the Dovecot tests run as root (Dovecot switches to the mail user)"

if MISSING is not None and "CI" in os.environ:
    # CI must run these tests: make every one of them fail, not skip.
    SKIP: Optional[str] = None
else:
    SKIP = MISSING

_MAILBOXES = """
  mailbox Drafts {
    special_use = \\Drafts
    auto = create
  }
  mailbox Sent {
    special_use = \\Sent
    auto = create
  }
  mailbox "Deleted Messages" {
    special_use = \\Trash
    auto = create
  }
  mailbox Junk {
    special_use = \\Junk
    auto = create
  }
  mailbox Archives {
    special_use = \\Archive
    auto = create
  }
"""

_CONFIG = """
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
verbose_proctitle = yes
ssl = {ssl}
{sslFiles}
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 1
mail_privileged_group =
default_internal_user = dovecot
default_login_user = dovenull
mail_max_userip_connections = 100000
imap_idle_notify_interval = 2 mins
mailbox_idle_check_interval = 1 secs
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
  prefix =
{mailboxes}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tlsPort}
    ssl = yes
  }}
  process_min_avail = 1
  service_count = 0
  client_limit = 5000
  process_limit = 4
}}
service imap {{
  process_limit = 5000
  client_limit = {imapClientLimit}
}}
service auth {{
  client_limit = 10000
}}
service anvil {{
  client_limit = 20000
}}
default_process_limit = 5000
default_client_limit = 20000
protocol lda {{
  postmaster_address = postmaster@example.org
}}
"""


def _dieWithParent() -> None:
    """
    In the child before exec: have the kernel send Dovecot's master
    SIGTERM (which stops all of Dovecot) if the test process dies without
    cleaning up (killed, timed out).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 nobody listens on right now, below the
    ephemeral range (so that outgoing connections of other programs do
    not take it before Dovecot binds it).
    """
    low, high = 20000, 32000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first = int(f.read().split()[0])
        high = min(high, first)
        low = min(low, high - 2000)
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(100):
        port = random.randrange(low, high)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port found")


class Dovecot:
    """
    One private Dovecot process.

    @ivar port: its plain IMAP port on 127.0.0.1.
    @ivar tlsPort: its implicit-TLS IMAP port (when started with a
        certificate), or 0.
    """

    def __init__(
        self,
        specialUse: bool = True,
        certificate: Optional[str] = None,
        key: Optional[str] = None,
        imapClientLimit: int = 1,
    ) -> None:
        """
        @param imapClientLimit: C{client_limit} of C{service imap}. While
            C{service_count} keeps Dovecot's default of 1 for imap, each
            connection still gets a process of its own, as in most
            deployments; the process title (C{verbose_proctitle}) shows its
            user and the command it runs, C{IDLE} for an idling connection.
        """
        self.specialUse = specialUse
        self.imapClientLimit = imapClientLimit
        self.base = tempfile.mkdtemp(prefix="directpush-dovecot-")
        os.chmod(self.base, 0o755)
        self.mail = pwd.getpwnam("nobody")
        self.users: Dict[str, str] = {}
        self.generation = 0
        self.certificate = certificate
        self.key = key
        self.port = 0
        self.tlsPort = 0
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.config = os.path.join(self.base, "dovecot.conf")
        self._writePasswd()

    def home(self, user: str) -> str:
        """
        The user's home now: C{home/USER} is a symbolic link that
        L{reset} points elsewhere, which gives fresh mailboxes without a
        restart.
        """
        return os.path.join(self.base, f"home{self.generation}", user)

    def _writePasswd(self) -> None:
        path = os.path.join(self.base, "passwd")
        lines = [f"{u}:{{PLAIN}}{p}" for u, p in sorted(self.users.items())]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    def addUser(self, user: str, password: str) -> None:
        """
        Add (or change) a user with an empty mailbox.
        """
        self.users[user] = password
        home = self.home(user)
        os.makedirs(home, exist_ok=True)
        for d in (os.path.dirname(home), home):
            os.chown(d, self.mail.pw_uid, self.mail.pw_gid)
        links = os.path.join(self.base, "home")
        os.makedirs(links, exist_ok=True)
        link = os.path.join(links, user)
        tmp = link + ".new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(home, tmp)
        os.replace(tmp, link)
        self._writePasswd()

    def reset(self) -> None:
        """
        Give every user a fresh, empty mailbox (a new home directory).
        """
        self.generation += 1
        for user, password in list(self.users.items()):
            self.addUser(user, password)

    def start(self) -> None:
        """
        Write the configuration and start Dovecot; return once it accepts
        connections.
        """
        self.port = freePort()
        sslFiles = ""
        if self.certificate:
            self.tlsPort = freePort()
            sslFiles = f"ssl_cert = <{self.certificate}\nssl_key = <{self.key}"
        with open(self.config, "w") as f:
            f.write(
                _CONFIG.format(
                    base=self.base,
                    port=self.port,
                    tlsPort=self.tlsPort,
                    ssl="yes" if self.certificate else "no",
                    sslFiles=sslFiles,
                    uid=self.mail.pw_uid,
                    gid=self.mail.pw_gid,
                    mailboxes=_MAILBOXES if self.specialUse else "",
                    imapClientLimit=self.imapClientLimit,
                )
            )
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", self.config],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_dieWithParent,
        )
        ports = [self.port] + ([self.tlsPort] if self.tlsPort else [])
        deadline = time.monotonic() + 15
        for port in ports:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError("dovecot exited: " + self.process.stderr.read().decode(errors="replace") + self.log())
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("dovecot did not start listening:\n" + self.log())
                    # a subprocess starting up: nothing to drive but wall time
                    time.sleep(0.02)

    def log(self) -> str:
        try:
            with open(os.path.join(self.base, "dovecot.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """
        Stop Dovecot and every process it started; wait for them to go.
        """
        process, self.process = self.process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        # children (imap, auth, ...) share the process group
        for _ in range(200):
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process.stderr is not None:
            process.stderr.close()

    def restart(self) -> None:
        """
        Stop and start again on the same ports.
        """
        ports = (self.port, self.tlsPort)
        self.stop()
        # same configuration file, same ports
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", self.config],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_dieWithParent,
        )
        deadline = time.monotonic() + 15
        for port in [p for p in ports if p]:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError("dovecot did not restart:\n" + self.log())
                    time.sleep(0.02)

    def deliver(self, user: str, raw: bytes, folder: Optional[str] = None) -> None:
        """
        Deliver C{raw} with Dovecot's LDA, as an MTA would.
        """
        args = [LDA, "-c", self.config, "-d", user, "-f", "sender@example.net"]
        if folder:
            args += ["-m", folder]
        subprocess.run(args, input=raw, check=True, capture_output=True, timeout=30)

    def cleanup(self) -> None:
        """
        Stop Dovecot and remove its directory.
        """
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def removeAll(paths: List[str]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
