"""Accounts on a real relay: keys from the CLI, workspaces kept apart, metering,
quotas, revocation, operator actions, and bad input. Real relay and simulator
processes on 127.0.0.1, one relay (with its own store and config) for the module."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import httpx
import pytest
import websockets.sync.client

import remoterl_ray
from conftest import TEST_ENVS_MODULE, sim_env
from remoterl_ray.accounts.plans import Prices, usage_summary
from remoterl_ray.accounts.store import AccountStore, UsageDelta
from remoterl_ray.local import LocalProcess, LocalRelay, free_port, start_relay, start_simulator
from remoterl_ray.protocol import codec
from remoterl_ray.protocol.affinity import session_id_for
from remoterl_ray.protocol.errors import (
    AuthenticationError,
    ErrorCode,
    QuotaExceededError,
    RemoteRLError,
    WorkspaceBlockedError,
)
from remoterl_ray.protocol.frames import Kind, Op, pack, payload_of, unpack_header
from remoterl_ray.protocol.messages import Hello, Open, control_frame
from remoterl_ray.relay.admin import AdminAuth, token_digest
from remoterl_ray.transport import RelayConnection

ADMIN_TOKEN = "ops-token-0123456789abcdef"
FREE_BYTES = 400_000  # the free plan's traffic in this module's relay config
PRICE_PER_GB = 2.0
PRICE_PER_MINUTE = 0.5


def cli(*args: str, db: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "remoterl_ray", *args, "--db", str(db)], capture_output=True, text=True, timeout=60
    )
    if check and out.returncode != 0:
        raise AssertionError(f"remoterl {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def create_key(db: Path, workspace: str, plan: str | None = None) -> tuple[str, str]:
    out = cli("keys", "create", "--workspace", workspace, *(["--plan", plan] if plan else []), db=db)
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    return lines["key id"].strip(), lines["key"].strip()


def usage(db: Path, *args: str) -> dict:
    return json.loads(cli("usage", "--json", *args, db=db).stdout)


def operator_relay(root: Path, operator: str, token: str, workspace: str) -> tuple[LocalRelay, Path]:
    """A relay with an accounts store in ``root`` (``workspace`` has a key in it) and one
    admin token; the caller stops it."""
    config = root / "relay.yaml"
    config.write_text(f"admin_tokens:\n  {operator}: {token}\n")
    db = root / "relay.db"
    create_key(db, workspace)  # the store exists before the relay opens it
    relay = start_relay(extra_args=("--config", str(config), "--db", str(db)))
    relay.admin_token = token
    return relay, db


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


class Site:
    """The module's relay, its store and config, and the simulators started on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "relay.db"
        self.config = root / "relay.yaml"
        self.config.write_text(
            f"admin_tokens:\n  ops: {ADMIN_TOKEN}\n"
            f"prices:\n  free_included_bytes: {FREE_BYTES}\n  premium_per_gb: {PRICE_PER_GB}\n"
            f"  premium_per_connection_minute: {PRICE_PER_MINUTE}\n"
        )
        self.keys = {name: create_key(self.db, name, plan) for name, plan in
                     (("alpha", None), ("beta", "premium"), ("gamma", None))}
        self.relay: LocalRelay | None = None
        self.procs: list[LocalProcess] = []

    def start(self) -> LocalRelay:
        self.relay = start_relay(extra_args=("--config", str(self.config), "--db", str(self.db), "--verbose"))
        self.relay.admin_token = ADMIN_TOKEN  # operator "ops" in the config
        return self.relay

    def simulator(self, key: str, workspace: str, *, wait: bool = True) -> LocalProcess:
        assert self.relay is not None
        online = len(self.relay.peers(None, "simulator", workspace))
        proc = start_simulator(self.relay.url, key, allow=(TEST_ENVS_MODULE,), env=sim_env())
        self.procs.append(proc)
        if wait:
            self.relay.wait_for(None, "simulator", online + 1, workspace=workspace)
        return proc

    def session(self, workspace: str) -> tuple[str, str, LocalProcess, gym.Env]:
        """A new key of ``workspace``, a simulator of it online, and this process's trainer text env."""
        key_id, key = create_key(self.db, workspace)
        sim = self.simulator(key, workspace)
        assert init(self, key)
        return key_id, key, sim, gym.make(f"{TEST_ENVS_MODULE}:EchoText-v0")

    def admin(self) -> httpx.Client:
        assert self.relay is not None
        return httpx.Client(
            base_url=self.relay.http_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10.0
        )

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        if self.relay is not None:
            self.relay.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    site = Site(tmp_path_factory.mktemp("accounts"))
    site.start()
    yield site
    site.stop()


