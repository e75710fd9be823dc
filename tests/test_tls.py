"""Built-in TLS: a real relay serving wss:// and https:// with a certificate made
here (a private CA, a server certificate for 127.0.0.1 and localhost), real
simulator processes and a real trainer; wrong trust is refused at once with a
typed error, never downgraded; keys sent over ws:// to another host warn."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from conftest import TEST_ENVS_MODULE, SimulatorPool, init_trainer, new_key, sim_env

import remoterl_ray
from remoterl_ray.addresses import is_loopback
from remoterl_ray.local import LocalRelay, start_relay, start_simulator
from remoterl_ray.protocol.errors import ErrorCode, TLSError, error_from_wire
from remoterl_ray.protocol.messages import Hello
from remoterl_ray.transport import RelayConnection
from remoterl_ray.transport import tls as client_tls
from remoterl_ray.transport.discovery import direct_route, fetch_regions, measure_rtt

x509 = pytest.importorskip("cryptography.x509", reason="the dev extra's cryptography makes the test certificates")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

ADMIN_TOKEN = "tls-test-admin-token"
BOUND = 60.0  # seconds: a TLS failure that is retried instead of raised shows up as a hang past this


# -- certificates made at test time ---------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: str  # the private CA that signed the relay's certificate
    other_ca: str  # a CA that signed nothing here
    cert: str  # the relay's certificate: 127.0.0.1 and localhost
    key: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, public_key: Any, issuer: str, signer: Any, *, ca: bool, sans: list) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # fmt: skip
    else:
        builder = (
            builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        )
    return builder.sign(signer, hashes.SHA256())


def _write_pem(path: Path, cert: x509.Certificate) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def make_pki(directory: Path) -> Pki:
    ca_key, other_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate("remoterl test CA", ca_key.public_key(), "remoterl test CA", ca_key, ca=True, sans=[])
    other = _certificate("unrelated CA", other_key.public_key(), "unrelated CA", other_key, ca=True, sans=[])
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _certificate("relay", server_key.public_key(), "remoterl test CA", ca_key, ca=False, sans=sans)
    key_path = directory / "relay.key"
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return Pki(
        ca=_write_pem(directory / "ca.pem", ca),
        other_ca=_write_pem(directory / "other-ca.pem", other),
        cert=_write_pem(directory / "relay.pem", server),
        key=str(key_path),
    )


# -- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_keys() -> list[str]:
    return [new_key(f"tls{i}") for i in range(6)]


@pytest.fixture(scope="module")
def tls_relay(pki: Pki, tls_keys: list[str]) -> Iterator[LocalRelay]:
    relay = start_relay(api_keys=tls_keys, tls=(pki.cert, pki.key), ca_file=pki.ca, admin_token=ADMIN_TOKEN)
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def plain_relay() -> Iterator[LocalRelay]:
    """A relay without TLS, in open mode (any key)."""
    relay = start_relay(open_mode=True)
    yield relay
    relay.stop()


@pytest.fixture
def no_ca_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process trusts the system store only (whatever the shell running the tests set)."""
    monkeypatch.delenv("REMOTERL_CA_FILE", raising=False)


