"""``remoterl status``: what a trainer on this machine would reach, checked step by step.

The first thing to run when something is off: which relay the settings
point at, whether it answers, whether it accepts the key, the workspace and
its quota, and the simulators online in each region with the round trip to
that region. Each step stops at the first failure with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .protocol.errors import RemoteRLError
from .trainer.session import TrainerSession
from .trainer.settings import TrainerSettings
from .transport.discovery import measure_rtt


@dataclass
class RegionStatus:
    name: str
    url: str | None
    simulators: int
    rtt_ms: float | None


@dataclass
class Diagnosis:
    relay_url: str
    reachable: bool = False
    key_accepted: bool = False
    problem: str | None = None
    workspace: str | None = None
    quota: str | None = None
    regions: list[RegionStatus] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        return {
            "relay": self.relay_url,
            "reachable": self.reachable,
            "key_accepted": self.key_accepted,
            "problem": self.problem,
            "workspace": self.workspace,
            "quota": self.quota,
            "regions": [vars(r) for r in self.regions],
            "simulators": sum(r.simulators for r in self.regions),
        }

    def lines(self) -> list[str]:
        out = [f"relay:      {self.relay_url} ({'reachable' if self.reachable else 'NOT reachable'})"]
        if self.reachable:
            out.append(f"key:        {'accepted' if self.key_accepted else 'REFUSED'}")
        if self.workspace is not None:
            out.append(f"workspace:  {self.workspace}")
        if self.quota:
            out.append(f"quota:      {self.quota.removeprefix('remoterl: ')}")
        for region in self.regions:
            rtt = f"{region.rtt_ms:.1f} ms" if region.rtt_ms is not None else "not timed"
            out.append(f"region:     {region.name or '-'}: {region.simulators} simulator(s) online, round trip {rtt}")
        if self.key_accepted:
            total = sum(r.simulators for r in self.regions)
            out.append(f"simulators: {total} online" + ("" if total else " (start one: remoterl simulator)"))
        if self.problem:
            out.append(f"problem:    {self.problem}")
        return out


def diagnose(relay_url: str, api_key: str | None, *, ca_file: str | None = None, timeout: float = 5.0) -> Diagnosis:
    report = Diagnosis(relay_url)
    if measure_rtt(relay_url, tries=1, timeout=timeout, ca_file=ca_file) is None:
        report.problem = f"nothing answers /healthz at {relay_url}: is the relay running, and is this its address?"
        return report
    report.reachable = True
    settings = TrainerSettings(
        relay_url=relay_url, api_key=api_key, ca_file=ca_file, timeout=timeout, connect_timeout=timeout
    )
    session = TrainerSession(settings)  # what a trainer's init does, without patching anything
    try:
        conn = session.links.connect()
        if conn is None:
            report.problem = f"the relay at {relay_url} answers HTTP but no WebSocket connection succeeded"
            return report
        report.key_accepted = True
        report.workspace = conn.welcome.workspace
        if conn.welcome.quota is not None:
            report.quota = conn.welcome.quota.banner(conn.welcome.workspace)
        regions = session.links.locate()
    except RemoteRLError as exc:  # refused: the key, the workspace, TLS
        report.problem = str(exc)
        return report
    finally:
        session.close()
    for region in regions:
        url = region.url or relay_url  # None: the region this connection reached
        rtt = measure_rtt(url, timeout=timeout, ca_file=ca_file)
        report.regions.append(RegionStatus(region.name, url, region.simulators, None if rtt is None else rtt * 1000))
    return report
