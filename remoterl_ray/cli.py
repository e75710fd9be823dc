"""The ``remoterl`` command: relay, simulator, demo."""

from __future__ import annotations

import logging
import os
from enum import Enum
from typing import Annotated, Optional

import typer

from .config import DEFAULT_RELAY_URL, ENV_API_KEY, ENV_REGION, ENV_RELAY_URL
from .protocol.errors import RemoteRLError
from .protocol.frames import DEFAULT_MAX_FRAME

app = typer.Typer(
    name="remoterl",
    help="Remote reinforcement learning: run a relay, serve simulators, or try the demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )


@app.command()
def relay(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        Optional[list[str]], typer.Option("--api-key", help="An accepted API key (repeat for several).")
    ] = None,
    open_mode: Annotated[
        bool, typer.Option("--open", help="Accept any key (each its own workspace) and no key at all.")
    ] = False,
    max_frame: Annotated[int, typer.Option(help="Largest frame payload in bytes.")] = DEFAULT_MAX_FRAME,
    ping_interval: Annotated[float, typer.Option(help="Seconds between heartbeats to each peer.")] = 10.0,
    ping_timeout: Annotated[float, typer.Option(help="Seconds a peer may take to answer one.")] = 20.0,
    serve: Annotated[
        bool, typer.Option("--serve", help="Deploy on Ray Serve (RAY_ADDRESS's cluster, or a local one).")
    ] = False,
    replicas: Annotated[int, typer.Option(min=1, help="With --serve: relay replicas.")] = 1,
    region: Annotated[str, typer.Option(help="With --serve: the region this relay serves.")] = "local",
    public_url: Annotated[
        Optional[str], typer.Option(help="With --serve: the ws:// URL simulators should use for this region.")
    ] = None,
    haproxy: Annotated[
        Optional[bool],
        typer.Option("--haproxy/--no-haproxy", help="With --serve: HAProxy ingress (default: if installed)."),
    ] = None,
    direct: Annotated[
        bool, typer.Option("--direct/--no-direct", help="With --serve and HAProxy: clients may dial replicas directly.")
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the relay: embedded (no Ray needed), or on Ray Serve with --serve."""
    from .relay.app import RelayConfig
    from .relay.auth import StaticKeys
    from .relay.server import run_relay

    _logging(verbose)
    keys = list(api_key or [])
    if not keys and not open_mode:
        raise typer.BadParameter("give at least one --api-key, or --open to accept any key", param_hint="--api-key")
    if serve:
        _relay_on_serve(keys, open_mode, host, port, max_frame, replicas, region, public_url, haproxy, direct)
        return
    typer.echo(f"remoterl relay on ws://{host}:{port} ({'open mode' if open_mode else f'{len(keys)} key(s)'})")
    run_relay(
        RelayConfig(keys=StaticKeys(keys, open_mode=open_mode), max_frame=max_frame),
        host=host,
        port=port,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    )


def _relay_on_serve(
    keys: list[str],
    open_mode: bool,
    host: str,
    port: int,
    max_frame: int,
    replicas: int,
    region: str,
    public_url: str | None,
    haproxy: bool | None,
    direct: bool,
) -> None:
    import threading

    from serve_apps.relay import haproxy_enabled
    from serve_apps.run import deploy, haproxy_available, serve_until, use_haproxy

    from .protocol.affinity import key_digest
    from .simulator.host import stop_on_signals

    use_haproxy(haproxy_available() if haproxy is None else haproxy)
    args = {
        "region": region,
        "api_key_digests": [key_digest(k) for k in keys],  # keys stay out of Serve's config
        "open": open_mode,
        "max_frame": max_frame,
        "direct": direct,
        # Behind one address (not 0.0.0.0), that address is how simulators reach this region.
        "public_url": public_url or (f"ws://{host}:{port}" if host not in ("0.0.0.0", "::") else None),
    }
    name = f"relay-{region}"
    owns_cluster = deploy(args, host=host, port=port, replicas=replicas, name=name)
    ingress = "HAProxy" if haproxy_enabled() else "Serve proxy"
    typer.echo(f"remoterl relay on Ray Serve at ws://{host}:{port} ({replicas} replica(s), region {region}, {ingress})")
    stop = threading.Event()
    with stop_on_signals(stop):
        serve_until(stop, name, owns_cluster=owns_cluster)


@app.command()
def simulator(
    relay_url: Annotated[
        str, typer.Option("--relay", envvar=ENV_RELAY_URL, help="Relay URL (ws:// or wss://).")
    ] = DEFAULT_RELAY_URL,
    api_key: Annotated[
        Optional[str], typer.Option(envvar=ENV_API_KEY, help="API key (or set REMOTERL_API_KEY).")
    ] = None,
    allow: Annotated[
        Optional[list[str]], typer.Option("--allow", help="Module whose entry points trainers may register.")
    ] = None,
    max_envs: Annotated[int, typer.Option(help="Most envs this simulator hosts at once.")] = 256,
    name: Annotated[Optional[str], typer.Option(help="Name shown on the relay (default host:pid).")] = None,
    region: Annotated[
        Optional[str],
        typer.Option(envvar=ENV_REGION, help="Relay region to use (default: the one with the lowest round trip)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve environments to trainers until Ctrl-C / SIGTERM."""
    from .simulator.allowlist import allowed_modules_from_env
    from .simulator.host import SimulatorHost, run_simulator
    from .transport.discovery import UnknownRegionError

    _logging(verbose)
    modules = list(allow or []) + allowed_modules_from_env()
    host = SimulatorHost(relay_url, api_key, allow_modules=modules, max_envs=max_envs, name=name, region=region)
    typer.echo(f"remoterl simulator {host.name} -> {relay_url} (allow: {', '.join(modules) or 'registry only'})")
    try:
        run_simulator(host)
    except (RemoteRLError, UnknownRegionError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


class DemoFramework(str, Enum):
    sb3 = "sb3"
    rllib = "rllib"


@app.command()
def demo(
    framework: Annotated[DemoFramework, typer.Option(help="Training library.")] = DemoFramework.sb3,
    envs: Annotated[int, typer.Option(help="Envs the trainer steps, spread over the simulators.")] = 16,
    simulators: Annotated[int, typer.Option(help="Simulator processes to start.")] = 2,
    timesteps: Annotated[int, typer.Option(help="Most env-steps to train for.")] = 150_000,
    target: Annotated[float, typer.Option(help="Stop once the mean episode return reaches this.")] = 475.0,
    logdir: Annotated[Optional[str], typer.Option(help="TensorBoard log dir (default: a new temp dir).")] = None,
) -> None:
    """Train PPO on CartPole through a local relay and simulator processes."""
    from .demo import run_demo

    run_demo(
        framework=framework.value,
        num_envs=envs,
        num_simulators=simulators,
        timesteps=timesteps,
        target=target,
        logdir=logdir,
    )


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
