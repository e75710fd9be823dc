"""The relay on Ray Serve, on a real local multi-node Ray cluster.

One cluster for the module: a head node running Serve's proxy, a node with
the custom resource ``region-near`` and one with ``region-far``. The "far"
region is reached through a latency-injecting TCP proxy, so simulators see it
as farther away. Trainers, simulators and the relay replicas are all real
processes speaking real WebSockets through Serve's proxy.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import remoterl_ray
from remoterl_ray.accounts.store import AccountStore
from remoterl_ray.protocol.errors import AuthenticationError
from remoterl_ray.local import LocalProcess, free_port, start_simulator
from remoterl_ray.relay.auth import workspace_for_key
from remoterl_ray.trainer.remote_env import RemoteEnv
from remoterl_ray.trainer.remote_vector_env import RemoteVectorEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings

from conftest import idle_peers, new_key, sim_env, trainer_steps_once
from test_grafana_dashboard import dashboard, queried_metrics
from latency_proxy import LatencyProxy

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

FAR_DELAY = 0.03  # seconds each way through the latency proxy
ADMIN_TOKEN = "serve-admin-token-0123456789"


@dataclass
class ServeCluster:
    port: int
    far_port: int
    keys: list[str]
    near_node: str
    far_node: str
    db: str
    procs: list[LocalProcess] = field(default_factory=list)

    def url(self, region: str) -> str:
        port = self.far_port if region == "far" else self.port
        return f"ws://127.0.0.1:{port}/{region}"

    def http(self, path: str, timeout: float = 5.0, data: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(data).encode() if data is not None else None,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())

    def cluster_stats(self) -> dict[str, Any]:
        return self.http("/near/v1/cluster")

    def simulator(self, key: str, region_url: str, *extra: str) -> LocalProcess:
        proc = start_simulator(region_url, key, extra_args=extra, env=sim_env())
        self.procs.append(proc)
        return proc

    def where(self, key: str, workspace: str | None = None) -> dict[str, list[tuple[str, str, int]]]:
        """role -> [(region, replica, count)] of the key's workspace (or ``workspace``), from the gathered state."""
        workspace = workspace or workspace_for_key(key)
        found: dict[str, list[tuple[str, str, int]]] = {"trainers": [], "simulators": []}
        for region, info in self.cluster_stats()["regions"].items():
            for replica, stats in info["replicas"].items():
                ws = stats["workspaces"].get(workspace)
                for role in found:
                    if ws and ws[role]:
                        found[role].append((region, replica, len(ws[role])))
        return found

    def wait_where(
        self, key: str, check: Any, timeout: float = 30.0, workspace: str | None = None
    ) -> dict[str, list[tuple[str, str, int]]]:
        deadline = time.monotonic() + timeout
        while True:
            placed = self.where(key, workspace)
            if check(placed):
                return placed
            if time.monotonic() > deadline:
                raise AssertionError(f"workspace of {key[:12]}... never matched; last seen: {placed}")
            time.sleep(0.25)


def deploy(
    cluster: ServeCluster, region: str, replicas: int, public_url: str, *, nodes: str | None = None, **args: Any
) -> None:
    """Deploy region ``region`` pinned to the nodes carrying ``region-<nodes or region>``."""
    from serve_apps.relay import relay_app

    app = relay_app(
        {
            "region": region,
            "api_keys": cluster.keys,
            "public_url": public_url,
            "sync_interval": 0.5,
            "settings": {"db": cluster.db, "admin_tokens": {"ops": ADMIN_TOKEN}},
            **args,
        },
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 0.1, "resources": {f"region-{nodes or region}": 0.001}},
    )
    serve.run(app, name=f"relay-{region}", route_prefix=f"/{region}")


@pytest.fixture(scope="module")
def serve_cluster(tmp_path_factory) -> Iterator[ServeCluster]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    near = cluster.add_node(num_cpus=1, resources={"region-near": 1})
    far = cluster.add_node(num_cpus=1, resources={"region-far": 1})
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    with LatencyProxy("127.0.0.1", port, FAR_DELAY) as far_proxy:
        db = str(tmp_path_factory.mktemp("serve-accounts") / "relay.db")  # the head node's store: this machine
        keys = [new_key(f"serve{i}") for i in range(24)]
        state = ServeCluster(port, far_proxy.port, keys, near.node_id, far.node_id, db)
        deploy(state, "near", 3, state.url("near"))
        deploy(state, "far", 1, state.url("far"))
        try:
            yield state
        finally:
            for proc in state.procs:
                proc.stop()
            serve.shutdown()
            ray.shutdown()
            cluster.shutdown()