def init(site: Site, key: str | None, **kwargs) -> bool:
    assert site.relay is not None
    kwargs.setdefault("simulator_wait", 10.0)
    return remoterl_ray.init(key, relay_url=site.relay.url, timeout=30.0, connect_timeout=10.0, **kwargs)


# -- the store, without a relay ----------------------------------------------


def test_store_keeps_only_salted_hashes(tmp_path):
    store = AccountStore(tmp_path / "a.db")
    one, two = store.create_key("team"), store.create_key("team")
    other = store.create_key("other")
    for reserved in ("open", "ws-0123456789ab", "bad name"):
        with pytest.raises(ValueError, match="workspace name"):
            store.create_key(reserved)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("a.db")]
    assert len(files) >= 2 and all(p.stat().st_mode & 0o077 == 0 for p in files)  # the WAL too
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for issued in (one, two, other):
        assert issued.key.encode() not in raw and issued.key.split("_")[-1].encode() not in raw
    store = AccountStore(tmp_path / "a.db")
    assert store.identify(one.key)[0].workspace == "team"
    forged = one.key[:-1] + ("0" if one.key[-1] != "0" else "1")
    swapped = other.key.replace(other.key.split("_")[1], one.key.split("_")[1])  # right tag, wrong workspace
    for bad in (forged, one.key[:-5], swapped, "rrl_" + "0" * 10 + "_" + one.key_id + "_" + "0" * 48, ""):
        assert store.identify(bad) == (None, "unknown")
    store.revoke(one.key_id)
    assert store.identify(one.key) == (None, "revoked")
    assert store.identify(two.key)[0].key_id == two.key_id
    # All keys of a workspace share one affinity header, and it reveals neither key nor name.
    assert session_id_for(one.key) == session_id_for(two.key) != session_id_for(other.key)
    assert "team" not in session_id_for(one.key) and one.key_id not in session_id_for(one.key)


def test_usage_summary_counts_and_prices(tmp_path):
    store = AccountStore(tmp_path / "u.db")
    key = store.create_key("paid", "premium")
    old = time.time() - 40 * 86400
    store.record([UsageDelta(key.key_id, "paid", "trainer", 1, 1, 1, 60.0)], now=old)
    store.record([
        UsageDelta(key.key_id, "paid", "trainer", 600_000_000, 400_000_000, 500, 120.0),
        UsageDelta(key.key_id, "paid", "simulator", 400_000_000, 600_000_000, 500, 60.0),
    ])
    store.record([UsageDelta(key.key_id, "paid", "trainer", 0, 0, 100, 0.0)])  # adds to the same hour's row
    prices = Prices(premium_per_gb=0.5, premium_per_connection_minute=0.01)
    recent = usage_summary(store.usage("paid", since=time.time() - 86400), prices)["workspaces"]["paid"]
    assert (recent["bytes_in"], recent["bytes_out"], recent["steps"], recent["steps_served"]) == (
        1_000_000_000, 1_000_000_000, 600, 500)
    assert recent["trainer_minutes"] == pytest.approx(2.0) and recent["simulator_minutes"] == pytest.approx(1.0)
    assert recent["cost"] == pytest.approx(2 * 0.5 + 3 * 0.01)
    everything = usage_summary(store.usage("paid"), prices)["workspaces"]["paid"]
    assert everything["steps"] == 601 and everything["trainer_minutes"] == pytest.approx(3.0)
    assert store.state().used_bytes.get("paid") == 2_000_000_000  # this month only: the old row is not in it


