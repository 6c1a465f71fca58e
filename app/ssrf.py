"""Where a webhook may go: http(s) URLs whose host resolves to public addresses only (the SSRF guard).

Checked when a job is submitted (a 422 saying why) and again before every delivery, which then connects
to the very address it checked: a name whose DNS answer changes between the check and the connection
cannot lead the POST inside. Odd spellings of an address (`2130706433`, `0x7f.1`, `127.1`), user names in
the authority (`http://good.example@10.0.0.1/`), backslashes, spaces and control characters are refused
outright rather than interpreted. `Settings.webhook_allow` lists the hosts and CIDRs an admin allows
although they are internal (tests allow 127.0.0.1 for their receiver).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

# Cloud instance-metadata endpoints (AWS, ECS, GCP, Azure, Alibaba, Oracle): never, whatever they resolve to.
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
                            "instance-data.ec2.internal", "metadata.azure.internal"})
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192"))
INTERNAL_SUFFIXES = (".localhost", ".internal", ".local", ".localdomain", ".home.arpa")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")


class UnsafeUrl(ValueError):
    """The URL may not receive webhooks; the message says why, for the person who gave it."""


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to `address`, and name `host` in the Host header and TLS."""

    scheme: str
    host: str
    port: int
    path: str
    address: str

    def connect_url(self) -> str:
        ip = ipaddress.ip_address(self.address)
        where = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"{self.scheme}://{where}:{self.port}{self.path}"

    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the host name resolves to (IPv4 and IPv6), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in seen:
            seen.append(address)
    return seen


def _host_of(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of a well-formed http(s) URL, or UnsafeUrl."""
    if _FORBIDDEN.search(url):
        raise UnsafeUrl("callback_url must not contain spaces, control characters or backslashes")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrl("callback_url must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise UnsafeUrl("callback_url must not contain a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl("callback_url has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise UnsafeUrl("callback_url has an invalid port") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port, path


def _literal(host: str) -> IPAddress | None:
    """The address a host names literally; UnsafeUrl for numeric spellings other than a dotted quad."""
    if ":" in host:
        if "%" in host:
            raise UnsafeUrl("callback_url must not name an IPv6 zone")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise UnsafeUrl("callback_url has an invalid IPv6 address") from None
    labels = host.split(".")
    if all(_NUMERIC_LABEL.match(label) for label in labels):
        try:
            return ipaddress.IPv4Address(host)
        except ValueError:
            raise UnsafeUrl("callback_url has an odd numeric host; write an IPv4 address as four decimal "
                            "numbers, or use a host name") from None
    if not host.isascii() or not all(_LABEL.match(label) for label in labels):
        raise UnsafeUrl("callback_url has an invalid host name (write international names in punycode)")
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why webhooks may not go to this address, or None when it is public."""
    embedded: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):  # IPv4 inside IPv6 (mapped, 6to4, Teredo) is checked as IPv4
        embedded += [a for a in (ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None) if a]
    for address in embedded:
        if address in METADATA_ADDRESSES:
            return "a cloud metadata address"
        checks = ((address.is_loopback, "a loopback address"), (address.is_link_local, "a link-local address"),
                  (address.is_multicast, "a multicast address"), (address.is_unspecified, "unspecified"),
                  (address.is_private, "a private address"), (address.is_reserved, "a reserved address"),
                  (not address.is_global, "not a public address"))
        for test, words in checks:
            if test:
                return words
    return None


def _allowed(host: str, ip: IPAddress | None, allow: Sequence[str]) -> bool:
    for entry in allow:
        entry = entry.strip().lower().rstrip(".")
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if host == entry:
                return True
            continue
        if ip is not None and ip.version == network.version and ip in network:
            return True
    return False


def _name_reason(host: str) -> str | None:
    if host in METADATA_NAMES:
        return "a cloud metadata host"
    if host == "localhost" or host.endswith(INTERNAL_SUFFIXES):
        return "an internal host name"
    return None


def check(url: str, allow: Sequence[str] = (), resolve: Resolver | None = None) -> Target:
    """The destination of a webhook URL, resolved (by `resolve`, default the system's) and checked;
    UnsafeUrl when it may not be reached."""
    scheme, host, port, path = _host_of(url)
    literal = _literal(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        reason = _name_reason(host)
        if reason and not _allowed(host, None, allow):
            raise UnsafeUrl(f"callback_url host {host} is {reason}; webhooks go to public hosts only")
        try:
            addresses = (resolve or system_resolver)(host, port)
        except (OSError, UnicodeError):
            addresses = []
        if not addresses:
            raise UnsafeUrl(f"callback_url host {host} does not resolve")
    for address in addresses:
        ip = ipaddress.ip_address(address)
        reason = blocked_reason(ip)
        if reason and not _allowed(host, ip, allow):
            what = f"is {reason}" if literal is not None else f"resolves to {reason}"
            raise UnsafeUrl(f"callback_url host {host} {what}; webhooks go to public addresses only "
                            "(an admin can allow hosts with TAMING_WEBHOOK_ALLOW)")
    return Target(scheme, host, port, path, addresses[0])
