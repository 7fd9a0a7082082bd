"""The network guard: what QEMU's user-mode network may reach from the host's sockets.

A `nat` sandbox's traffic leaves through sockets the QEMU process opens on the host, so host
firewall rules on QEMU's user (libvirt's qemu.conf `user`) apply to everything a guest sends.
One nftables table, `inet fluid_guard`, holds fluid's rules for that user, in this order:

1. The host's DNS resolvers (the `nameserver` lines of /etc/resolv.conf) are accepted on port
   53: QEMU's built-in DNS (10.0.2.3 in the guest) forwards to them from the QEMU process,
   and they are often private addresses (this kind of machine uses 10.255.255.53).
2. Loopback: every *new* connection over `lo` is rejected. SLIRP maps the guest's 10.0.2.2
   to the host's 127.0.0.1, where fluid's own services listen (the Prefect API, databases),
   and every other sandbox's SSH forward listens there too; the forwards still work because
   those connections come from the host side. The host's own addresses go over `lo` as well.
3. FLUID_EGRESS_ALLOW (CIDRs, e.g. an internal package mirror) is accepted. It cannot open
   loopback, which is rejected before it.
4. Link-local (169.254.0.0/16, the cloud metadata service; fe80::/10), RFC 1918, CGNAT
   (100.64.0.0/10), unique-local IPv6 (fc00::/7) and multicast are rejected: a sandbox must
   not reach the host's private networks. Public addresses (the Debian mirror) stay open.

`ensure_guard` runs before every QEMU start: it reads the installed table back (`nft -j`),
compares it rule for rule with the one these settings call for, and replaces it in one
atomic nftables transaction when it is missing or differs (an `nft flush ruleset`, a host
reboot, another allow-list). The table is host-wide: fluid processes on one host should
share FLUID_EGRESS_ALLOW, or each start puts its own list in place.
"""

from __future__ import annotations

import grp
import ipaddress
import json
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.errors import FluidError
from infra.settings import FluidSettings, get_settings

TABLE = "fluid_guard"
CHAIN = "output"
RESOLV_CONF = Path("/etc/resolv.conf")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")

# Destinations a sandbox must not reach unless FLUID_EGRESS_ALLOW names them.
PRIVATE_V4 = (
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
)
PRIVATE_V6 = ("fc00::/7", "fe80::/10", "ff00::/8")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class GuardUnavailable(FluidError):
    """The host firewall rules that isolate sandboxes cannot be installed."""


def _qemu_conf(key: str) -> str | None:
    if QEMU_CONF.exists():
        m = re.search(rf'^\s*{key}\s*=\s*"([^"]+)"', QEMU_CONF.read_text(), re.MULTILINE)
        if m:
            return m.group(1)
    return None


def qemu_user() -> str:
    """The user libvirt runs QEMU as (qemu.conf `user`, Debian's default libvirt-qemu)."""
    return _qemu_conf("user") or "libvirt-qemu"


def qemu_uid() -> int:
    """QEMU's uid; GuardUnavailable when that user does not exist or is root."""
    user = qemu_user()
    try:
        uid = int(user[1:]) if user.startswith("+") else pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError) as e:
        raise GuardUnavailable(f"QEMU user {user!r} does not exist; is libvirt installed?") from e
    if uid == 0:
        raise GuardUnavailable(
            "libvirt runs QEMU as root (qemu.conf user=root): the network guard cannot tell "
            "QEMU from fluid. Run QEMU as an unprivileged user (Debian's default)."
        )
    return uid


def qemu_gid() -> int:
    """The group libvirt runs QEMU as (qemu.conf `group`, else the QEMU user's own group)."""
    group = _qemu_conf("group")
    try:
        if group is None:
            try:
                return grp.getgrnam(qemu_user()).gr_gid  # Debian's default group
            except KeyError:
                return pwd.getpwnam(qemu_user()).pw_gid
        return int(group[1:]) if group.startswith("+") else grp.getgrnam(group).gr_gid
    except (KeyError, ValueError) as e:
        raise GuardUnavailable(
            f"QEMU's group {group or qemu_user()!r} does not exist; is libvirt installed?"
        ) from e


