"""Transport-level security: the design's ``configure_tls`` for the native TCP transport.

:func:`configure_tls` builds a :class:`TlsConfig`: a server and a client
``ssl.SSLContext`` from the standard library with the design's options (TLS 1.3 and
1.2 only, its TLS 1.2 cipher list, server cipher order, no insecure renegotiation, ALPN
``phoenix-agent/1.0``, ``verify_peer`` by default). ``open_node(..., tls=config)`` then
runs every peer connection through :class:`trio.SSLStream`, both the ones it dials and
the ones it accepts.

With ``verify_peer`` (the default) authentication is mutual: each side presents a
certificate from the trusted CA and checks the other's, the dialling side also checks
that the certificate names the address it dialled (``check_hostname``), and after the
node handshake both sides check that the peer's certificate names the node id it
announced (a DNS subjectAltName equal to the node id; ``verify_node_name``). A peer that
fails any of this is refused and logged; the node keeps serving the others.

:meth:`TlsConfig.reload` reads the certificate, key and CA files again: connections
made afterwards use them, established connections are not disturbed.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import trio

from .._errors import ConfigurationError
from ._errors import PeerIdentityError, TlsError

log = logging.getLogger(__name__)

ALPN_PROTOCOL = "phoenix-agent/1.0"
TLS13_CIPHERS = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256")
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
SECURE_CIPHERS = TLS13_CIPHERS + TLS12_CIPHERS
"""The design's ``secure_ciphers()``: TLS 1.3 suites, then the TLS 1.2 fallback."""

_VERSIONS = {"tlsv1.3": ssl.TLSVersion.TLSv1_3, "tlsv1.2": ssl.TLSVersion.TLSv1_2}


def _versions(value: Sequence[str]) -> tuple[str, ...]:
    versions = tuple(value)
    if not versions or any(v not in _VERSIONS for v in versions):
        raise ConfigurationError(f"versions must be a non-empty subset of {sorted(_VERSIONS)}; got {versions!r}")
    return versions


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)  # a typed converter: mypy cannot type attrs' converter=tuple


@attrs.frozen(slots=True)
class TlsOptions:
    """The options :func:`configure_tls` was given (the design's ``tls_config``)."""

    certfile: str
    keyfile: str
    cacertfile: str
    verify_peer: bool = True
    versions: tuple[str, ...] = attrs.field(default=("tlsv1.3", "tlsv1.2"), converter=_versions)
    ciphers: tuple[str, ...] = attrs.field(default=SECURE_CIPHERS, converter=_strings)
    honor_cipher_order: bool = True
    secure_renegotiate: bool = True
    alpn_protocols: tuple[str, ...] = attrs.field(default=(ALPN_PROTOCOL,), converter=_strings)
    check_hostname: bool = True
    verify_node_name: bool = True
    password: str | None = attrs.field(default=None, repr=False)


