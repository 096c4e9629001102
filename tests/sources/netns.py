"""A veth pair with one end in a network namespace of its own, and UDP traffic across it.

Addresses come from 198.51.100.0/24 (a documentation range): one free /30
per pair, so concurrent test runs do not collide. (192.0.2.0/24 is not used
on the host side: this machine's own uplink sits in it.) IPv6 is off on both
ends and the neighbours are static, so the only packets on the link are the
ones a test sends (no router solicitations, no ARP).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

SUBNET_BASE = "198.51.100."
PREFIX = 30
SUBNETS = 64


def run(*argv: str) -> str:
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return done.stdout


@dataclass
class VethPair:
    """``host`` lives in this namespace, ``peer`` in namespace ``netns``."""

    netns: str
    host: str
    peer: str
    host_index: int
    host_mac: str
    peer_mac: str
    host_ip: str
    peer_ip: str

    def in_netns(self, *argv: str) -> str:
        return run("ip", "netns", "exec", self.netns, *argv)


def _mac(path: Path) -> str:
    return path.read_text().strip()


def _free_subnet(start: int) -> tuple[str, str]:
    """Host and peer address of a /30 in 198.51.100.0/24 that no interface here uses."""
    in_use = run("ip", "-4", "-o", "addr", "show")
    for step in range(SUBNETS):
        base = 4 * ((start + step) % SUBNETS)
        host, peer = f"{SUBNET_BASE}{base + 1}", f"{SUBNET_BASE}{base + 2}"
        if f" {host}/" not in in_use and f" {peer}/" not in in_use:
            return host, peer
    raise RuntimeError("no free /30 left in 198.51.100.0/24")


def create(tag: int) -> VethPair:
    """Namespace ``ebcap-<tag>`` and veth ``ebh<tag>`` (here) <-> ``ebn<tag>`` (there)."""
    netns, host, peer = f"ebcap-{tag}", f"ebh{tag}", f"ebn{tag}"
    host_ip, peer_ip = _free_subnet(tag)
    run("ip", "netns", "add", netns)
    try:
        for key in ("all", "default"):
            run(
                "ip", "netns", "exec", netns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"
            )
        run("ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", netns)
        Path(f"/proc/sys/net/ipv6/conf/{host}/disable_ipv6").write_text("1")
        run("ip", "addr", "add", f"{host_ip}/{PREFIX}", "dev", host)
        run("ip", "-n", netns, "addr", "add", f"{peer_ip}/{PREFIX}", "dev", peer)
        host_mac = _mac(Path(f"/sys/class/net/{host}/address"))
        peer_mac = run(
            "ip", "netns", "exec", netns, "cat", f"/sys/class/net/{peer}/address"
        ).strip()
        run("ip", "neigh", "replace", peer_ip, "lladdr", peer_mac, "dev", host, "nud", "permanent")
        run(
            "ip", "-n", netns, "neigh", "replace", host_ip, "lladdr", host_mac,
            "dev", peer, "nud", "permanent",
        )  # fmt: skip
        run("ip", "link", "set", host, "up")
        run("ip", "-n", netns, "link", "set", peer, "up")
        run("ip", "-n", netns, "link", "set", "lo", "up")
        index = int(Path(f"/sys/class/net/{host}/ifindex").read_text())
    except BaseException:
        destroy(netns, host)
        raise
    return VethPair(netns, host, peer, index, host_mac, peer_mac, host_ip, peer_ip)


def destroy(netns: str, host: str) -> None:
    subprocess.run(["ip", "link", "del", host], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


def netns_exists(netns: str) -> bool:
    return netns in run("ip", "netns", "list").split()


def payload(index: int, size: int) -> bytes:
    """The known bytes of datagram ``index``."""
    return bytes((index * 7 + k) % 256 for k in range(size))


_SENDER = textwrap.dedent(
    """
    import json, socket, sys
    spec = json.loads(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((spec["src"], spec["sport"]))
    for i, size in enumerate(spec["sizes"]):
        s.sendto(bytes((i * 7 + k) % 256 for k in range(size)), (spec["dst"], spec["dport"]))
    """
)


def send_udp(
    netns: str | None, src: str, dst: str, sport: int, dport: int, sizes: list[int]
) -> None:
    """Send one datagram per size from ``src:sport`` (inside ``netns`` when given)."""
    spec = json.dumps({"src": src, "dst": dst, "sport": sport, "dport": dport, "sizes": sizes})
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, sys.executable, "-c", _SENDER, spec], check=True)
    time.sleep(0.05)
