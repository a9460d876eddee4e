"""Transport-level security: nodes over TLS with mutual authentication, refusals, reload.

Every certificate is made here by a throwaway CA (trustme); nothing is fetched.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
import trustme

import phoenix_trio as px
from phoenix_trio import ConfigurationError
from phoenix_trio import security as sec
from phoenix_trio.security._tls import TLS12_CIPHERS, TLS13_CIPHERS

UTC = dt.timezone.utc


class Pki:
    """A CA and the certificate files of the nodes under test."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = trustme.CA()
        self.cafile = str(directory / "ca.pem")
        self.ca.cert_pem.write_to_path(self.cafile)

    def issue(self, name: str, *identities: str, ca: trustme.CA | None = None, **validity) -> tuple[str, str]:
        cert = (ca or self.ca).issue_cert(*(identities or ("127.0.0.1", name)), **validity)
        certfile, keyfile = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(keyfile))
        return str(certfile), str(keyfile)

    def tls(self, name: str, *identities: str, ca: trustme.CA | None = None, validity=None, **options) -> sec.TlsConfig:
        certfile, keyfile = self.issue(name, *identities, ca=ca, **(validity or {}))
        options.setdefault("cacertfile", self.cafile)
        return sec.configure_tls(certfile=certfile, keyfile=keyfile, **options)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def expired() -> dict[str, dt.datetime]:
    now = dt.datetime.now(UTC)
    return {"not_before": now - dt.timedelta(days=30), "not_after": now - dt.timedelta(days=1)}


class Refusals:
    """Collects a TlsConfig's refusals and wakes waiters (no sleeping)."""

    def __init__(self, tls: sec.TlsConfig) -> None:
        self.reasons: list[str] = []
        self._event = trio.Event()
        tls.on_refused = self._record

    def _record(self, peer: str, reason: str) -> None:
        self.reasons.append(reason)
        self._event.set()

    async def wait(self, timeout: float = 10) -> str:
        with trio.fail_after(timeout):
            await self._event.wait()
        return self.reasons[0]


