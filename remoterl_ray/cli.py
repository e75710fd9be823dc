"""The ``remoterl`` command: relay, simulator, keys, usage, demo."""

from __future__ import annotations

import logging
import os
import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .accounts.store import AccountsError, AccountStore
from .addresses import is_loopback
from .config import (
    DEFAULT_RELAY_URL,
    ENV_ADMIN_TOKEN,
    ENV_API_KEY,
    ENV_CA_FILE,
    ENV_DB,
    ENV_REGION,
    ENV_RELAY_URL,
    resolve_ca_file,
    resolve_resume_window,
    resolve_db,
    resolve_relay_url,
)
from .protocol.errors import RemoteRLError
from .protocol.frames import DEFAULT_MAX_FRAME
from .protocol.limits import MAX_MESSAGE

if TYPE_CHECKING:
    from .relay.settings import RelaySettings

app = typer.Typer(
    name="remoterl",
    help="Remote reinforcement learning: run a relay, serve simulators, issue keys, or try the demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: wraps to the terminal, never cuts defaults or env vars short
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
keys_app = typer.Typer(
    help="Issue, list and revoke API keys (stored as salted hashes).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(keys_app, name="keys")

RelayUrlOption = Annotated[
    str, typer.Option("--relay", envvar=ENV_RELAY_URL, help="Relay URL (ws://, wss://; http(s):// mean them).")
]
ApiKeyOption = Annotated[Optional[str], typer.Option(envvar=ENV_API_KEY, help="API key (or set REMOTERL_API_KEY).")]
DbOption = Annotated[
    Optional[str], typer.Option("--db", envvar=ENV_DB, help="Accounts store (default ~/.remoterl/relay.db).")
]
ConfigOption = Annotated[
    Optional[str], typer.Option("--config", help="Relay config file (YAML): db, admin tokens, prices.")
]


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
    tls_cert: Annotated[
        Optional[str],
        typer.Option("--tls-cert", help="PEM certificate (chain): serve wss:// and https:// only (with --tls-key)."),
    ] = None,
    tls_key: Annotated[
        Optional[str], typer.Option("--tls-key", help="PEM private key of --tls-cert (not encrypted).")
    ] = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="Deploy on Ray Serve (RAY_ADDRESS's cluster, or a local one).")
    ] = False,
    replicas: Annotated[int, typer.Option(min=1, help="With --serve: relay replicas.")] = 1,
    region: Annotated[str, typer.Option(help="With --serve: the region this relay serves.")] = "local",
    public_url: Annotated[
        Optional[str], typer.Option(help="With --serve: the ws(s):// URL simulators should use for this region.")
    ] = None,
    haproxy: Annotated[
        Optional[bool],
        typer.Option("--haproxy/--no-haproxy", help="With --serve: HAProxy ingress (default: if installed)."),
    ] = None,
    direct: Annotated[
        bool, typer.Option("--direct/--no-direct", help="With --serve and HAProxy: clients may dial replicas directly.")
    ] = True,
    max_connections: Annotated[
        Optional[int], typer.Option(min=1, help="Open connections in all (default 8192, kept below the open-file limit).")
    ] = None,
    max_connections_per_address: Annotated[
        Optional[int], typer.Option(min=1, help="Open connections from one address, an IPv6 /64 counting as one (default 1024).")
    ] = None,
    max_pending_per_address: Annotated[
        Optional[int], typer.Option(min=1, help="Connections from one address not yet admitted (default 64).")
    ] = None,
    handshake_timeout: Annotated[
        Optional[float], typer.Option(min=0.1, help="Seconds for a whole HTTP request or upgrade to arrive (default 10).")
    ] = None,
    max_peer_buffer: Annotated[
        Optional[int], typer.Option(min=65536, help="Bytes queued to a peer that does not read before it is cut off (default 64 MiB or 4 frames).")
    ] = None,
    trusted_proxy: Annotated[
        Optional[list[str]],
        typer.Option(
            "--trusted-proxy",
            help="Address of a proxy whose X-Forwarded-For is believed (repeat for several; default: none).",
        ),
    ] = None,
    max_queued: Annotated[
        Optional[int],
        typer.Option("--max-queued-bytes", min=1 << 20, help="Bytes queued to all peers together (default 1 GiB)."),
    ] = None,
    local_stats: Annotated[
        bool,
        typer.Option(
            "--local-stats", help="Without an admin token, answer /v1/stats on loopback (no proxy on this host)."
        ),
    ] = False,
    config: ConfigOption = None,
    db: DbOption = None,
    admin_token: Annotated[
        Optional[str],
        typer.Option(envvar=ENV_ADMIN_TOKEN, help="Admin token of operator 'admin' (dashboard, /v1/stats)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO (default: warnings only).")] = False,
) -> None:
    """Run the relay: embedded (no Ray needed), or on Ray Serve with --serve.

    Keys: account keys from the accounts store (`remoterl keys create`), the
    --api-key values, or any key with --open."""
    from .relay.accounting import LocalAccounts
    from .relay.app import RelayConfig
    from .relay.auth import StaticKeys
    from .relay.server import run_relay

    _logging(verbose)
    tls = _tls_files(tls_cert, tls_key)
    keys = list(api_key or [])
    settings = _settings(config, admin_token)
    db_path = resolve_db(db or settings.db)
    if serve:
        # The store is opened on the head node; its keys are not checked from here.
        shared = settings.model_copy(
            update={"db": db_path, "admin_tokens": {n: f"sha256:{d}" for n, d in settings.admin_digests().items()}}
        )
        _relay_on_serve(
            keys, open_mode, host, port, max_frame, replicas, region, public_url, haproxy, direct, shared, tls,
            verbose=verbose,
        )
        return
    store = AccountStore(db_path)
    active = sum(1 for k in store.list_keys() if k["revoked"] is None)
    if not active and not keys and not open_mode:
        raise typer.BadParameter(
            f"no API key to accept: create one with `remoterl keys create --workspace NAME` (accounts store "
            f"{db_path}), give --api-key, or --open to accept any key",
            param_hint="--api-key",
        )
    try:
        limits = settings.server_limits(
            max_frame,
            max_connections=max_connections,
            max_connections_per_address=max_connections_per_address,
            max_pending_per_address=max_pending_per_address,
            handshake_timeout=handshake_timeout,
            peer_buffer=max_peer_buffer,
            max_queued_bytes=max_queued,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-peer-buffer / limits") from None
    if local_stats:
        settings = settings.model_copy(update={"local_stats": True})
    if open_mode and not is_loopback(host):
        typer.echo(
            "warning: --open on a reachable address: anyone who can connect gets a workspace (one per key; "
            "keyless peers share the workspace 'open'). Use account keys outside a trusted network.",
            err=True,
        )
    mode = "open mode" if open_mode else f"{active} account key(s), {len(keys)} --api-key key(s)"

    def listening(bound: int) -> None:  # said once the socket is bound, never before
        typer.echo(f"remoterl relay on {'wss' if tls else 'ws'}://{host}:{bound} ({mode}; accounts in {db_path})")
        if settings.admin_tokens:
            typer.echo(f"dashboard: {'https' if tls else 'http'}://{host}:{bound}/dashboard")

    try:
        run_relay(
            RelayConfig(
                keys=StaticKeys(keys, open_mode=open_mode),
                accounts=LocalAccounts(store),
                prices=settings.prices,
                admin_tokens=settings.admin_digests(),
                max_frame=max_frame,
                accounts_interval=settings.flush_seconds,
                limiter=settings.limiter,
                **settings.peer_limits(),
            ),
            host=host,
            port=port,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            tls_cert=tls[0] if tls else None,
            tls_key=tls[1] if tls else None,
            limits=limits,
            trusted_proxies=list(trusted_proxy or []) or settings.trusted_proxies,
            on_listening=listening,
        )
    except OSError as exc:  # the address is in use, or not this machine's
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None


def _tls_files(cert: str | None, key: str | None) -> tuple[str, str] | None:
    """Both TLS files (absolute paths) or neither; loaded once here, so that a
    missing, unreadable or mismatched file is one clear line, not a traceback."""
    import ssl

    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither", param_hint="--tls-cert / --tls-key")

    def encrypted() -> bytes:
        raise ValueError("the key file is encrypted; give an unencrypted key (readable by the relay's user only)")

    try:
        for path in (cert, key):
            with open(path, "rb"):
                pass
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as exc:
        raise typer.BadParameter(
            f"cannot serve TLS with certificate {cert} and key {key}: {exc.reason or exc} "
            "(expected PEM files: the certificate chain, and its matching private key)",
            param_hint="--tls-cert / --tls-key",
        ) from None
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {exc.filename}: {exc.strerror}", param_hint="--tls-cert / --tls-key")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tls-key") from None
    return os.path.abspath(cert), os.path.abspath(key)


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
    settings: RelaySettings,
    tls: tuple[str, str] | None,
    *,
    verbose: bool,
) -> None:
    import threading

    from .extras import require

    require("ray.serve", "remoterl relay --serve (the relay on Ray Serve)", "serve")
    from serve_apps.relay import haproxy_enabled
    from serve_apps.run import TLS_UNDER_HAPROXY, deploy, haproxy_available, serve_until, use_haproxy

    from .protocol.affinity import key_digest
    from .simulator.host import stop_on_signals

    if tls and haproxy is None:
        haproxy = False
        typer.echo("note: --tls-cert/--tls-key are served by Serve's proxy; for HAProxy, terminate TLS in front")
    use_haproxy(haproxy_available() if haproxy is None else haproxy)
    if tls and haproxy_enabled():
        raise typer.BadParameter(TLS_UNDER_HAPROXY, param_hint="--tls-cert / --haproxy")
    scheme = "wss" if tls else "ws"
    args = {
        "region": region,
        "api_key_digests": [key_digest(k) for k in keys],  # keys stay out of Serve's config
        "open": open_mode,
        "max_frame": max_frame,
        "direct": direct,
        # Behind one address (not 0.0.0.0), that address is how simulators reach this region.
        "public_url": public_url or (f"{scheme}://{host}:{port}" if host not in ("0.0.0.0", "::") else None),
        "settings": settings.model_dump(),  # admin tokens as digests only
    }
    name = f"relay-{region}"
    try:
        owns_cluster = deploy(
            args, host=host, port=port, replicas=replicas, name=name, tls=tls, say=typer.echo, quiet=not verbose
        )
    except ValueError as exc:  # TLS the cluster's ingress cannot serve, or replicas a local cluster cannot place
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    ingress = "HAProxy" if haproxy_enabled() else "Serve proxy"
    typer.echo(
        f"remoterl relay on Ray Serve at {scheme}://{host}:{port} ({replicas} replica(s), region {region}, {ingress})"
    )
    stop = threading.Event()
    with stop_on_signals(stop):
        serve_until(stop, name, owns_cluster=owns_cluster)