def test_operator_cookies_cannot_be_forged_from_the_token_digest():
    digest = token_digest("a-long-admin-token-0123")
    auth = AdminAuth({"alice": digest}, secret="ab" * 32)
    good = auth.cookie_for("alice")
    assert auth.operator_for_cookie(good) == "alice"
    # Someone who read the digest (e.g. from a Serve config) but not the store's secret:
    forger = AdminAuth({"alice": digest}, secret="cd" * 32)
    assert auth.operator_for_cookie(forger.cookie_for("alice")) is None
    operator, expires, signature = good.split("|")
    assert auth.operator_for_cookie(f"{operator}|{int(expires) + 10**6}|{signature}") is None
    far = AdminAuth({"alice": digest}, secret="ab" * 32).cookie_for("alice", now=time.time() + 10**6)
    assert auth.operator_for_cookie(far) is None  # an expiry beyond the cookie's life is refused
    assert auth.operator_for_token("a-long-admin-token-0123") == "alice" and auth.operator_for_token("x") is None


# -- keys and workspaces on the relay -------------------------------------------


def test_cli_keys_create_prints_for_scripts(site):
    """`KEY=$(remoterl keys create --workspace w --quiet)`: the key alone; --json: one record."""
    quiet = cli("keys", "create", "--workspace", "scripted", "--quiet", db=site.db)
    key = quiet.stdout.strip()
    assert quiet.stdout == key + "\n" and " " not in key and len(key) > 20
    record = json.loads(cli("keys", "create", "--workspace", "scripted", "--json", db=site.db).stdout)
    assert set(record) == {"key_id", "workspace", "plan", "key"} and record["workspace"] == "scripted"
    listed = json.loads(cli("keys", "list", "--json", db=site.db).stdout)
    assert record["key_id"] in {row["key_id"] for row in listed}
    assert init(site, key, simulator_wait=0.5) is False  # accepted by the relay (no simulator yet)
    remoterl_ray.shutdown()


def test_a_short_admin_token_is_one_line_that_does_not_echo_it(tmp_path):
    out = cli("relay", "--admin-token", "tiny-secret", "--port", "0", db=tmp_path / "r.db", check=False)
    assert out.returncode == 2
    assert "at least 16 characters" in out.stderr and "tiny-secret" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr and "pydantic" not in out.stderr


def test_cli_keys_list_and_revoke(site):
    key_id, key = create_key(site.db, "delta")
    listed = json.loads(cli("keys", "list", "--json", db=site.db).stdout)
    mine = [row for row in listed if row["key_id"] == key_id]
    assert mine and mine[0]["workspace"] == "delta" and mine[0]["revoked"] is None
    assert key not in json.dumps(listed)
    out = cli("keys", "revoke", key_id, db=site.db)
    assert f"revoked key {key_id}" in out.stdout
    listed = json.loads(cli("keys", "list", "--json", db=site.db).stdout)
    assert [row["revoked"] for row in listed if row["key_id"] == key_id][0] is not None
    missing = cli("keys", "revoke", "ffffffff", db=site.db, check=False)
    assert missing.returncode == 2 and "no key with id" in missing.stderr
    bad = cli("keys", "create", "--workspace", "no spaces please", db=site.db, check=False)
    assert bad.returncode != 0 and "workspace name" in bad.stderr


