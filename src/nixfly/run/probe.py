"""What a running container listens on, read from ``/proc`` on the host, and what that means on Fly.

A container started by ``nixfly run`` shares this machine's network, so ``/proc/<pid>/net/tcp{,6}`` lists
every socket of the host: the container's own are the ones whose inode one of its processes holds open
(``/proc/<pid>/fd/*`` → ``socket:[inode]``). :func:`listeners` joins the two.

:func:`address_problems` applies flyctl's rule (``internal/command/deploy/machines_deploymachinesapp.go``,
``waitForExpectedListenAddresses``): every TCP service's ``internal_port`` must have a listener on a
non-loopback address, because fly-proxy reaches the machine over its network interface; a socket bound to
127.0.0.1 or ::1 is out of its reach.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
_SOCKET = re.compile(r"socket:\[(\d+)\]")


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket held by one of the container's processes."""

    host: str  # "0.0.0.0", "127.0.0.1", "::", …
    port: int
    pid: int
    command: str

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _hex_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` (IPv4) or 32 hex digits (IPv6), each 32-bit word in host (little-endian) order."""
    addr, _, port = text.partition(":")
    raw = bytes.fromhex(addr)
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(swapped)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def listening_inodes(proc_net: Path) -> dict[int, tuple[str, int]]:
    """inode → (host, port) of every listening socket in ``proc_net``/tcp and tcp6."""
    out: dict[int, tuple[str, int]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == _LISTEN:
                with contextlib.suppress(ValueError):
                    out[int(cols[9])] = _hex_address(cols[1])
    return out


def _socket_inodes(pid: int) -> set[int]:
    found: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return found
    for fd in names:
        with contextlib.suppress(OSError):
            m = _SOCKET.fullmatch(os.readlink(f"{fd_dir}/{fd}"))
            if m:
                found.add(int(m.group(1)))
    return found


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    return " ".join(words)[:120] or "?"


def listeners(pids: Iterable[int]) -> list[Listener]:
    """The listening TCP sockets the processes ``pids`` hold, sorted by port then address."""
    pids = list(pids)
    if not pids:
        return []
    table = listening_inodes(Path(f"/proc/{pids[0]}/net"))
    out: set[Listener] = set()
    for pid in pids:
        for inode in _socket_inodes(pid):
            if inode in table:
                host, port = table[inode]
                out.add(Listener(host, port, pid, _command(pid)))
    return sorted(out, key=lambda x: (x.port, x.host, x.pid))


def host_listeners_on(port: int) -> list[str]:
    """Addresses something on this machine already listens on at ``port`` (any process)."""
    return sorted(f"{h}:{p}" for h, p in listening_inodes(Path("/proc/self/net")).values() if p == port)


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (read from /proc/*/stat), parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may itself contain spaces or parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return out


def _pid_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def container_pids(runtime_pid: int) -> list[int]:
    """The processes of the container started under ``runtime_pid``: those below it in another PID
    namespace than ours (the runtime's own processes, runc, bwrap and nixfly's stage, are in ours)."""
    ours = _pid_ns("self")
    return [p for p in descendants(runtime_pid) if (ns := _pid_ns(p)) is not None and ns != ours]


def expected_ports(machine_config: dict[str, object]) -> list[int]:
    """The ``internal_port`` of every TCP service of a MachineConfig (what fly-proxy connects to)."""
    ports: set[int] = set()
    services = machine_config.get("services")
    for svc in services if isinstance(services, list) else []:
        if isinstance(svc, dict) and svc.get("protocol", "tcp") == "tcp" and isinstance(svc.get("internal_port"), int):
            ports.add(svc["internal_port"])
    return sorted(ports)


def address_problems(expected: Sequence[int], found: Sequence[Listener]) -> list[str]:
    """One line per expected port no non-loopback listener covers, naming what was found instead."""
    problems = []
    for port in expected:
        if any(x.port == port and not x.loopback for x in found):
            continue
        on_port = [x.address for x in found if x.port == port]
        want = f"fly.toml expects 0.0.0.0:{port} (internal_port = {port})"
        if on_port:
            problems.append(
                f"the app listens on {', '.join(on_port)} only: fly-proxy cannot reach a loopback address; {want}"
            )
        elif found:
            others = ", ".join(sorted({x.address for x in found}))
            problems.append(f"the app listens on {others}, not on port {port}: {want}")
        else:
            problems.append(f"the app listens on no TCP port: {want}")
    return problems