def nameservers(resolv_conf: Path = RESOLV_CONF) -> list[Network]:
    """The host's DNS resolvers, which QEMU's DNS forwarder must reach."""
    found: list[Network] = []
    try:
        text = resolv_conf.read_text()
    except OSError:
        return found
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                found.append(ipaddress.ip_network(parts[1].split("%")[0]))
            except ValueError:
                continue
    return found


@dataclass(frozen=True)
class Rule:
    """One rule of fluid's chain, in the terms fluid writes it and reads it back."""

    verdict: str  # accept | reject
    uid: int
    loopback: bool = False  # oifname "lo" ... ct state new
    family: str | None = None  # ip | ip6, with daddr
    daddr: tuple[str, ...] = ()
    dns: bool = False  # meta l4proto { tcp, udp } th dport 53

    def text(self) -> str:
        words = []
        if self.loopback:
            words.append('oifname "lo"')
        words.append(f"meta skuid {self.uid}")
        if self.family:
            words.append(f"{self.family} daddr {{ {', '.join(self.daddr)} }}")
        if self.dns:
            words.append("meta l4proto { tcp, udp } th dport 53")
        if self.loopback:
            words.append("ct state new")
        if self.verdict == "reject":
            words.append("counter")
        words.append(self.verdict)
        return " ".join(words)


def _collapse(nets: list[Network], version: int) -> tuple[str, ...]:
    same = [n for n in nets if n.version == version]
    return tuple(str(n) for n in ipaddress.collapse_addresses(same))  # type: ignore[arg-type]


def rules(settings: FluidSettings | None = None) -> list[Rule]:
    """The rules fluid's chain must hold for these settings, in order."""
    settings = settings or get_settings()
    uid = qemu_uid()
    out: list[Rule] = []
    dns = nameservers()
    allow = settings.egress_networks()
    for family, version in (("ip", 4), ("ip6", 6)):
        if servers := _collapse(dns, version):
            out.append(Rule("accept", uid, family=family, daddr=servers, dns=True))
    out.append(Rule("reject", uid, loopback=True))
    for family, version in (("ip", 4), ("ip6", 6)):
        if allowed := _collapse(allow, version):
            out.append(Rule("accept", uid, family=family, daddr=allowed))
    v4 = [ipaddress.ip_network(n) for n in PRIVATE_V4]
    v6 = [ipaddress.ip_network(n) for n in PRIVATE_V6]
    out.append(Rule("reject", uid, family="ip", daddr=_collapse(v4, 4)))  # type: ignore[arg-type]
    out.append(Rule("reject", uid, family="ip6", daddr=_collapse(v6, 6)))  # type: ignore[arg-type]
    return out