def test_workspaces_never_see_each_other(site, trainer_cleanup, capsys):
    _, alpha = site.keys["alpha"]
    _, beta = site.keys["beta"]
    site.simulator(alpha, "alpha")
    assert "remoterl: workspace alpha (free plan)" in site.procs[-1].output()
    # beta has no simulator: alpha's are invisible to it.
    assert init(site, beta, simulator_wait=1.5) is False
    assert init(site, alpha)
    assert "remoterl: workspace alpha (free plan)" in capsys.readouterr().err
    env = gym.make(f"{TEST_ENVS_MODULE}:EchoText-v0")
    env.reset(options={"note": "alpha"})
    channel = env.unwrapped.channel
    # A beta trainer naming alpha's live channel is refused, and gets none of its frames.
    intruder = RelayConnection.open(site.relay.url, Hello(role="trainer", api_key=beta))
    try:
        with pytest.raises(RemoteRLError) as refused:
            reply = intruder.call([(Kind.REQUEST, Op.STEP, channel, codec.packb({"action": 0}))], 5.0)[0]
            raise reply.error or AssertionError("a foreign channel answered")
        assert refused.value.code is ErrorCode.UNKNOWN_CHANNEL
        with pytest.raises(RemoteRLError) as none:
            reply = intruder.call([(Kind.CONTROL, Op.NONE, 0, codec.packb(Open(envs=1).model_dump()))], 5.0)[0]
            raise reply.error or AssertionError("beta was given a simulator")
        assert none.value.code is ErrorCode.NO_SIMULATOR
        assert env.step(0)[0] == "alpha"  # alpha's env is untouched
    finally:
        intruder.close()
    workspaces = site.relay.stats()["workspaces"]
    assert "beta" not in workspaces or not workspaces["beta"]["simulators"]


def test_two_keys_of_one_workspace_meet(site, trainer_cleanup):
    second_id, second = create_key(site.db, "alpha")  # alpha already has a simulator (other key)
    assert init(site, second)
    env = gym.make(f"{TEST_ENVS_MODULE}:EchoText-v0")
    obs, info = env.reset(options={"note": "hello"})
    assert obs == "hello" and info["note"] == "hello"
    for _ in range(25):
        env.step(0)
    env.close()
    remoterl_ray.shutdown()

    def metered():
        keys = usage(site.db, "--workspace", "alpha")["workspaces"]["alpha"]["keys"]
        return keys.get(second_id, {}).get("steps") == 25 and keys

    keys = wait_until(metered, 10.0, "the trainer's steps in the usage records")
    sim_key = site.keys["alpha"][0]
    assert keys[sim_key]["steps_served"] >= 25 and keys[sim_key]["simulator_minutes"] > 0
    assert keys[second_id]["bytes_in"] > 0 and keys[second_id]["bytes_out"] > 0


def test_api_key_none_only_in_open_mode(site, trainer_cleanup):
    with pytest.raises(RuntimeError, match="not in open mode"):
        init(site, None)
    open_relay = start_relay(open_mode=True)
    try:
        sim = start_simulator(open_relay.url, None, allow=(TEST_ENVS_MODULE,), env=sim_env())
        try:
            open_relay.wait_for(None, "simulator", 1)
            assert remoterl_ray.init(None, relay_url=open_relay.url, simulator_wait=10.0)
        finally:
            remoterl_ray.shutdown()
            sim.stop()
    finally:
        open_relay.stop()


def test_revoked_key_is_refused_and_its_connections_closed(site, trainer_cleanup):
    key_id, key, sim, env = site.session("epsilon")
    env.reset()
    env.step(0)
    cli("keys", "revoke", key_id, db=site.db)
    wait_until(lambda: not sim.alive(), 10.0, "the simulator of a revoked key to be cut off")
    assert sim.popen.returncode == 2 and "revoked" in sim.output()
    with pytest.raises(AuthenticationError) as cut:
        for _ in range(100):
            env.step(0)
            time.sleep(0.05)
    assert cut.value.code is ErrorCode.KEY_REVOKED
    remoterl_ray.shutdown()
    with pytest.raises(RuntimeError, match="revoked"):
        init(site, key)


