"""What a reader may open when a URI comes from someone else: a served model's caller names a `uri`, and the
server must not read its own files, probe its own network or use its own credentials on another bucket for them.

`UriAccess()` trusts the URI (the owner's manifests, the `geosurge predict` CLI, the Python API); `UriAccess.untrusted`
(serving) allows no local path, no redirect, no loopback/private/link-local address (checked after DNS resolution)
and only URIs under the configured prefixes. `UriRefused` carries one message whatever the reason, so a refusal
tells a caller nothing about files, ports or buckets. Known gap: a host that re-resolves between the check and the
connection (DNS rebinding) is not pinned.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlparse


class UriRefused(PermissionError):
    """A caller-named URI outside what the reader allows. The message is the same whatever the reason, so a caller
    learns nothing about local files, ports or buckets from it; `why` is for the server's own log."""

    MESSAGE = "uri refused: not an allowed image source"

    def __init__(self, why: str):
        super().__init__(self.MESSAGE)
        self.why = why


_LOCAL_SCHEMES = ("", "file")


@dataclass(frozen=True)
class UriAccess:
    """What a reader may open. The default trusts the URI (the owner's manifests, the CLI, the Python API: local
    files too); `untrusted(prefixes)` is for URIs a caller sends a served model."""

    allow_local: bool = True
    follow_redirects: bool = True
    allowed_prefixes: tuple[str, ...] = ()  # empty: any URI (only meaningful when trusted)
    refuse_private_addresses: bool = False  # http(s): refuse loopback/private/link-local hosts, after DNS

    @classmethod
    def untrusted(cls, allowed_prefixes: tuple[str, ...] | list[str]) -> UriAccess:
        return cls(allow_local=False, follow_redirects=False, allowed_prefixes=tuple(allowed_prefixes),
                   refuse_private_addresses=True)

    @property
    def trusted(self) -> bool:
        return self == UriAccess()

    def check(self, uri: str) -> None:
        """Raise UriRefused unless this access allows reading `uri`."""
        if self.trusted:
            return
        parsed = urlparse(uri)
        if parsed.scheme.lower() in _LOCAL_SCHEMES:
            if not self.allow_local:
                raise UriRefused("a local path")
        elif parsed.scheme.lower() not in ("s3", "http", "https"):
            raise UriRefused(f"scheme {parsed.scheme!r}")
        if "\\" in uri or any(part in (".", "..") for part in unquote(parsed.path).split("/")) or parsed.username:
            raise UriRefused("dot segments, backslashes or user info")
        restricted = not self.allow_local or self.allowed_prefixes  # untrusted: no prefix list means no uri
        if restricted and not any(under_prefix(parsed, urlparse(prefix)) for prefix in self.allowed_prefixes):
            raise UriRefused("under no allowed prefix")
        if self.refuse_private_addresses and parsed.scheme.lower() in ("http", "https"):
            _refuse_private_host(parsed.hostname or "", parsed.port)


def under_prefix(uri, prefix) -> bool:
    """Parsed `uri` lies under parsed URL `prefix`: same scheme and host, then the path on a segment boundary."""
    # scheme and host compared exactly (so "http://a.com" never admits "http://a.com.evil.net"), then the path
    if not prefix.scheme or uri.scheme.lower() != prefix.scheme.lower() or uri.netloc.lower() != prefix.netloc.lower():
        return False
    return uri.path.startswith(prefix.path) and (prefix.path.endswith("/") or uri.path == prefix.path
                                                 or uri.path[len(prefix.path):].startswith("/") or not prefix.path)


def _refuse_private_host(host: str, port: int | None) -> None:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError):
        raise UriRefused(f"host {host!r} does not resolve") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:  # loopback, private, link-local (cloud metadata), reserved, ...
            raise UriRefused(f"host {host!r} resolves to non-public {ip}")