def replica_nodes(app: str) -> list[str]:
    details = serve.context._get_global_client().get_serve_details()
    replicas = details["applications"][app]["deployments"]["Relay"]["replicas"]
    return [r["node_id"] for r in replicas if r["state"] == "RUNNING"]


def test_replicas_run_on_the_nodes_of_their_region(serve_cluster: ServeCluster) -> None:
    assert replica_nodes("relay-near") == [serve_cluster.near_node] * 3
    assert replica_nodes("relay-far") == [serve_cluster.far_node]
    expected = {"near": serve_cluster.url("near"), "far": serve_cluster.url("far")}
    deadline = time.monotonic() + 30  # each replica publishes its region at its next sync
    while (listed := {r["name"]: r["url"] for r in serve_cluster.http("/near/v1/regions")["regions"]}) != expected:
        assert time.monotonic() < deadline, listed
        time.sleep(0.25)


def test_workspaces_meet_their_simulators_across_three_replicas(serve_cluster: ServeCluster) -> None:
    keys = serve_cluster.keys[:6]
    for key in keys:
        serve_cluster.simulator(key, serve_cluster.url("near"), "--region", "near")
    sessions = []
    try:
        for key in keys:
            session = TrainerSession(TrainerSettings(relay_url=serve_cluster.url("near"), api_key=key))
            sessions.append(session)
            assert session.links.wait_for_simulators(1, 30) == 1
            env = RemoteEnv(session, "CartPole-v1")
            obs, _ = env.reset(seed=3)
            local = gym.make("CartPole-v1")
            assert np.array_equal(obs, local.reset(seed=3)[0])
            assert np.array_equal(env.step(1)[0], local.step(1)[0])
            env.close()
        replicas_used = set()
        for key in keys:
            placed = serve_cluster.wait_where(key, lambda p: p["trainers"] and p["simulators"])
            # The trainer and its simulator sit in one replica, and in no other.
            assert [(r, rep) for r, rep, _ in placed["trainers"]] == [(r, rep) for r, rep, _ in placed["simulators"]]
            replicas_used.add(placed["trainers"][0][1])
        near = serve_cluster.cluster_stats()["regions"]["near"]["replicas"]
        assert len(near) == 3 and replicas_used <= set(near)
    finally:
        for session in sessions:
            session.close()


