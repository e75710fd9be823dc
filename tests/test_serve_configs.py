"""The shipped Serve configs: valid for Serve and for the relay, and `serve run` really serves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

from remoterl_ray.local import LocalProcess, free_port, start_simulator, wait_http
from remoterl_ray.trainer.remote_env import RemoteEnv
from remoterl_ray.trainer.session import TrainerSession
from remoterl_ray.trainer.settings import TrainerSettings

SERVE_APPS = Path(__file__).resolve().parents[1] / "serve_apps"


def load(name: str) -> dict:
    return yaml.safe_load((SERVE_APPS / name).read_text())


def kuberay(name: str) -> tuple[dict, dict]:
    """A RayService manifest and the Serve config embedded in it (``serveConfigV2`` is YAML text)."""
    manifest = load(f"kuberay/{name}")
    return manifest, yaml.safe_load(manifest["spec"]["serveConfigV2"])


@pytest.mark.parametrize(
    "name", ["local.yaml", "regions.yaml", "kuberay/rayservice.yaml", "kuberay/rayservice-regions.yaml"]
)
def test_configs_are_valid_serve_configs_with_valid_relay_args(name: str) -> None:
    from ray.serve.schema import ServeDeploySchema
    from serve_apps.relay import RelayArgs

    config = kuberay(name.removeprefix("kuberay/"))[1] if name.startswith("kuberay/") else load(name)
    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.request_timeout_s is None  # a timeout would close WebSockets
    for app in config["applications"]:
        assert app["import_path"] == "serve_apps.relay:build"
        args = dict(app["args"])
        tokens = args.get("settings", {}).get("admin_tokens", {})
        if any("REPLACE" in token for token in tokens.values()):
            with pytest.raises(ValueError, match="64 hex digits"):
                RelayArgs.model_validate(args)  # the placeholder cannot be deployed by mistake
            args["settings"] = {**args["settings"], "admin_tokens": {name: "sha256:" + "0" * 64 for name in tokens}}
        relay_args = RelayArgs.model_validate(args)
        assert relay_args.route_prefix == app["route_prefix"]
        [deployment] = app["deployments"]
        assert deployment["autoscaling_config"]["target_ongoing_requests"] >= 1
        if name.endswith("regions.yaml"):
            assert deployment["ray_actor_options"]["resources"] == {f"region-{relay_args.region}": 0.001}


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayservice-regions.yaml"])
def test_kuberay_manifests_give_every_deployment_what_it_asks_for(name: str) -> None:
    import json

    manifest, config = kuberay(name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    cluster = manifest["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    [head_container] = head["containers"]
    mounts = {m["mountPath"] for m in head_container["volumeMounts"]}
    offered: set[str] = set()
    for group in cluster["workerGroupSpecs"]:
        resources = group["rayStartParams"].get("resources")
        if resources:  # KubeRay passes it to `ray start --resources`: a JSON object in a quoted string
            offered |= set(json.loads(json.loads(resources)))
        [container] = group["template"]["spec"]["containers"]
        assert container["image"] == head_container["image"]  # one image, with remoterl[serve] in it
    for app in config["applications"]:
        settings = app["args"].get("settings", {})
        assert not app["args"].get("open"), "a cluster relay does not run in open mode"
        assert str(Path(settings["db"]).parent) in mounts  # the accounts store survives the head pod
        for deployment in app["deployments"]:
            asked = set(deployment["ray_actor_options"].get("resources", {}))
            assert asked <= offered, (app["name"], asked, offered)
    if name == "rayservice-regions.yaml":  # the same regions as serve_apps/regions.yaml
        assert [a["args"]["region"] for a in config["applications"]] == [
            a["args"]["region"] for a in load("regions.yaml")["applications"]
        ]


def test_cluster_launcher_config_has_a_node_type_per_region() -> None:
    cluster = yaml.safe_load((SERVE_APPS / "cluster" / "regions.yaml").read_text())
    regions = {app["args"]["region"] for app in load("regions.yaml")["applications"]}
    carried = {
        name[len("region-") :]
        for node_type in cluster["available_node_types"].values()
        for name in node_type["resources"]
        if name.startswith("region-")
    }
    assert carried == regions


def test_serve_run_local_config_serves_a_trainer(tmp_path: Path) -> None:
    """`serve run serve_apps/local.yaml` on a fresh local Ray: a simulator and a trainer meet through it."""
    serve_cli = Path(sys.executable).with_name("serve")
    env = dict(os.environ, RAY_ADDRESS="local")
    env.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
    config = yaml.safe_load((SERVE_APPS / "local.yaml").read_text())
    config["http_options"]["port"] = port = free_port()  # the documented config, on a port nobody else holds
    local_config = tmp_path / "local.yaml"
    local_config.write_text(yaml.safe_dump(config))
    run = LocalProcess([str(serve_cli), "run", str(local_config)], env=env)
    sim = None
    session = None
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", run, timeout=240)
        sim = start_simulator(f"ws://127.0.0.1:{port}", "a-key")
        session = TrainerSession(TrainerSettings(relay_url=f"ws://127.0.0.1:{port}", api_key="a-key"))
        assert session.links.wait_for_simulators(1, 60) == 1
        remote, local = RemoteEnv(session, "CartPole-v1"), gym.make("CartPole-v1")
        assert np.array_equal(remote.reset(seed=4)[0], local.reset(seed=4)[0])
        assert np.array_equal(remote.step(0)[0], local.step(0)[0])
        remote.close()
    finally:
        if session is not None:
            session.close()
        if sim is not None:
            sim.stop()
        if run.alive():
            run.popen.send_signal(signal.SIGINT)  # serve run shuts Serve and its Ray down on Ctrl-C
            try:
                run.popen.wait(60)
            except subprocess.TimeoutExpired:
                run.kill()
        run.stop()


def construct_replica(args: dict) -> None:
    """What a replica runs before its own HTTP server starts: the deployment class's constructor."""
    import asyncio

    from serve_apps.relay import Relay

    cls = Relay.func_or_class
    replica = cls.__new__(cls)
    result = replica.__init__(args)  # Serve's ingress wrapper makes it a coroutine
    if asyncio.iscoroutine(result):
        asyncio.run(result)


def test_replicas_believe_forwarded_for_only_from_named_proxies(monkeypatch) -> None:
    from uvicorn.middleware.proxy_headers import _TrustedHosts

    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    construct_replica({"api_keys": ["k"]})
    trusted = _TrustedHosts(os.environ["FORWARDED_ALLOW_IPS"])
    assert "127.0.0.1" not in trusted and "::1" not in trusted  # uvicorn's default would trust loopback
    construct_replica({"api_keys": ["k"], "settings": {"trusted_proxies": ["10.0.0.5"]}})
    trusted = _TrustedHosts(os.environ["FORWARDED_ALLOW_IPS"])
    assert "10.0.0.5" in trusted and "127.0.0.1" not in trusted