def finishes(fn: Callable[[], Any], bound: float = BOUND) -> tuple[Any, BaseException | None]:
    """Run ``fn`` in a thread; its result or exception. Fails if it is still running
    after ``bound`` seconds: a TLS failure must be final, not retried forever."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"still retrying after {bound}s: the TLS failure was not final"
    return outcome.get("value"), outcome.get("error")


def assert_refused(error: BaseException | None, *fragments: str) -> None:
    assert isinstance(error, TLSError), repr(error)
    assert isinstance(error, remoterl_ray.TLSError) and error.code is ErrorCode.TLS
    for fragment in fragments:
        assert fragment in str(error), str(error)


# -- the relay serves TLS ---------------------------------------------------


def test_tls_relay_prints_its_wss_url_and_serves_https(tls_relay: LocalRelay, pki: Pki) -> None:
    assert tls_relay.url == f"wss://127.0.0.1:{tls_relay.port}"
    assert f"wss://127.0.0.1:{tls_relay.port}" in tls_relay.process.output()
    assert f"https://127.0.0.1:{tls_relay.port}/dashboard" in tls_relay.process.output()
    context = client_tls.client_context(pki.ca)
    with urllib.request.urlopen(f"{tls_relay.http_url}/healthz", timeout=10, context=context) as resp:
        assert resp.status == 200
    assert "workspaces" in tls_relay.stats()  # the admin endpoint, over https with the CA


def test_dashboard_over_https_sets_a_secure_cookie(tls_relay: LocalRelay, pki: Pki) -> None:
    import httpx

    context = client_tls.client_context(pki.ca)
    with httpx.Client(base_url=tls_relay.http_url, verify=context, timeout=10.0) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200 and "<" in page.text
        login = client.post("/dashboard/login", json={"token": ADMIN_TOKEN}, headers={"Origin": tls_relay.http_url})
        assert login.status_code == 200, login.text
        cookie = login.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie


def test_discovery_calls_use_https_with_the_ca(tls_relay: LocalRelay, pki: Pki, tls_keys: list[str]) -> None:
    [region] = fetch_regions(tls_relay.url, ca_file=pki.ca)
    assert region.url == tls_relay.url
    assert measure_rtt(tls_relay.url, ca_file=pki.ca) is not None
    assert direct_route(tls_relay.url, tls_keys[0], ca_file=pki.ca) is None  # embedded: no replica address
    for call in (
        lambda: fetch_regions(tls_relay.url, ca_file=pki.other_ca),
        lambda: direct_route(tls_relay.url, tls_keys[0], ca_file=pki.other_ca),
    ):
        with pytest.raises(TLSError, match="failed verification"):
            call()
    assert measure_rtt(tls_relay.url, ca_file=pki.other_ca) is None  # that region is skipped, with a warning


# -- simulators and a trainer over wss:// -----------------------------------


def test_simulators_and_trainer_over_wss_step_like_local(
    tls_relay: LocalRelay, pki: Pki, tls_keys: list[str], trainer_cleanup: None, no_ca_env: None
) -> None:
    key = tls_keys[1]
    pool = SimulatorPool(tls_relay, key)
    try:
        pool.start(1, extra_args=("--ca-file", pki.ca))
        pool.start(1, env={"REMOTERL_CA_FILE": pki.ca})  # the env var instead of the flag
        local = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
        assert init_trainer(tls_relay, key, num_workers=2, ca_file=pki.ca) is True
        session = remoterl_ray.current_session()
        assert session is not None and session.links.conn.url.startswith("wss://")
        remote = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
        assert isinstance(remote, remoterl_ray.RemoteVectorEnv)
        obs_remote, _ = remote.reset(seed=11)
        obs_local, _ = local.reset(seed=11)
        np.testing.assert_array_equal(obs_remote, obs_local)
        actions = np.random.default_rng(3).integers(0, 2, size=(40, 4))
        for action in actions:
            got, want = remote.step(action), local.step(action)
            for a, b in zip(got[:4], want[:4]):
                np.testing.assert_array_equal(a, b)
        remote.close()
        local.close()
        assert len(tls_relay.peers(key, "simulator")) == 2
    finally:
        remoterl_ray.shutdown()
        pool.stop()


def test_top_level_remoterl_init_takes_ca_file(
    tls_relay: LocalRelay, pki: Pki, tls_keys: list[str], trainer_cleanup: None
) -> None:
    import remoterl

    key = tls_keys[2]
    pool = SimulatorPool(tls_relay, key)
    try:
        pool.start(1, extra_args=("--ca-file", pki.ca))
        local = gym.make("CartPole-v1")
        assert remoterl.init(key, relay_url=tls_relay.url, ca_file=pki.ca, simulator_wait=30.0) is True
        remote = gym.make("CartPole-v1")
        np.testing.assert_array_equal(remote.reset(seed=5)[0], local.reset(seed=5)[0])
        for action in (0, 1, 1, 0, 1):
            np.testing.assert_array_equal(remote.step(action)[0], local.step(action)[0])
        remote.close()
    finally:
        remoterl.shutdown()
        pool.stop()


# -- wrong trust is refused, at once, with no fallback ----------------------


def test_trainer_trusting_another_ca_is_refused(
    tls_relay: LocalRelay, pki: Pki, tls_keys: list[str], trainer_cleanup: None
) -> None:
    key = tls_keys[3]
    _, error = finishes(lambda: init_trainer(tls_relay, key, ca_file=pki.other_ca, connect_timeout=3600.0))
    assert_refused(error, "failed verification", pki.other_ca, "--ca-file", "REMOTERL_CA_FILE", "ca_file=")
    assert not remoterl_ray.is_initialized()
    assert tls_relay.peers(key, "trainer") == []  # nothing connected unverified instead


def test_trainer_with_the_system_store_is_refused(
    tls_relay: LocalRelay, tls_keys: list[str], trainer_cleanup: None, no_ca_env: None
) -> None:
    key = tls_keys[3]
    _, error = finishes(lambda: init_trainer(tls_relay, key, connect_timeout=3600.0))
    assert_refused(error, "system trust store", "REMOTERL_CA_FILE")
    assert tls_relay.peers(key, "trainer") == []


def test_connecting_forever_still_stops_at_a_tls_failure(tls_relay: LocalRelay, pki: Pki, tls_keys: list[str]) -> None:
    hello = Hello(role="trainer", api_key=tls_keys[3])
    _, error = finishes(
        lambda: RelayConnection.open_with_backoff(tls_relay.url, hello, deadline=None, ca_file=pki.other_ca)
    )
    assert_refused(error, "failed verification")


@pytest.mark.parametrize("trust", ["other CA", "system store"])
def test_simulator_that_cannot_verify_the_relay_exits_2(
    tls_relay: LocalRelay, pki: Pki, tls_keys: list[str], trust: str
) -> None:
    args = ("--ca-file", pki.other_ca) if trust == "other CA" else ()
    env = {**sim_env(), "REMOTERL_CA_FILE": ""}
    proc = start_simulator(tls_relay.url, tls_keys[4], allow=(TEST_ENVS_MODULE,), extra_args=args, env=env)
    try:
        code = proc.popen.wait(timeout=BOUND)
        output = proc.output()
    finally:
        proc.stop()
    assert code == 2, output
    assert "tls_failed" in output and "failed verification" in output and "--ca-file" in output
    assert "Traceback" not in output
    assert tls_relay.peers(tls_keys[4], "simulator") == []


def test_a_missing_ca_file_is_a_clear_error(tls_relay: LocalRelay, tls_keys: list[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(TLSError, match="cannot read the CA file"):
        RelayConnection.open(tls_relay.url, Hello(role="trainer", api_key=tls_keys[3]), ca_file=missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TLSError, match="cannot load CA certificates"):
        RelayConnection.open(tls_relay.url, Hello(role="trainer", api_key=tls_keys[3]), ca_file=str(garbage))


def test_ws_url_to_a_tls_relay_fails_clearly(tls_relay: LocalRelay, pki: Pki, tls_keys: list[str]) -> None:
    plain = tls_relay.url.replace("wss://", "ws://")
    _, error = finishes(
        lambda: RelayConnection.open_with_backoff(plain, Hello(role="trainer", api_key=tls_keys[3]), deadline=None)
    )
    assert_refused(error, "expects TLS", f"dial {tls_relay.url}")


def test_wss_url_to_a_plain_relay_fails_clearly(plain_relay: LocalRelay) -> None:
    secure = plain_relay.url.replace("ws://", "wss://")
    _, error = finishes(
        lambda: RelayConnection.open_with_backoff(secure, Hello(role="trainer", api_key=None), deadline=None)
    )
    assert_refused(error, "does not speak TLS", "never retried as ws://")


def test_a_replica_address_that_fails_tls_is_skipped_for_the_relay_url(
    tls_relay: LocalRelay, plain_relay: LocalRelay, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay URL itself is verified as ever; only the optional direct hop is dropped."""
    from remoterl_ray.transport import connection

    offered = tls_relay.url.replace("wss://", "ws://")  # a replica address that cannot be dialled as given
    monkeypatch.setattr(connection, "direct_route", lambda *args, **kwargs: offered)
    caplog.set_level(logging.WARNING, logger="remoterl")
    conn = RelayConnection.open_routed(plain_relay.url, Hello(role="trainer", api_key=new_key("direct")))
    try:
        assert conn.url == f"{plain_relay.url}/ws"
    finally:
        conn.close()
    assert any("not dialling relay replica" in r.getMessage() and "expects TLS" in r.getMessage()
               for r in caplog.records)