def test_accounts_are_shared_by_every_replica_and_region(serve_cluster: ServeCluster) -> None:
    """Keys from one store: two keys of a workspace meet in one replica, workspaces on several
    replicas never see each other, and operator actions reach whichever replica holds the peer."""
    store = AccountStore(serve_cluster.db)
    teams: dict[str, tuple[str, str, LocalProcess]] = {}
    replicas: set[str] = set()
    for i in range(12):  # until the workspaces sit on at least two replicas
        name = f"team{i}"
        sim_key, trainer_key = store.create_key(name).key, store.create_key(name).key
        proc = serve_cluster.simulator(sim_key, serve_cluster.url("near"), "--region", "near")
        teams[name] = (sim_key, trainer_key, proc)
        placed = serve_cluster.wait_where(sim_key, lambda p: p["simulators"], workspace=name)
        replicas.add(placed["simulators"][0][1])
        if len(teams) >= 3 and len(replicas) >= 2:
            break
    assert len(replicas) >= 2
    for name, (sim_key, trainer_key, _) in teams.items():
        session = TrainerSession(TrainerSettings(relay_url=serve_cluster.url("near"), api_key=trainer_key))
        try:
            assert session.links.wait_for_simulators(1, 30) == 1
            assert session.links.conn.welcome.workspace == name and session.links.conn.welcome.quota.plan == "free"
            assert sum(region.simulators for region in session.links.locate()) == 1  # its own, nobody else's
            env = RemoteEnv(session, "CartPole-v1")
            env.reset(seed=0)
            env.step(1)
            env.close()
            placed = serve_cluster.wait_where(trainer_key, lambda p: p["trainers"], workspace=name)
            assert [(r, rep) for r, rep, _ in placed["trainers"]] == [(r, rep) for r, rep, _ in placed["simulators"]]
        finally:
            session.close()

    snapshot = serve_cluster.http("/near/dashboard/api/snapshot")
    places = snapshot["places"]  # peers per region and replica, every replica listed
    assert {"near", "far"} <= {p["region"] for p in places} and sum(p["region"] == "near" for p in places) == 3
    assert set(teams) <= set(snapshot["workspaces"])
    regions = serve_cluster.http("/near/v1/cluster")["regions"]
    (first, (first_key, _, first_proc)), (second, (_, _, second_proc)) = list(teams.items())[:2]
    # A revoked key is cut off on whichever replica holds it; a disconnect reaches any replica.
    store.revoke(store.identify(first_key)[0].key_id)
    [(_, _, _)] = serve_cluster.where(first_key, first)["simulators"]
    peer = next(
        p["id"]
        for info in regions.values()
        for stats in info["replicas"].values()
        for p in stats["workspaces"].get(second, {}).get("simulators", [])
    )
    serve_cluster.http("/near/dashboard/api/actions", data={"action": "disconnect", "target": peer})
    deadline = time.monotonic() + 15
    while first_proc.alive() or second_proc.alive():
        assert time.monotonic() < deadline, "revoked or disconnected simulators still connected"
        time.sleep(0.2)
    assert "revoked" in first_proc.output() and "disconnected by the relay operator" in second_proc.output()
    audit = serve_cluster.http("/near/dashboard/api/snapshot")["audit"]
    assert (audit[0]["operator"], audit[0]["action"], audit[0]["target"]) == ("ops", "disconnect", peer)
    for _, _, proc in teams.values():
        proc.stop()


def test_relay_counters_are_exported_as_ray_metrics(serve_cluster: ServeCluster) -> None:
    key = serve_cluster.keys[10]
    serve_cluster.simulator(key, serve_cluster.url("near"), "--region", "near")
    trainer_steps_once(serve_cluster.url("near"), key)
    nodes = [(n["NodeManagerAddress"], n["MetricsExportPort"]) for n in ray.nodes() if n["Alive"]]

    def scrape() -> str:
        texts = []
        for address, port in nodes:
            with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=5) as resp:
                texts.append(resp.read().decode())
        return "\n".join(texts)

    deadline = time.monotonic() + 90  # Ray's metrics agents export every few seconds
    wanted = f'workspace="{workspace_for_key(key)}"'
    while not any("remoterl_relay_env_steps" in line and wanted in line for line in scrape().splitlines()):
        assert time.monotonic() < deadline, "the relay's counters never reached Ray's metrics"
        time.sleep(2)
    lines = [line for line in scrape().splitlines() if wanted in line and line.startswith("ray_remoterl_relay")]
    names = {line.split("{")[0] for line in lines}
    assert any("bytes" in n for n in names) and any("peers" in n for n in names), names
    assert any('direction="in"' in line and 'region="near"' in line for line in lines)

    # Every metric the Grafana dashboard queries (prefix "ray_") is exported: refusals too.
    with pytest.raises(AuthenticationError):
        remoterl_ray.init("rl-no-such-key-0000000000", role="trainer", relay_url=serve_cluster.url("near"),
                          connect_timeout=10)  # fmt: skip
    assert not remoterl_ray.is_initialized()
    wanted_names = queried_metrics(dashboard(), "ray_")

    def missing() -> set[str]:
        exported = {line.split("{")[0].split(" ")[0] for line in scrape().splitlines() if not line.startswith("#")}
        exported |= {name.removesuffix(suffix) for name in exported for suffix in ("_bucket", "_sum", "_count")}
        return wanted_names - exported

    while gone := missing():
        assert time.monotonic() < deadline + 60, f"not exported: {sorted(gone)}"
        time.sleep(2)
    step_buckets = [line for line in scrape().splitlines()
                    if line.startswith("ray_remoterl_relay_round_trip_seconds_bucket{") and wanted in line
                    and 'op="step"' in line and 'le="+Inf"' in line]  # fmt: skip
    assert step_buckets and float(step_buckets[0].rsplit(" ", 1)[1]) >= 1, step_buckets