@app.command()
def simulator(
    relay_url: RelayUrlOption = DEFAULT_RELAY_URL,
    api_key: ApiKeyOption = None,
    allow: Annotated[
        Optional[list[str]], typer.Option(
            "--allow",
            help="Repeatable. 'pkg': trainers may use the gymnasium.Env subclasses in pkg and its "
            "submodules as entry points and RLlib creators, and ids 'pkg:Env-v0'. 'pkg.mod:make_env': "
            "that one function (and no other code of pkg.mod). Functions run only when named; ids "
            "already in this simulator's registry need no entry. Added to REMOTERL_ALLOW_MODULES.",
        )
    ] = None,
    max_envs: Annotated[int, typer.Option(help="Most envs this simulator hosts at once.")] = 256,
    allow_processes: Annotated[
        bool,
        typer.Option("--allow-processes", help="Let trainers ask for async vector envs (one process per env)."),
    ] = False,
    env_attributes: Annotated[
        bool,
        typer.Option(
            "--env-attributes/--no-env-attributes",
            help="Let trainers call public methods of their envs and get or set public attributes "
            "(Gymnasium's call/get_attr/set_attr, SB3's env_method).",
        ),
    ] = True,
    max_make_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest make or register request, in bytes (their kwargs reach env constructors).")
    ] = 65_536,
    max_message_mib: Annotated[
        int,
        typer.Option(
            "--max-message-mib",
            min=1,
            help="Largest request taken in, in MiB, however many chunks it comes in (trainers are told at make).",
        ),
    ] = MAX_MESSAGE >> 20,
    name: Annotated[Optional[str], typer.Option(help="Name shown on the relay (default host:pid).")] = None,
    region: Annotated[
        Optional[str],
        typer.Option(envvar=ENV_REGION, help="Relay region to use (default: the one with the lowest round trip)."),
    ] = None,
    ca_file: Annotated[
        Optional[str],
        typer.Option(
            "--ca-file",
            envvar=ENV_CA_FILE,
            help="PEM CA certificate(s) to verify a wss:// relay with, instead of the system trust store.",
        ),
    ] = None,
    resume_window: Annotated[
        Optional[float],
        typer.Option(
            min=0,
            help="Seconds the envs of a channel whose connection dropped (relay restart, network blip) wait "
            "for their trainer to resume them [default: REMOTERL_RESUME_WINDOW, else 120; 0: never].",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO (default: warnings only).")] = False,
) -> None:
    """Serve environments to trainers until Ctrl-C / SIGTERM."""
    from .simulator.allowlist import allowed_modules_from_env
    from .simulator.host import SimulatorHost, run_simulator
    from .transport.discovery import UnknownRegionError

    _logging(verbose)
    modules = list(allow or []) + allowed_modules_from_env()
    try:
        host = SimulatorHost(
            resolve_relay_url(relay_url),
            api_key,
            allow_modules=modules,
            max_envs=max_envs,
            name=name,
            region=region,
            ca_file=resolve_ca_file(ca_file),
            allow_processes=allow_processes,
            allow_attributes=env_attributes,
            max_make_bytes=max_make_bytes,
            resume_window=resolve_resume_window(resume_window),
            max_message=max_message_mib << 20,
        )
    except ValueError as exc:  # a malformed --allow entry or REMOTERL_ALLOW_MODULES
        raise typer.BadParameter(str(exc), param_hint="--allow / REMOTERL_ALLOW_MODULES") from None
    typer.echo(f"remoterl simulator {host.name} -> {relay_url} (allow: {', '.join(modules) or 'registry only'})")
    try:
        run_simulator(host)
    except (RemoteRLError, UnknownRegionError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _settings(config: str | None, admin_token: str | None = None) -> RelaySettings:
    """The config file's settings; ``admin_token`` adds operator "admin"."""
    from pydantic import ValidationError

    from .relay.settings import load_settings

    try:
        settings = load_settings(config)
        if admin_token:
            settings = settings.model_validate(
                {**settings.model_dump(), "admin_tokens": {**settings.admin_tokens, "admin": admin_token}}
            )
    except ValidationError as exc:  # one line per error, never the values (admin tokens are secrets)
        lines = [f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
                 for e in exc.errors(include_input=False, include_url=False)]  # fmt: skip
        raise typer.BadParameter("; ".join(lines), param_hint="--config / --admin-token") from None
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config / --admin-token") from None
    return settings


def _store(db: str | None, config: str | None = None) -> AccountStore:
    return AccountStore(resolve_db(db or _settings(config).db))


class Plan(str, Enum):
    free = "free"
    premium = "premium"


@keys_app.command("create")
def keys_create(
    workspace: Annotated[str, typer.Option(help="The workspace the key opens (created on first use).")],
    plan: Annotated[Optional[Plan], typer.Option(help="The workspace's plan (default: free, or as it is).")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print the key alone (for scripts: KEY=$(...)).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print key_id, workspace, plan and key as JSON.")] = False,
) -> None:
    """Issue a key. It is shown once: only its salted hash is stored."""
    try:
        issued = _store(db, config).create_key(workspace, plan.value if plan else None)
    except AccountsError as exc:
        raise typer.BadParameter(str(exc)) from None
    if quiet:
        typer.echo(issued.key)
        return
    if as_json:
        import json

        record = {"key_id": issued.key_id, "workspace": issued.workspace, "plan": issued.plan, "key": issued.key}
        typer.echo(json.dumps(record))
        return
    typer.echo(f"key id:    {issued.key_id}")
    typer.echo(f"workspace: {issued.workspace} (plan {issued.plan})")
    typer.echo(f"key:       {issued.key}")
    typer.echo("Store the key now: it cannot be shown again.", err=True)


@keys_app.command("list")
def keys_list(
    db: DbOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List key ids, their workspace and plan, and whether they are revoked (never the keys)."""
    import json

    rows = _store(db, config).list_keys()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table("key id", "workspace", "plan", "created (UTC)", "revoked (UTC)")
    for row in rows:
        table.add_row(row["key_id"], row["workspace"], row["plan"], _utc(row["created"]), _utc(row["revoked"]))
    _print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (from `remoterl keys list`).")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a key: new sessions are refused, its live connections closed within seconds."""
    try:
        result = _store(db, config).revoke(key_id)
    except AccountsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    already = " (it already was)" if result["already_revoked"] else ""
    typer.echo(f"revoked key {key_id} of workspace {result['workspace']}{already}")


@app.command()
def status(
    relay_url: RelayUrlOption = DEFAULT_RELAY_URL,
    api_key: ApiKeyOption = None,
    ca_file: Annotated[
        Optional[str], typer.Option("--ca-file", envvar=ENV_CA_FILE, help="PEM CA certificate(s) for a wss:// relay.")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.5, help="Seconds to wait for the relay.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What a trainer here would reach: the relay, whether the key is accepted, its
    workspace, the simulators online per region with round-trip times, the quota.
    Exit status 2 if the relay cannot be reached or refuses the key."""
    import json

    from .diagnosis import diagnose

    report = diagnose(resolve_relay_url(relay_url), api_key, ca_file=resolve_ca_file(ca_file), timeout=timeout)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.lines():
            typer.echo(line)
    if not report.ok:
        raise typer.Exit(2)


@app.command()
def usage(
    workspace: Annotated[Optional[str], typer.Option(help="Only this workspace.")] = None,
    since: Annotated[
        Optional[str], typer.Option(help="From this date or time (ISO 8601, UTC; default: this month).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Traffic, steps, connection-minutes and cost per workspace and key."""
    import json

    from .accounts.plans import usage_summary
    from .accounts.store import month_start
    from .protocol.messages import human_bytes

    settings = _settings(config)
    start = _parse_since(since) if since else month_start()
    rows = _store(db, config).usage(workspace, start)
    summary = {"since": _utc(start), **usage_summary(rows, settings.prices)}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.table import Table

    def cells(counts: dict, cap: str = "") -> list[str]:
        return [
            human_bytes(counts["bytes_in"]),
            human_bytes(counts["bytes_out"]),
            human_bytes(counts["bytes_in"] + counts["bytes_out"]) + cap,
            f"{counts['steps']} / {counts['steps_served']}",
            f"{counts['trainer_minutes']:.1f} / {counts['simulator_minutes']:.1f}",
        ]

    table = Table(
        "workspace", "key id", "plan", "in", "out", "traffic", "steps taken / served", "minutes trainer / sim",
        f"cost ({summary['currency']})", title=f"usage since {summary['since']} UTC",
    )  # fmt: skip
    for name, ws in summary["workspaces"].items():
        cap = f" of {human_bytes(ws['included_bytes'])}" if ws["included_bytes"] is not None else ""
        table.add_row(name, "(all)", ws["plan"] or "-", *cells(ws, cap), f"{ws['cost']:.2f}")
        for key_id, key in ws["keys"].items():
            table.add_row("", key_id, "", *cells(key), "")
    _print(table)


def _print(table: object) -> None:
    """A rich table, wide enough for every column when the output is not a terminal."""
    from rich.console import Console

    Console(width=160 if not sys.stdout.isatty() else None).print(table)


def _parse_since(text: str) -> float:
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date like 2026-11-01 or 2026-11-01T12:00", param_hint="--since")
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _utc(t: float | None) -> str:
    from datetime import datetime, timezone

    return "" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M")


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
    from .extras import MissingExtraError

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app(standalone_mode=True)
    except MissingExtraError as exc:  # an optional part not installed: one line naming the extra
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