def test_tls_error_is_a_typed_wire_error() -> None:
    error = error_from_wire({"code": "tls_failed", "message": "m"})
    assert type(error) is TLSError and error.code is ErrorCode.TLS
    assert not isinstance(error, remoterl_ray.RelayUnavailableError)  # so no caller retries it


# -- the relay's TLS flags --------------------------------------------------


def _relay_cli(*args: str) -> tuple[int, str]:
    """Exit status and stderr (unwrapped from the usage box) of ``remoterl relay --open ARGS``."""
    out = subprocess.run(
        [sys.executable, "-m", "remoterl_ray", "relay", "--open", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.returncode, " ".join(out.stderr.replace("│", " ").split())


def test_relay_tls_flags_go_together_and_must_be_usable(pki: Pki, tmp_path: Path) -> None:
    for args, message in (
        (("--tls-cert", pki.cert), "give both --tls-cert and --tls-key"),
        (("--tls-key", pki.key), "give both --tls-cert and --tls-key"),
        (("--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", pki.key), "cannot read"),
        (("--tls-cert", pki.ca, "--tls-key", pki.key), "cannot serve TLS"),  # a key that is not the cert's
    ):
        code, text = _relay_cli(*args)
        assert code == 2 and message in text, text
        assert "Traceback" not in text


def test_serve_refuses_tls_under_haproxy(pki: Pki) -> None:
    """Refused before any Ray cluster starts (the check runs before deploying)."""
    code, text = _relay_cli("--serve", "--haproxy", "--tls-cert", pki.cert, "--tls-key", pki.key)
    assert code == 2 and "HAProxy" in text and "terminate TLS" in text, text
    assert "Traceback" not in text


def test_serve_tls_options(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """Config level only (no Ray cluster): Serve's http_options carry the files,
    URLs become wss://, HAProxy and a Serve already running without TLS are refused."""
    from ray.serve.config import HTTPOptions

    from remoterl_ray.transport.discovery import keeps_security
    from serve_apps.relay import ws_scheme
    from serve_apps.run import check_serve_tls, check_tls_ingress, http_options
    from serve_apps.state import replica_url

    options = http_options("0.0.0.0", 8443, (pki.cert, pki.key))
    parsed = HTTPOptions(**options)
    assert (parsed.ssl_certfile, parsed.ssl_keyfile) == (pki.cert, pki.key)
    assert http_options("0.0.0.0", 8000) == {"host": "0.0.0.0", "port": 8000}
    assert ws_scheme(options) == "wss" and ws_scheme({"port": 8000}) == "ws"
    direct = replica_url(ws_scheme(options), "10.0.0.5", 30001, "/")
    assert direct == "wss://10.0.0.5:30001" and keeps_security("wss://relay:443", direct)
    assert not keeps_security("wss://relay:443", replica_url("ws", "10.0.0.5", 30001, "/"))
    with pytest.raises(ValueError, match="without TLS"):
        check_serve_tls((pki.cert, pki.key), {"host": "0.0.0.0", "port": 8000})
    check_serve_tls((pki.cert, pki.key), options)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    with pytest.raises(ValueError, match="terminate TLS"):
        check_tls_ingress((pki.cert, pki.key))
    check_tls_ingress(None)
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY")
    check_tls_ingress((pki.cert, pki.key))


# -- a key over ws:// to another host warns ---------------------------------


def non_loopback_ipv4() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    candidates: list[str] = []
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10)
        candidates += out.stdout.split()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    for address in candidates:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
            return address
    return None


@pytest.fixture(scope="module")
def lan_relay() -> Iterator[tuple[LocalRelay, str, str]]:
    """A plain relay on every interface, its key and a non-loopback address of this machine."""
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to dial")
    key = new_key("lan")
    relay = start_relay(api_keys=[key], open_mode=True, host="0.0.0.0")
    yield relay, key, address
    relay.stop()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "clear text" in r.getMessage()]


def test_key_over_ws_to_another_host_warns_once(
    lan_relay: tuple[LocalRelay, str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay, key, address = lan_relay
    monkeypatch.setattr(client_tls, "_warned_hosts", set())
    caplog.set_level(logging.WARNING, logger="remoterl")
    for _ in range(2):
        RelayConnection.open(f"ws://{address}:{relay.port}", Hello(role="trainer", api_key=key)).close()
    [warning] = _warnings(caplog)
    assert address in warning and "API key" in warning and "wss://" in warning and "--tls-cert" in warning


def test_no_warning_for_loopback_or_without_a_key(
    lan_relay: tuple[LocalRelay, str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay, key, address = lan_relay
    monkeypatch.setattr(client_tls, "_warned_hosts", set())
    caplog.set_level(logging.WARNING, logger="remoterl")
    for host in ("127.0.0.1", "localhost"):
        RelayConnection.open(f"ws://{host}:{relay.port}", Hello(role="trainer", api_key=key)).close()
    RelayConnection.open(f"ws://{address}:{relay.port}", Hello(role="trainer", api_key=None)).close()
    assert _warnings(caplog) == []
    assert is_loopback("127.8.9.10") and is_loopback("::1")
    assert not is_loopback("10.0.0.1") and not is_loopback("relay.example")


def test_the_warning_shows_without_logging_configured(lan_relay: tuple[LocalRelay, str, str]) -> None:
    relay, key, address = lan_relay
    script = (
        "import os\n"
        "from remoterl_ray.protocol.messages import Hello\n"
        "from remoterl_ray.transport import RelayConnection\n"
        f"RelayConnection.open('ws://{address}:{relay.port}', Hello(role='trainer', api_key=os.environ['K'])).close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env={**os.environ, "K": key}
    )
    assert out.returncode == 0, out.stderr
    assert "in clear text" in out.stderr and address in out.stderr


def test_a_client_that_never_finishes_the_tls_handshake_is_cut_off(pki: Pki, tls_keys: list[str]) -> None:
    """Until its TLS handshake is done a connection is not the relay's to count:
    the handshake gets --handshake-timeout, not asyncio's 60 s."""
    relay = start_relay(api_keys=tls_keys[:1], tls=(pki.cert, pki.key), ca_file=pki.ca,
                        extra_args=["--handshake-timeout", "1"])  # fmt: skip
    try:
        silent = socket.create_connection((relay.host, relay.port), timeout=10)
        half = socket.create_connection((relay.host, relay.port), timeout=10)
        half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the first bytes of a ClientHello
        for sock in (silent, half):
            sock.settimeout(10)  # well within asyncio's own 60 s: a timeout here fails the test
            try:
                assert sock.recv(4096) == b""  # closed by the relay, nothing said
            except ConnectionResetError:
                pass  # or reset: closed all the same
            sock.close()
        context = client_tls.client_context(pki.ca)
        with urllib.request.urlopen(f"{relay.http_url}/healthz", timeout=10, context=context) as resp:
            assert resp.status == 200  # and the relay serves everyone else
    finally:
        relay.stop()


def test_connections_are_counted_before_their_tls_handshake(pki: Pki, tls_keys: list[str]) -> None:
    """Silent TLS clients from one address are capped like any other (the handshake
    runs after the count), so one address cannot hold every descriptor."""
    relay = start_relay(api_keys=tls_keys[:1], tls=(pki.cert, pki.key), ca_file=pki.ca,
                        extra_args=["--max-pending-per-address", "8", "--handshake-timeout", "5"])  # fmt: skip
    try:
        held = [socket.create_connection((relay.host, relay.port), timeout=10, source_address=("127.0.0.9", 0))
                for _ in range(8)]  # fmt: skip
        extra = socket.create_connection((relay.host, relay.port), timeout=10, source_address=("127.0.0.9", 0))
        extra.settimeout(3)  # refused at once, long before the handshake deadline: a timeout fails the test
        try:
            assert extra.recv(100) == b""
        except ConnectionResetError:
            pass
        context = client_tls.client_context(pki.ca)
        with urllib.request.urlopen(f"{relay.http_url}/healthz", timeout=10, context=context) as resp:
            assert resp.status == 200  # another address is served meanwhile
        for sock in [*held, extra]:
            sock.close()
    finally:
        relay.stop()


def test_half_a_tls_record_does_not_wedge_the_client(pki: Pki) -> None:
    """A relay (or a network dying mid-record) delivers half a TLS record: the client
    reads what decrypts and never waits inside a read, so its heartbeat still fails
    the connection and a reader gets ConnectionClosed, not a hang."""
    from test_websocket_client import failed_with
    from websockets.server import ServerProtocol

    from remoterl_ray.transport.websocket import WebSocket

    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.cert, pki.key)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)

        def pump_in() -> None:
            conn.sendall(outgoing.read())
            incoming.write(conn.recv(65536))

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump_in()
        conn.sendall(outgoing.read())
        protocol, events = ServerProtocol(), []
        while not events:
            try:
                protocol.receive_data(tls.read(65536))
            except ssl.SSLWantReadError:
                pump_in()
            events = protocol.events_received()
        protocol.send_response(protocol.accept(events[0]))
        tls.write(b"".join(protocol.data_to_send()))
        conn.sendall(outgoing.read())
        tls.write(bytes([0x82, 100]) + b"m" * 100)  # one binary frame, as one TLS record
        record = outgoing.read()
        conn.sendall(record[: len(record) // 2])  # the rest never comes; TCP stays up
        done.wait(30)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ws = WebSocket.connect(
        f"wss://127.0.0.1:{listener.getsockname()[1]}",
        ssl=ssl.create_default_context(cafile=pki.ca),
        ping_interval=0.2,
        ping_timeout=0.5,
    )
    try:
        time.sleep(1.0)  # nobody reads: the keeper meets the half record first
        assert failed_with(ws, 20).reason == "keepalive ping timeout"
    finally:
        done.set()
        ws.close()
        thread.join(timeout=10)
        listener.close()