def test_free_quota_refuses_new_sessions_and_tells_running_ones(site, trainer_cleanup, caplog):
    _, gamma = site.keys["gamma"]
    site.simulator(gamma, "gamma")
    assert init(site, gamma)
    env = gym.make(f"{TEST_ENVS_MODULE}:EchoText-v0")
    env.reset(options={"note": "x" * 60})
    caplog.set_level("WARNING", logger="remoterl")

    def told() -> bool:
        for _ in range(200):
            env.step(0)
        return any("quota" in r.getMessage() or "includes" in r.getMessage() for r in caplog.records)

    wait_until(told, 60.0, "a quota notice to the running trainer")
    notice = next(r.getMessage() for r in caplog.records if "includes" in r.getMessage())
    assert "gamma" in notice and "free plan" in notice and "running sessions go on" in notice
    env.step(0)  # the running session goes on
    remoterl_ray.shutdown()
    with pytest.raises(QuotaExceededError) as refused:
        init(site, gamma)
    assert refused.value.code is ErrorCode.QUOTA_EXCEEDED and "used" in refused.value.message
    late = start_simulator(site.relay.url, gamma, allow=(TEST_ENVS_MODULE,), env=sim_env())
    site.procs.append(late)
    wait_until(lambda: not late.alive(), 30.0, "a new simulator of an over-quota workspace to be refused")
    assert late.popen.returncode == 2 and "quota_exceeded" in late.output()
    summary = usage(site.db, "--workspace", "gamma")["workspaces"]["gamma"]
    assert summary["bytes_in"] + summary["bytes_out"] >= FREE_BYTES and summary["cost"] == 0


def test_premium_usage_is_priced_from_the_config(site, trainer_cleanup):
    beta_id, beta = site.keys["beta"]
    site.simulator(beta, "beta")
    assert init(site, beta)
    env = gym.make(f"{TEST_ENVS_MODULE}:EchoText-v0")
    env.reset()
    for _ in range(50):
        env.step(1)
    remoterl_ray.shutdown()
    time.sleep(1.5)  # one flush
    summary = usage(site.db, "--workspace", "beta", "--config", str(site.config))
    ws = summary["workspaces"]["beta"]
    minutes = ws["trainer_minutes"] + ws["simulator_minutes"]
    expected = (ws["bytes_in"] + ws["bytes_out"]) / 1e9 * PRICE_PER_GB + minutes * PRICE_PER_MINUTE
    assert ws["plan"] == "premium" and ws["included_bytes"] is None and minutes > 0
    assert ws["cost"] == pytest.approx(expected, abs=1e-6) and ws["cost"] > 0
    table = cli("usage", "--workspace", "beta", "--config", str(site.config), db=site.db).stdout
    assert "beta" in table and "premium" in table and beta_id in table
    future = usage(site.db, "--since", "2999-01-01")
    assert future["workspaces"] == {}


# -- operator actions and admin auth ----------------------------------------------