def test_simulator_chooses_the_nearest_region(serve_cluster: ServeCluster) -> None:
    near_key, far_key = serve_cluster.keys[6], serve_cluster.keys[7]
    # Both are told to use the far region's URL; only the first may pick by round trip.
    serve_cluster.simulator(near_key, serve_cluster.url("far"))
    serve_cluster.simulator(far_key, serve_cluster.url("far"), "--region", "far")
    placed = serve_cluster.wait_where(near_key, lambda p: p["simulators"])
    assert [region for region, _, _ in placed["simulators"]] == ["near"]
    placed = serve_cluster.wait_where(far_key, lambda p: p["simulators"])
    assert [region for region, _, _ in placed["simulators"]] == ["far"]


def test_trainer_steps_across_two_regions_at_once(serve_cluster: ServeCluster) -> None:
    key = serve_cluster.keys[8]
    serve_cluster.simulator(key, serve_cluster.url("near"), "--region", "near")
    serve_cluster.simulator(key, serve_cluster.url("near"), "--region", "far")
    serve_cluster.wait_where(key, lambda p: sorted(r for r, _, _ in p["simulators"]) == ["far", "near"])
    session = TrainerSession(TrainerSettings(relay_url=serve_cluster.url("near"), api_key=key))
    try:
        assert session.links.wait_for_simulators(2, 30) == 2
        remote = RemoteVectorEnv(session, "CartPole-v1", 4, vectorization_mode="sync")
        local = gym.make_vec("CartPole-v1", 4, vectorization_mode="sync")
        assert remote.shard_sizes == [2, 2]
        assert len({id(c) for c in remote._remote.conns}) == 2  # one connection per region
        assert np.array_equal(remote.reset(seed=11)[0], local.reset(seed=11)[0])
        rng = np.random.default_rng(0)
        for _ in range(60):
            actions = rng.integers(0, 2, size=4)
            got, want = remote.step(actions), local.step(actions)
            for a, b in zip(got[:4], want[:4]):
                assert np.array_equal(a, b)
        remote.close()
        placed = serve_cluster.where(key)
        assert sorted(region for region, _, _ in placed["trainers"]) == ["far", "near"]
    finally:
        session.close()


def test_an_observation_larger_than_a_frame_crosses_a_replica_in_chunks(serve_cluster: ServeCluster) -> None:
    """24 MiB observations: past the relay's frame limit and Serve's own 16 MiB WebSocket messages."""
    key = serve_cluster.keys[9]
    serve_cluster.simulator(key, serve_cluster.url("near"), "--region", "near", "--allow", "remoterl_testenvs")
    session = TrainerSession(TrainerSettings(relay_url=serve_cluster.url("near"), api_key=key))
    try:
        assert session.links.wait_for_simulators(1, 30) == 1
        env = RemoteEnv(session, "remoterl_testenvs:BigObs-v0", size=6 << 20)
        local = gym.make("remoterl_testenvs:BigObs-v0", size=6 << 20)
        np.testing.assert_array_equal(env.reset(seed=2)[0], local.reset(seed=2)[0])
        for action in (1, 0):
            got, want = env.step(action), local.step(action)
            np.testing.assert_array_equal(got[0], want[0])
            assert got[1:] == want[1:]
        env.close()
    finally:
        session.close()


def test_one_replica_holds_a_thousand_connections(serve_cluster: ServeCluster) -> None:
    """1000 simulators of one workspace stay open on one replica; other workspaces step on."""
    crowd, other = serve_cluster.keys[20], serve_cluster.keys[21]
    serve_cluster.simulator(other, serve_cluster.url("near"), "--region", "near")
    session = TrainerSession(TrainerSettings(relay_url=serve_cluster.url("near"), api_key=other))
    try:
        with idle_peers(serve_cluster.url("near"), [crowd], 1000) as ready:
            assert ready == ["ready 1000 direct=0"]  # Serve's proxy offers no direct route
            placed = serve_cluster.wait_where(crowd, lambda p: sum(n for _, _, n in p["simulators"]) == 1000)
            assert len(placed["simulators"]) == 1  # all in one replica
            assert session.links.wait_for_simulators(1, 30) == 1
            env = RemoteEnv(session, "CartPole-v1")
            env.reset(seed=0)
            for _ in range(50):
                if env.step(0)[2]:
                    env.reset()
            env.close()
    finally:
        session.close()