def ruleset(settings: FluidSettings | None = None) -> str:
    """nftables input that replaces fluid's table in one transaction (never a moment without)."""
    body = "\n".join(f"    {r.text()}" for r in rules(settings))
    return (
        f"table inet {TABLE}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        f"  chain {CHAIN} {{\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"{body}\n"
        "  }\n"
        "}\n"
    )


def _nft() -> str:
    nft = shutil.which("nft")
    if not nft:
        raise GuardUnavailable("nftables (`nft`) is not installed: run scripts/setup-host.sh")
    return nft


def _addresses(right: Any) -> tuple[str, ...] | None:
    items = right["set"] if isinstance(right, dict) and "set" in right else [right]
    nets: list[Network] = []
    for item in items:
        if isinstance(item, str):
            nets.append(ipaddress.ip_network(item))
        elif isinstance(item, dict) and "prefix" in item:
            p = item["prefix"]
            nets.append(ipaddress.ip_network(f"{p['addr']}/{p['len']}"))
        elif isinstance(item, dict) and "range" in item:
            lo, hi = (ipaddress.ip_address(a) for a in item["range"])
            nets.extend(ipaddress.summarize_address_range(lo, hi))  # type: ignore[arg-type]
        else:
            return None
    if not nets:
        return None
    return _collapse(nets, nets[0].version)


def _parse_rule(expr: list[dict]) -> Rule | None:
    """A rule read back from `nft -j`, or None when it is not one fluid writes."""
    fields: dict[str, Any] = {}
    for e in expr:
        if "counter" in e:
            continue
        if "accept" in e or "reject" in e:
            fields["verdict"] = "accept" if "accept" in e else "reject"
            continue
        m = e.get("match")
        if not m or m.get("op") not in ("==", "in"):
            return None
        left, right = m["left"], m["right"]
        key = left.get("meta", {}).get("key") or left.get("ct", {}).get("key")
        payload = left.get("payload", {})
        if key == "skuid" and isinstance(right, int):
            fields["uid"] = right
        elif key == "oifname" and right == "lo":
            fields["oif"] = True
        elif key == "state" and right in ("new", ["new"]):
            fields["ct_new"] = True
        elif key == "l4proto" and right == {"set": ["tcp", "udp"]}:
            fields["l4"] = True
        elif payload.get("protocol") == "th" and payload.get("field") == "dport" and right == 53:
            fields["dport"] = True
        elif payload.get("protocol") in ("ip", "ip6") and payload.get("field") == "daddr":
            addrs = _addresses(right)
            if addrs is None:
                return None
            fields["family"], fields["daddr"] = payload["protocol"], addrs
        else:
            return None
    if "verdict" not in fields or "uid" not in fields:
        return None
    if fields.get("oif") != fields.get("ct_new") or fields.get("l4") != fields.get("dport"):
        return None
    return Rule(
        fields["verdict"],
        fields["uid"],
        loopback=bool(fields.get("oif")),
        family=fields.get("family"),
        daddr=fields.get("daddr", ()),
        dns=bool(fields.get("l4")),
    )


def check(settings: FluidSettings | None = None) -> list[str]:
    """What is wrong with the installed guard (empty when it is in place as it should be)."""
    want = rules(settings)
    r = subprocess.run(
        [_nft(), "-j", "list", "table", "inet", TABLE], capture_output=True, text=True
    )
    if r.returncode != 0:
        return [f"table inet {TABLE} is not loaded"]
    try:
        items = json.loads(r.stdout)["nftables"]
    except (ValueError, KeyError):
        return [f"`nft -j list table inet {TABLE}` printed no JSON"]
    chains = [i["chain"] for i in items if "chain" in i]
    got = [i["rule"] for i in items if "rule" in i]
    problems = []
    if [c.get("name") for c in chains] != [CHAIN]:
        problems.append(f"the table has chains {[c.get('name') for c in chains]}, not [{CHAIN!r}]")
    for c in chains:
        hook = (c.get("type"), c.get("hook"), c.get("prio"), c.get("policy"))
        if hook != ("filter", "output", 0, "accept"):
            problems.append(f"chain {c.get('name')!r} is {hook}, not a filter on the output hook")
    parsed = [_parse_rule(g.get("expr", [])) for g in got if g.get("chain") == CHAIN]
    for i, (have, need) in enumerate(zip(parsed, want, strict=False)):
        if have is None:
            problems.append(f"rule {i + 1} is not one fluid writes")
        elif have.uid != need.uid:
            problems.append(f"rule {i + 1} is for uid {have.uid}, not QEMU's uid {need.uid}")
        elif have != need:
            problems.append(f"rule {i + 1} is `{have.text()}`, not `{need.text()}`")
    if len(parsed) != len(want):
        problems.append(f"the chain has {len(parsed)} rules, not {len(want)}")
    return problems


def guard_installed(settings: FluidSettings | None = None) -> bool:
    """True when fluid's table is loaded exactly as these settings call for."""
    return not check(settings)


def ensure_guard(settings: FluidSettings | None = None) -> None:
    """Verify the guard before a QEMU start; (re)install it when missing or wrong.

    GuardUnavailable when it cannot be put in place: QEMU must not start without it.
    """
    settings = settings or get_settings()
    if not check(settings):
        return
    r = subprocess.run([_nft(), "-f", "-"], input=ruleset(settings), capture_output=True, text=True)
    if r.returncode != 0:
        raise GuardUnavailable(f"cannot install the nftables guard: {r.stderr.strip()}")
    if problems := check(settings):
        raise GuardUnavailable(
            f"the nftables guard does not read back as installed: {'; '.join(problems)}"
        )


def remove_guard() -> None:
    """Remove the guard table (host teardown only)."""
    subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)