def test_admin_endpoints_need_the_admin_token(site):
    plain = httpx.Client(base_url=site.relay.http_url, timeout=10.0)
    for path in ("/v1/stats", "/v1/cluster", "/metrics", "/dashboard/api/snapshot", "/dashboard/events"):
        refused = plain.get(path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "auth_failed", path  # one error shape on every endpoint
    assert plain.get("/v1/stats", headers={"Authorization": "Bearer wrong-token-000000"}).status_code == 401
    wrong = plain.post("/dashboard/login", json={"token": "not-the-token"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "auth_failed"
    acted = plain.post("/dashboard/api/actions", json={"action": "block", "target": "alpha"})
    assert acted.status_code == 401
    good = plain.post("/dashboard/login", json={"token": ADMIN_TOKEN})
    assert good.status_code == 200 and good.json()["operator"] == "ops"
    assert plain.get("/dashboard/api/snapshot").status_code == 200  # the login cookie
    with site.admin() as admin:
        assert admin.get("/v1/stats").status_code == 200
        assert admin.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
        unknown = admin.post("/dashboard/api/actions", json={"action": "block", "target": "no-such-workspace"})
        assert unknown.status_code == 404 and "no workspace" in unknown.json()["error"]["message"]
        malformed = admin.post("/dashboard/api/actions", json={"action": "rm -rf /secret-path", "target": "x"})
        assert malformed.status_code == 422 and malformed.json()["error"]["code"] == "bad_payload"
        assert "action" in malformed.json()["error"]["message"] and "secret-path" not in malformed.text
        missing = admin.get("/no/such/page")
        assert missing.status_code == 404 and set(missing.json()) == {"error"}


def test_operator_blocks_a_workspace_and_disconnects_a_simulator(site, trainer_cleanup):
    _, key, sim, env = site.session("zeta")
    env.reset()
    with site.admin() as admin:
        assert admin.post("/dashboard/api/actions", json={"action": "block", "target": "zeta"}).status_code == 200
        env.step(0)  # the running session goes on
        with pytest.raises(WorkspaceBlockedError, match="blocked"):
            RelayConnection.open(site.relay.url, Hello(role="trainer", api_key=key))
        assert admin.post("/dashboard/api/actions", json={"action": "unblock", "target": "zeta"}).status_code == 200
        RelayConnection.open(site.relay.url, Hello(role="trainer", api_key=key)).close()
        remoterl_ray.shutdown()
        [peer] = site.relay.peers(None, "simulator", "zeta")
        assert admin.post("/dashboard/api/actions", json={"action": "disconnect", "target": peer["id"]}).status_code == 200
        wait_until(lambda: not sim.alive(), 10.0, "the disconnected simulator to stop")
        assert sim.popen.returncode == 2 and "disconnected by the relay operator" in sim.output()
        assert site.relay.peers(None, "simulator", "zeta") == []
        audit = admin.get("/dashboard/api/snapshot").json()["audit"]
    mine = [(a["operator"], a["action"], a["target"]) for a in audit if a["target"] in ("zeta", peer["id"])]
    assert mine[:3] == [("ops", "disconnect", peer["id"]), ("ops", "unblock", "zeta"), ("ops", "block", "zeta")]
    assert all(a["at"] > time.time() - 120 for a in audit[:3])


# -- bad input and abuse ------------------------------------------------------------


def text_session(relay: LocalRelay, key: str, workspace: str) -> tuple[LocalProcess, gym.Env]:
    """On a relay of the test's own: a simulator of ``workspace`` online, and this process's trainer text env."""
    sim = start_simulator(relay.url, key, allow=(TEST_ENVS_MODULE,), env=sim_env())
    try:
        relay.wait_for(None, "simulator", 1, workspace=workspace)
        assert remoterl_ray.init(key, relay_url=relay.url, simulator_wait=10.0)
        return sim, gym.make(f"{TEST_ENVS_MODULE}:EchoText-v0")
    except BaseException:
        sim.stop()
        raise


def hello_from(source: str, url: str, api_key: str) -> dict | None:
    """A raw hello from ``source`` (a loopback address); the relay's error record, or None if welcomed."""
    host, port = url.removeprefix("ws://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5.0, source_address=(source, 0))
    with websockets.sync.client.connect(url + "/ws", sock=sock, open_timeout=5.0) as ws:
        ws.send(control_frame(Hello(role="trainer", api_key=api_key)))
        frame = ws.recv(timeout=5.0)
    return codec.unpackb(payload_of(frame)) if unpack_header(frame).kind == Kind.ERROR else None


def test_bad_key_flood_is_rate_limited_per_address_and_loses_no_usage(tmp_path, trainer_cleanup):
    db = tmp_path / "flood.db"
    config = tmp_path / "flood.yaml"
    config.write_text("rate_limit: {max_failures: 5, window_seconds: 30, cooldown_seconds: 5}\n")
    key_id, key = create_key(db, "steady")
    _, real = create_key(db, "victim")
    relay = start_relay(extra_args=("--config", str(config), "--db", str(db)))
    stop = threading.Event()
    sim = None
    try:
        sim, env = text_session(relay, key, "steady")
        env.reset()
        steps = 0

        def step_forever() -> None:
            nonlocal steps
            while not stop.is_set():
                env.step(0)
                steps += 1

        stepper = threading.Thread(target=step_forever, daemon=True)
        stepper.start()
        codes = [hello_from("127.0.0.2", relay.url, forged)["code"]
                 for forged in [real[:-3] + "abc", real[:20], "rrl_" + "1" * 80, "nonsense", real + "0"] * 4]
        assert codes[:5] == ["auth_failed"] * 5 and set(codes[5:]) == {"rate_limited"}
        # Even the real key waits out the cool-down from the flooding address; others never wait.
        assert hello_from("127.0.0.2", relay.url, real)["code"] == "rate_limited"
        assert hello_from("127.0.0.3", relay.url, real) is None
        # An oversized frame from a good peer: a coded error, and the connection still works.
        conn = RelayConnection.open(relay.url, Hello(role="trainer", api_key=real))
        try:
            conn._ws.send(pack(Kind.REQUEST, Op.STEP, 1, 1, b"\0" * (conn.max_frame + 10)))
            frame = conn._ws.recv(timeout=5.0)
            assert codec.unpackb(payload_of(frame))["code"] == "frame_too_large"
        finally:
            conn.close()
        wait_until(lambda: hello_from("127.0.0.2", relay.url, real) is None, 15.0, "the cool-down to end")
        stop.set()
        stepper.join(10)
        remoterl_ray.shutdown()
        wait_until(
            lambda: usage(db, "--workspace", "steady")["workspaces"].get("steady", {}).get("steps") == steps,
            10.0, f"all {steps} steps in the usage records",
        )
    finally:
        stop.set()
        remoterl_ray.shutdown()
        if sim is not None:
            sim.stop()
        relay.stop()


def test_usage_survives_a_relay_restart(tmp_path, trainer_cleanup):
    """A clean stop stores every count; a crash (SIGKILL) loses at most the last flush interval (1 s)."""
    db = tmp_path / "restart.db"
    key_id, key = create_key(db, "durable")
    port = free_port()
    relay = start_relay(port=port, extra_args=("--db", str(db)))
    sim = None
    try:
        sim, env = text_session(relay, key, "durable")
        env.reset()
        for _ in range(40):
            env.step(0)
        relay.stop()  # SIGTERM: a clean shutdown flushes
        assert usage(db, "--workspace", "durable")["workspaces"]["durable"]["keys"][key_id]["steps"] == 40

        relay = start_relay(port=port, extra_args=("--db", str(db)))
        relay.wait_for(None, "simulator", 1, workspace="durable", timeout=60)
        env.reset()  # the env carries on over the new relay
        stamps = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            env.step(0)
            stamps.append(time.monotonic())
        relay.process.kill()  # a crash: no final flush
        killed = time.monotonic()
        stored = usage(db, "--workspace", "durable")["workspaces"]["durable"]["keys"][key_id]["steps"]
        # Everything up to the last flush (at most 1 s before the crash, plus scheduling slack) is kept.
        assert 40 + sum(1 for t in stamps if t < killed - 2.0) <= stored <= 40 + len(stamps)
    finally:
        remoterl_ray.shutdown()
        if sim is not None:
            sim.stop()
        relay.stop()


# -- payloads are never kept -------------------------------------------------------------

MARKER_OUT = "ZQXPAYLOADOUT7F3A"  # trainer -> simulator (reset options)


def test_no_payload_is_stored_shown_or_logged(site, trainer_cleanup):
    *_, env = site.session("eta")
    obs, info = env.reset(options={"note": MARKER_OUT})
    assert obs == MARKER_OUT and info["note"] == MARKER_OUT  # it did cross the relay, both ways
    for _ in range(20):
        obs, *_ = env.step(1)
    assert obs == MARKER_OUT
    with site.admin() as admin:
        wait_until(
            lambda: any(p["workspace"] == "eta" for p in admin.get("/dashboard/api/snapshot").json()["peers"]),
            5.0, "eta on the dashboard")
        time.sleep(1.5)  # a flush
        shown = [admin.get(p).text for p in ("/dashboard", "/dashboard/api/snapshot", "/v1/stats", "/v1/cluster",
                                             "/metrics")]
        assert "remoterl_relay_round_trip_seconds_bucket" in shown[-1]  # the steps above were timed
    remoterl_ray.shutdown()
    stored = b"".join(p.read_bytes() for p in site.db.parent.iterdir() if p.name.startswith(site.db.name))
    logs = site.relay.process.output()
    assert "eta" in logs or "eta" in "".join(shown)  # the places searched are the live ones
    assert MARKER_OUT.encode() not in stored
    assert MARKER_OUT not in logs
    assert all(MARKER_OUT not in text for text in shown)