def test_idle_simulators_follow_their_workspace_when_replicas_change(serve_cluster: ServeCluster) -> None:
    """Scale 1 -> 3 replicas, redeploy, scale back to 1, while a trainer steps: new trainers
    still find their simulators, and every step of the stepping one equals a local env's
    (its channels resume wherever its connection was cut)."""
    keys = serve_cluster.keys[12:18]
    url = f"ws://127.0.0.1:{serve_cluster.port}/scale"
    deploy(serve_cluster, "scale", 1, url, nodes="near")
    session = None
    try:
        for key in keys:
            serve_cluster.simulator(key, url, "--region", "scale")
        for key in keys:
            serve_cluster.wait_where(key, lambda p: p["simulators"])

        def trainers_find_their_simulators(among: list[str] = keys) -> None:
            for key in among:
                trainer_steps_once(url, key)

        session = TrainerSession(TrainerSettings(relay_url=url, api_key=keys[0], simulator_wait=30))
        local = gym.make_vec("CartPole-v1", 2, vectorization_mode="sync")
        vec = RemoteVectorEnv(session, "CartPole-v1", 2, vectorization_mode="sync")
        np.testing.assert_array_equal(vec.reset(seed=0)[0], local.reset(seed=0)[0])
        rng = np.random.default_rng(0)

        def stepping_while(change: Callable[[], None], settled: Callable[[], bool]) -> int:
            """Step (comparing with the local env) in a thread while ``change()`` runs here,
            until ``settled()``, then five steps more; the number of steps."""
            stop, steps, errors = threading.Event(), [0], []

            def step() -> None:
                try:
                    while not stop.is_set():
                        actions = rng.integers(0, 2, 2)
                        for got, want in zip(vec.step(actions)[:4], local.step(actions)[:4]):
                            np.testing.assert_array_equal(got, want)
                        steps[0] += 1
                        time.sleep(0.02)
                except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                    errors.append(exc)

            thread = threading.Thread(target=step)
            thread.start()
            try:
                change()
                deadline = time.monotonic() + 90
                while not settled() and not errors:  # old replicas keep peers for graceful_shutdown_timeout_s
                    assert time.monotonic() < deadline, "the change never settled"
                    time.sleep(0.1)
                until = steps[0] + 5
                while steps[0] < until and not errors and thread.is_alive():
                    time.sleep(0.05)
            finally:
                stop.set()
                thread.join(60)
            assert not errors, errors
            return steps[0]

        def replicas() -> int:
            return len(serve_cluster.cluster_stats()["regions"]["scale"]["replicas"])

        # More replicas: the hash ring changes under everyone. Idle simulators follow their workspace;
        # the stepping trainer and its busy simulator stay where they are (busy peers never move), so
        # only the other workspaces' new trainers are sure to find theirs.
        stepping_while(lambda: deploy(serve_cluster, "scale", 3, url, nodes="near"), lambda: replicas() >= 3)
        trainers_find_their_simulators(keys[1:])
        # Every replica replaced (new args): the stepping trainer's connection is cut, and resumes.
        stepping_while(
            lambda: deploy(serve_cluster, "scale", 3, url, nodes="near", max_frame=8 << 20),
            lambda: session.metrics_snapshot()["resumes"] >= 1,
        )
        # The stepping pair resumed on whichever new replica was up first and, busy, stays there
        # even when the ring later puts its workspace elsewhere: again only the others are sure.
        trainers_find_their_simulators(keys[1:])
        assert replicas() >= 3
        # Back to one replica: two of three go, with whoever they held.
        stepping_while(
            lambda: deploy(serve_cluster, "scale", 1, url, nodes="near", max_frame=8 << 20), lambda: replicas() == 1
        )
        trainers_find_their_simulators()
        vec.close()
    finally:
        if session is not None:
            session.close()
        serve.delete("relay-scale")
