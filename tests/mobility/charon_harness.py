"""Two strongSwan charon daemons in two network namespaces joined by a veth pair.

The harness behind tests/mobility/test_ipsec*.py. Each test gets namespaces and a veth
pair with names unique to it, and two charon processes, each with its own
strongswan.conf (``STRONGSWAN_CONF``), VICI socket, log file and a private ``/run``
(charon's pid file is compiled in as /var/run/charon.pid: two daemons on one host need
separate mount namespaces, ``unshare --mount``). Everything is removed on exit, also
when the test fails. ESP runs in user space through charon's kernel-libipsec plugin
(TUN), because the kernel here has no ESP transform.

Addresses: outer (IKE and ESP-in-UDP 4500) 10.199.<n>.1 and .2 on the veth; inner
(tunnelled, on each namespace's loopback) 10.198.<n>.1 and 10.198.<n>.2.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CHARON = Path("/usr/lib/ipsec/charon")
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")
# kernel-libipsec first: the first plugin that provides the kernel IPsec interface wins,
# and kernel-netlink provides one too (XFRM, which this kernel lacks).
PLUGINS = ("kernel-libipsec kernel-netlink socket-default vici random nonce aes sha1 sha2 "
           "hmac kdf gmp pem pkcs1 x509 pubkey")
_counter = itertools.count(1)


def missing_requirements() -> str | None:
    """Why this machine cannot run the charon tests, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN, charon)"
    if not CHARON.exists():
        return f"{CHARON} is missing: apt-get install strongswan-charon libcharon-extra-plugins"
    for plugin in ("kernel-libipsec", "vici"):
        if not (PLUGIN_DIR / f"libstrongswan-{plugin}.so").exists():
            return f"charon plugin {plugin} is missing: apt-get install libcharon-extra-plugins"
    for tool in ("ip", "ping", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install iproute2 iputils-ping util-linux"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (kernel-libipsec needs TUN)"
    probe = f"corprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def require_charon() -> None:
    """Skip the calling test when the machine lacks what it needs; fail under CI=true."""
    reason = missing_requirements()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the charon tests cannot run: {reason}")
    pytest.skip(f"charon tests need netns, TUN and strongSwan: {reason}")


def _run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True)


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0,
             interval_s: float = 0.05) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class Side:
    """One end: its namespace, addresses and charon."""

    netns: str
    outer: str
    inner: str
    vici_socket: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def exec(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a command in this side's namespace."""
        return subprocess.run(["ip", "netns", "exec", self.netns, *args],
                              capture_output=True, text=True, timeout=timeout_s)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Pair:
    """Two sides joined by a veth pair, each running charon."""

    initiator: Side
    responder: Side
    subnet: int


def _strongswan_conf(root: Path, side: Side) -> Path:
    conf = root / "strongswan.conf"
    conf.write_text(f"""charon {{
    load_modular = no
    load = {PLUGINS}
    install_virtual_ip = no
    retransmit_tries = 2
    retransmit_timeout = 1.0
    plugins {{
        vici {{
            socket = unix://{side.vici_socket}
        }}
    }}
    filelog {{
        main {{
            path = {side.log}
            time_format = %H:%M:%S
            default = 1
            ike = 2
            cfg = 2
            flush_line = yes
        }}
    }}
}}
""")
    return conf


def _start_charon(root: Path, side: Side) -> subprocess.Popen[bytes]:
    run_dir = root / "run"
    run_dir.mkdir()
    conf = _strongswan_conf(root, side)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "STRONGSWAN_CONF": str(conf)}
    # A private /run for charon.pid; the vici socket lives under root, outside /run.
    script = 'mount --bind "$1" /run && exec "$2"'
    with open(root / "stderr.txt", "wb") as stderr:  # the child keeps its own copy
        return subprocess.Popen(
            ["ip", "netns", "exec", side.netns, "unshare", "--mount", "--propagation",
             "private", "sh", "-c", script, "sh", str(run_dir), str(CHARON)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def charon_pair(root: Path) -> Iterator[Pair]:
    """Namespaces, veth, addresses and two running charons; all removed on exit."""
    require_charon()
    # Addresses live inside the namespaces, so only the names need to be unique.
    n = next(_counter) % 250 + 1
    tag = f"{os.getpid() % 100000}x{n}"
    sides = []
    for index, role in ((1, "i"), (2, "r")):
        side_root = root / role
        side_root.mkdir(parents=True)
        sides.append(Side(netns=f"cor{role}{tag}", outer=f"10.199.{n}.{index}",
                          inner=f"10.198.{n}.{index}", vici_socket=side_root / "charon.vici",
                          log=side_root / "charon.log"))
    initiator, responder = sides
    veth = (f"cv{tag}a", f"cv{tag}b")
    with ExitStack() as stack:
        for side in sides:
            _run("ip", "netns", "add", side.netns)
            stack.callback(subprocess.run, ["ip", "netns", "del", side.netns],
                           capture_output=True)
        _run("ip", "link", "add", veth[0], "netns", initiator.netns, "type", "veth",
             "peer", "name", veth[1], "netns", responder.netns)
        for side, dev in zip(sides, veth, strict=True):
            side.exec("ip", "link", "set", "lo", "up").check_returncode()
            side.exec("ip", "addr", "add", f"{side.inner}/32", "dev", "lo").check_returncode()
            side.exec("ip", "addr", "add", f"{side.outer}/24", "dev", dev).check_returncode()
            side.exec("ip", "link", "set", dev, "up").check_returncode()
        for side, role in ((initiator, "i"), (responder, "r")):
            side.process = _start_charon(root / role, side)
            stack.callback(_stop, side.process)
        for side in sides:
            process = side.process
            assert process is not None
            wait_for(lambda s=side, p=process: s.vici_socket.exists() or p.poll() is not None,
                     f"charon's VICI socket in {side.netns}")
            if process.poll() is not None:
                raise AssertionError(f"charon in {side.netns} exited {process.returncode}: "
                                     f"{side.log_text()[-2000:]}")
        yield Pair(initiator, responder, n)