def _build_context(options: TlsOptions, *, server_side: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    versions = [_VERSIONS[v] for v in options.versions]
    context.minimum_version = min(versions)
    context.maximum_version = max(versions)
    tls12 = [c for c in options.ciphers if not c.startswith("TLS_")]
    tls13 = [c for c in options.ciphers if c.startswith("TLS_")]
    if "tlsv1.2" in options.versions:
        if not tls12:
            raise ConfigurationError("TLS 1.2 is enabled but no TLS 1.2 cipher is listed")
        try:
            context.set_ciphers(":".join(tls12))
        except ssl.SSLError as exc:
            raise ConfigurationError(f"no usable TLS 1.2 cipher in {tls12}: {exc}") from None
    if "tlsv1.3" in options.versions:
        # Python's ssl module cannot choose TLS 1.3 suites; OpenSSL's defaults are the
        # design's three. Refuse a list that asks for anything else rather than ignore it.
        available = {c["name"] for c in context.get_ciphers() if c.get("protocol") == "TLSv1.3"}
        if set(tls13) != available:
            raise ConfigurationError(
                f"TLS 1.3 suites cannot be chosen through Python's ssl module; this OpenSSL offers {sorted(available)}"
            )
    if options.honor_cipher_order:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if options.secure_renegotiate:
        # Never the insecure legacy renegotiation (RFC 5746 only), and none at all: TLS 1.3
        # has none and nothing here needs it in TLS 1.2.
        context.options |= ssl.OP_NO_RENEGOTIATION
        context.options &= ~getattr(ssl, "OP_LEGACY_SERVER_CONNECT", 0)
    context.options |= ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(options.certfile, options.keyfile, password=options.password)
        context.load_verify_locations(cafile=options.cacertfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the TLS certificate, key or CA: {exc}") from None
    if options.verify_peer:
        context.verify_mode = ssl.CERT_REQUIRED
        if not server_side:
            context.check_hostname = options.check_hostname
    else:
        if not server_side:
            context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.alpn_protocols:
        context.set_alpn_protocols(list(options.alpn_protocols))
    return context


def _peer(stream: trio.abc.Stream, fallback: str = "peer") -> str:
    sock = getattr(stream, "socket", None)
    try:
        host, port = sock.getpeername()[:2]  # type: ignore[union-attr]
        return f"{host}:{port}"
    except (AttributeError, OSError, ValueError):
        return fallback


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        verify = getattr(cause, "verify_message", None)
        if verify:
            return f"certificate verify failed: {verify}"
        return cause.reason.replace("_", " ").lower() if cause.reason else str(cause)
    if isinstance(exc, trio.TooSlowError):
        return "handshake timed out"
    return str(exc) or type(exc).__name__


class TlsConfig:
    """Built by :func:`configure_tls`; give it to ``open_node(..., tls=...)``.

    ``server_context`` / ``client_context`` are the current ``ssl.SSLContext`` objects;
    ``stats`` counts handshakes completed, peers refused and reloads. ``on_refused``, if
    set, is called with ``(peer, reason)`` for every refusal (after it is logged): a hook
    for alerting or tests. It must not block.
    """

    def __init__(self, options: TlsOptions) -> None:
        self.options = options
        self.server_context = _build_context(options, server_side=True)
        self.client_context = _build_context(options, server_side=False)
        self.stats = {"handshakes": 0, "refused": 0, "reloads": 0}
        self.on_refused: Callable[[str, str], None] | None = None

    def reload(self, **changes: Any) -> None:
        """Read the certificate, key and CA files again (optionally with new paths or options).

        Connections opened afterwards use the new contexts; open ones keep theirs. On
        any error the old contexts stay in use and ``ConfigurationError`` is raised. A
        blocking file read of a few kilobytes, done by the caller's thread.
        """
        options = attrs.evolve(self.options, **changes) if changes else self.options
        server = _build_context(options, server_side=True)
        client = _build_context(options, server_side=False)
        self.options, self.server_context, self.client_context = options, server, client
        self.stats["reloads"] += 1
        log.info("TLS certificates reloaded from %s", options.certfile)

    async def accept(self, stream: trio.abc.Stream, timeout: float) -> trio.SSLStream[Any]:
        """Run the server side of the handshake on an accepted stream; :class:`TlsError` if refused."""
        peer = _peer(stream, "inbound peer")
        tls = trio.SSLStream(stream, self.server_context, server_side=True)
        await self._handshake(tls, peer, timeout)
        return tls

    async def connect(self, stream: trio.abc.Stream, host: str, timeout: float) -> trio.SSLStream[Any]:
        """Run the client side of the handshake towards ``host``; :class:`TlsError` if refused."""
        peer = _peer(stream, host)
        tls = trio.SSLStream(stream, self.client_context, server_hostname=host)
        await self._handshake(tls, peer, timeout)
        return tls

    async def _handshake(self, tls: trio.SSLStream[Any], peer: str, timeout: float) -> None:
        try:
            with trio.fail_after(timeout):
                await tls.do_handshake()
            wanted = self.options.alpn_protocols
            if wanted and tls.selected_alpn_protocol() not in wanted:
                raise TlsError(peer, f"ALPN: peer does not speak {', '.join(wanted)}")
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError, TlsError) as exc:
            reason = exc.reason if isinstance(exc, TlsError) else _reason(exc)
            self._refused(peer, reason)
            await trio.aclose_forcefully(tls)
            raise TlsError(peer, reason) from None
        except BaseException:  # cancelled (node closing): leave no socket behind
            await trio.aclose_forcefully(tls)
            raise
        self.stats["handshakes"] += 1

    def check_peer(self, stream: trio.abc.Stream, node_id: str) -> None:
        """After the node handshake: the peer's certificate must name ``node_id``.

        Raises :class:`PeerIdentityError` (logged) otherwise. Nothing to check without
        ``verify_peer`` or with ``verify_node_name=False``, or on a non-TLS stream.
        """
        if not (self.options.verify_peer and self.options.verify_node_name) or not isinstance(stream, trio.SSLStream):
            return
        cert = stream.getpeercert() or {}
        names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
        if node_id.lower() not in (name.lower() for name in names):
            peer = _peer(stream.transport_stream, node_id)
            reason = f"certificate names {names or 'no DNS name'}, not node {node_id!r}"
            self._refused(peer, reason)
            raise PeerIdentityError(peer, reason)

    def _refused(self, peer: str, reason: str) -> None:
        self.stats["refused"] += 1
        log.warning("TLS: refused %s: %s", peer, reason)
        if self.on_refused is not None:
            self.on_refused(peer, reason)


def configure_tls(
    *,
    certfile: str,
    keyfile: str,
    cacertfile: str,
    verify_peer: bool = True,
    versions: Sequence[str] = ("tlsv1.3", "tlsv1.2"),
    ciphers: Sequence[str] = SECURE_CIPHERS,
    honor_cipher_order: bool = True,
    secure_renegotiate: bool = True,
    alpn_protocols: Sequence[str] = (ALPN_PROTOCOL,),
    check_hostname: bool = True,
    verify_node_name: bool = True,
    password: str | None = None,
) -> TlsConfig:
    """The design's ``configure_tls``: TLS contexts for a node's TCP transport.

    ``certfile``/``keyfile``: this node's certificate chain and private key (PEM);
    ``cacertfile``: the CA(s) peers' certificates must chain to. ``verify_peer``: mutual
    authentication (default); ``versions``: any of ``tlsv1.3``, ``tlsv1.2``;
    ``ciphers``: the design's list (TLS 1.2 names are applied; the TLS 1.3 names must be
    OpenSSL's defaults, which they are); ``honor_cipher_order`` and
    ``secure_renegotiate`` as in the design; ``alpn_protocols``: ``phoenix-agent/1.0``.
    ``check_hostname``: the dialled address must be in the peer's certificate;
    ``verify_node_name``: the announced node id must be too. Raises
    ``ConfigurationError`` for bad options or unreadable files.
    """
    return TlsConfig(
        TlsOptions(
            certfile=str(certfile),
            keyfile=str(keyfile),
            cacertfile=str(cacertfile),
            verify_peer=verify_peer,
            versions=tuple(versions),
            ciphers=tuple(ciphers),
            honor_cipher_order=honor_cipher_order,
            secure_renegotiate=secure_renegotiate,
            alpn_protocols=tuple(alpn_protocols),
            check_hostname=check_hostname,
            verify_node_name=verify_node_name,
            password=password,
        )
    )