@asynccontextmanager
async def tls_cluster(*configs: sec.TlsConfig):
    """One node per config (``n0`` ... ), seeded with the first, fully meshed."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(px.open_node("n0", listen="127.0.0.1:0", tls=configs[0]))
        nodes = [first]
        for i, config in enumerate(configs[1:], 1):
            node = px.open_node(f"n{i}", listen="127.0.0.1:0", seeds=[first.address], tls=config)
            nodes.append(await stack.enter_async_context(node))
        for node in nodes:
            await node.wait_for_members(len(configs) - 1, timeout=10)
        yield nodes


async def exchange(a: px.Node, b: px.Node) -> None:
    """A message each way and a request: the pair works."""
    async with a.agent("at-a") as at_a, b.agent("at-b") as at_b, trio.open_nursery() as nursery:

        async def echo() -> None:
            async for m in at_b:
                if m.is_request:
                    await m.reply(m.data)

        nursery.start_soon(echo)
        await a.wait_for_agent("at-b", timeout=5)
        await b.wait_for_agent("at-a", timeout=5)
        await b.send("at-a", "hello a")
        assert (await at_a.receive()).data == "hello a"
        assert (await a.request("at-b", "ping", timeout=5)).data == "ping"
        nursery.cancel_scope.cancel()


# -- configuration ------------------------------------------------------------------------------------


def test_contexts_follow_the_design(pki: Pki) -> None:
    tls = pki.tls("n0")
    for context, server_side in ((tls.server_context, True), (tls.client_context, False)):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.maximum_version == ssl.TLSVersion.TLSv1_3
        names = [c["name"] for c in context.get_ciphers()]
        assert set(names) == set(TLS13_CIPHERS) | set(TLS12_CIPHERS)
        assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
        assert context.options & ssl.OP_NO_RENEGOTIATION
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is (not server_side)
    assert sec.SECURE_CIPHERS == (*TLS13_CIPHERS, *TLS12_CIPHERS)
    assert tls.options.alpn_protocols == ("phoenix-agent/1.0",) == (sec.ALPN_PROTOCOL,)


def test_configuration_errors(pki: Pki) -> None:
    certfile, keyfile = pki.issue("n0")
    with pytest.raises(ConfigurationError):
        sec.configure_tls(certfile=certfile, keyfile=keyfile, cacertfile=pki.cafile, versions=["tlsv1.1"])
    with pytest.raises(ConfigurationError, match="TLS 1.3 suites"):
        sec.configure_tls(certfile=certfile, keyfile=keyfile, cacertfile=pki.cafile, ciphers=["TLS_AES_128_GCM_SHA256", *TLS12_CIPHERS])
    with pytest.raises(ConfigurationError):
        sec.configure_tls(certfile=certfile, keyfile=keyfile, cacertfile=pki.cafile, ciphers=TLS13_CIPHERS)
    with pytest.raises(ConfigurationError):
        sec.configure_tls(certfile=str(pki.dir / "missing.crt"), keyfile=keyfile, cacertfile=pki.cafile)
    tls = sec.configure_tls(certfile=certfile, keyfile=keyfile, cacertfile=pki.cafile)
    before = tls.server_context
    with pytest.raises(ConfigurationError):
        tls.reload(certfile=str(pki.dir / "missing.crt"))
    assert tls.server_context is before  # a failed reload keeps the working contexts


# -- mutual authentication ------------------------------------------------------------------------------


async def test_mutual_authentication_tls13_with_alpn(pki: Pki) -> None:
    async with tls_cluster(pki.tls("n0"), pki.tls("n1")) as (a, b):
        await exchange(a, b)
        for node, peer in ((a, "n1"), (b, "n0")):
            stream = node._connections[peer].stream
            assert isinstance(stream, trio.SSLStream)
            assert stream.version() == "TLSv1.3"
            assert stream.selected_alpn_protocol() == "phoenix-agent/1.0"
            assert stream.cipher()[0] in TLS13_CIPHERS
            assert ("DNS", peer) in stream.getpeercert()["subjectAltName"]  # the peer presented its own
        assert a.config.tls.stats["handshakes"] >= 1 and a.config.tls.stats["refused"] == 0


async def test_tls12_fallback_uses_the_design_cipher_list(pki: Pki) -> None:
    async with tls_cluster(pki.tls("n0"), pki.tls("n1", versions=["tlsv1.2"])) as (a, b):
        await exchange(a, b)
        stream = a._connections["n1"].stream
        assert stream.version() == "TLSv1.2"
        assert stream.cipher()[0] in TLS12_CIPHERS


async def test_verify_peer_false_encrypts_without_authenticating(pki: Pki) -> None:
    stranger = trustme.CA()
    async with tls_cluster(pki.tls("n0", verify_peer=False), pki.tls("n1", ca=stranger, verify_peer=False)) as (a, b):
        await exchange(a, b)
        assert a._connections["n1"].stream.version() == "TLSv1.3"


# -- refused peers; the node keeps serving the others ----------------------------------------------------


BAD_PEERS = {
    "untrusted CA": ({"ca": "stranger"}, "unable to get local issuer certificate"),
    "expired certificate": ({"validity": "expired"}, "certificate has expired"),
    "wrong name": ({"identities": ("127.0.0.1", "n9")}, "not node 'n2'"),
}


@pytest.mark.parametrize("case", BAD_PEERS)
async def test_bad_peer_is_refused_and_logged_while_the_others_keep_working(
    pki: Pki, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="phoenix_trio.security._tls")
    spec, expected = BAD_PEERS[case]
    issue: dict = {}
    if spec.get("ca") == "stranger":
        issue["ca"] = trustme.CA()
    if spec.get("validity") == "expired":
        issue["validity"] = expired()
    bad_tls = pki.tls("n2", *spec.get("identities", ()), **issue)
    async with tls_cluster(pki.tls("n0"), pki.tls("n1")) as (a, b):
        refusals = Refusals(a.config.tls)
        async with px.open_node("n2", listen="127.0.0.1:0", seeds=[a.address], tls=bad_tls) as bad:
            reason = await refusals.wait()
            assert expected in reason
            await exchange(a, b)  # the good pair is unaffected
            assert "n2" not in a._connections and "n2" not in b._connections
            assert a.members.get("n2") is None or not a.members["n2"].connected
            assert not bad._connections.get("n0") or bad._connections["n0"].closed
    assert any("TLS: refused" in r.getMessage() and expected in r.getMessage() for r in caplog.records)


async def _raw_client(address, context: ssl.SSLContext) -> tuple[trio.SSLStream, bytes]:
    stream = await trio.open_tcp_stream(*address)
    tls = trio.SSLStream(stream, context, server_hostname="127.0.0.1")
    await tls.do_handshake()
    return tls, tls.getpeercert(binary_form=True)


async def test_peer_without_a_certificate_is_refused(pki: Pki) -> None:
    async with tls_cluster(pki.tls("n0"), pki.tls("n1")) as (a, b):
        refusals = Refusals(a.config.tls)
        context = ssl.create_default_context(cafile=pki.cafile)
        context.set_alpn_protocols(["phoenix-agent/1.0"])
        client, _ = await _raw_client(a.address, context)  # TLS 1.3: the server checks after this
        with trio.fail_after(10):  # the server's alert (or its close) ends the connection
            try:
                while await client.receive_some():
                    pass  # pragma: no cover
            except trio.BrokenResourceError:
                pass
        assert "did not return a certificate" in await refusals.wait()
        assert "n2" not in a._connections and len(a._connections) == 1
        await trio.aclose_forcefully(client)
        await exchange(a, b)


async def test_plain_tcp_peer_is_refused(pki: Pki) -> None:
    async with tls_cluster(pki.tls("n0"), pki.tls("n1")) as (a, b):
        refusals = Refusals(a.config.tls)
        async with px.open_node("n2", listen="127.0.0.1:0", seeds=[a.address]) as plain:
            await refusals.wait()
            await exchange(a, b)
            assert "n2" not in a._connections
            assert plain.alive_members() == []


async def test_dialled_peer_whose_certificate_lacks_the_address_is_refused(pki: Pki) -> None:
    # n0 listens with a certificate that names only "n0" (no IP): n1 dials 127.0.0.1 and refuses it.
    async with px.open_node("n0", listen="127.0.0.1:0", tls=pki.tls("n0", "n0")) as a:
        dialer_tls = pki.tls("n1")
        refusals = Refusals(dialer_tls)
        async with px.open_node("n1", listen="127.0.0.1:0", seeds=[a.address], tls=dialer_tls):
            reason = await refusals.wait()
    assert "IP address mismatch" in reason or "hostname" in reason.lower()


async def test_peer_without_the_alpn_protocol_is_refused(pki: Pki) -> None:
    async with tls_cluster(pki.tls("n0"), pki.tls("n1")) as (a, _):
        refusals = Refusals(a.config.tls)
        certfile, keyfile = pki.issue("client")
        context = ssl.create_default_context(cafile=pki.cafile)
        context.load_cert_chain(certfile, keyfile)
        context.set_alpn_protocols(["h2"])
        stream = await trio.open_tcp_stream(*a.address)
        client = trio.SSLStream(stream, context, server_hostname="127.0.0.1")
        with pytest.raises(trio.BrokenResourceError):
            await client.do_handshake()  # the server has no protocol in common: it refuses
            await client.receive_some()
        assert "ALPN" in await refusals.wait()


# -- certificate reload without restart -------------------------------------------------------------------


async def test_reload_serves_the_new_certificate_to_new_connections_only(pki: Pki) -> None:
    a_tls = pki.tls("n0")
    async with tls_cluster(a_tls, pki.tls("n1")) as (a, b):
        certfile, keyfile = pki.issue("client")
        context = ssl.create_default_context(cafile=pki.cafile)
        context.load_cert_chain(certfile, keyfile)
        context.set_alpn_protocols(["phoenix-agent/1.0"])
        first, before = await _raw_client(a.address, context)
        established = b._connections["n0"]
        pki.issue("n0")  # a new certificate and key in the same files
        a_tls.reload()
        second, after = await _raw_client(a.address, context)
        assert before != after
        assert a_tls.stats["reloads"] == 1
        await trio.aclose_forcefully(first)
        await trio.aclose_forcefully(second)
        await exchange(a, b)
        assert b._connections["n0"] is established  # the open connection was not disturbed


async def test_reload_replaces_an_expired_certificate_and_peers_get_in(pki: Pki) -> None:
    a_tls = pki.tls("n0", validity=expired())
    async with px.open_node("n0", listen="127.0.0.1:0", tls=a_tls) as a:
        b_tls = pki.tls("n1")
        refusals = Refusals(b_tls)
        async with px.open_node("n1", listen="127.0.0.1:0", seeds=[a.address], tls=b_tls) as b:
            assert "expired" in await refusals.wait()
            assert b.alive_members() == []
            pki.issue("n0")  # renewed
            a_tls.reload()
            await b.wait_for_members(1, timeout=10)
            await exchange(a, b)
