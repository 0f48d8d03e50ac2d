"""How a request reached the door: over HTTPS or not, from where, from this machine or not.

Never from what the request itself says. nginx, on this machine, tells the admin API in
headers it sets itself (the shipped door file sets them in every location, so a client
cannot send its own): the scheme nginx was reached by, the address that connected to
it, what that address said the scheme was (`X-Forwarded-Proto`), and the client's
address as nginx settled it (its `real_ip` module, where configured). The admin API
believes those headers only from a connection on this machine; the scheme a connecting
address claims, only from the addresses the deployment lists as its trusted proxies
(`UI_TRUSTED_PROXIES`: a load balancer that terminates TLS in front of nginx). The
`Host` header decides nothing here.
"""

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import HTTPConnection

# Set by the door file (deploy/nginx/jobs-pipeline-door.conf) on every request it passes.
SCHEME_HEADER = "x-door-scheme"  # $scheme: how nginx was reached
PEER_HEADER = "x-door-peer"  # $realip_remote_addr: who connected to nginx
PEER_PROTO_HEADER = "x-door-peer-proto"  # $http_x_forwarded_proto: what that peer said
CLIENT_HEADER = "x-door-client"  # $remote_addr: the client, after real_ip if configured

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Arrival:
    https: bool
    client: str  # the client's address, for the logs
    # Connected from this machine itself (to nginx, or straight to the admin API): where
    # a session may be used over plain HTTP, the cookie never leaving the machine.
    local: bool


def arrival_of(connection: HTTPConnection, trusted_proxies: Iterable[Network] = ()) -> Arrival:
    socket_peer = connection.client.host if connection.client else ""
    headers = connection.headers
    if is_loopback(socket_peer) and PEER_HEADER in headers:  # through nginx on this machine
        scheme = headers.get(SCHEME_HEADER, "http")
        peer = headers[PEER_HEADER]
        claimed = headers.get(PEER_PROTO_HEADER, "")
        client = headers.get(CLIENT_HEADER) or peer
    else:  # straight to the admin API
        scheme, peer, claimed, client = "http", socket_peer, "", socket_peer
    trusted_https = claimed.strip().lower() == "https" and is_in(peer, trusted_proxies)
    return Arrival(https=scheme == "https" or trusted_https, client=client, local=is_loopback(peer))


def client_address(connection: HTTPConnection) -> str:
    """The client's address as the door knows it, for the logs; `unknown` without one."""
    return arrival_of(connection).client or "unknown"


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def is_in(address: str, networks: Iterable[Network]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def parse_networks(listed: str) -> tuple[Network, ...]:
    """Addresses or networks separated by commas or white space (`10.0.0.5, 10.1.0.0/16`);
    ValueError naming the first that is neither.
    """
    networks = []
    for item in listed.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or a network") from None
    return tuple(networks)
