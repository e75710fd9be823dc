"""The operator dashboard in a real headless Chromium (Debian's), driven by Playwright.

Log in (a wrong token first), watch simulators and a stepping trainer appear,
disconnect a simulator, block its workspace and see a new trainer refused;
watch the charts draw from live data and a far simulator (behind a delaying
proxy) stand out against its workspace's median.
Set REMOTERL_SCREENSHOT=docs/dashboard.png to refresh the docs' screenshot.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gymnasium as gym
import pytest

import remoterl_ray
from conftest import TEST_ENVS_MODULE, sim_env
from remoterl_ray.local import LocalProcess, LocalRelay, start_simulator
from remoterl_ray.protocol.errors import WorkspaceBlockedError
from latency_proxy import LatencyProxy
from test_accounts import create_key, operator_relay, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-admin-token-0123456789"

sync_api = pytest.importorskip("playwright.sync_api", reason="the test command installs playwright")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is installed by the README's test command"
)


@pytest.fixture(scope="module")
def relay(tmp_path_factory) -> Iterator[tuple[LocalRelay, Path]]:
    relay, db = operator_relay(tmp_path_factory.mktemp("dashboard"), "dana", TOKEN, "robots")
    yield relay, db
    relay.stop()


@pytest.fixture(scope="module")
def page(relay, tmp_path_factory) -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


@pytest.fixture
def sims() -> Iterator[list[LocalProcess]]:
    """Simulator processes a test starts: stopped after it (after its trainer, by fixture order)."""
    started: list[LocalProcess] = []
    yield started
    for sim in started:
        sim.stop()


@contextmanager
def stepping(step: Callable[[], object]) -> Iterator[None]:
    """Call ``step`` over and over in a thread while inside."""
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [step() for _ in iter(stop.is_set, True)], daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def test_operator_logs_in_watches_disconnects_and_blocks(relay, page, sims, trainer_cleanup):
    relay, db = relay
    _, key = create_key(db, "labs")
    _, busy_key = create_key(db, "robots")
    page.goto(f"{relay.http_url}/dashboard")
    page.fill("#token", "wrong-token-xxxxxxxx")
    page.click("#login-button")
    page.wait_for_selector("#login-error:has-text('wrong admin token')")
    page.fill("#token", TOKEN)
    page.click("#login-button")
    page.wait_for_selector("#who:has-text('operator dana')")
    # A simulator appears on the page (pushed, no reload).
    sims.append(start_simulator(relay.url, key, allow=(TEST_ENVS_MODULE,), env=sim_env()))
    row = page.wait_for_selector("tr[data-role=simulator][data-workspace=labs]")
    peer_id = row.get_attribute("data-peer")
    assert peer_id and peer_id in relay.stats()["workspaces"]["labs"]["simulators"][0]["id"]

    # Another workspace trains meanwhile: its steps and steps/s count up live.
    sims.append(start_simulator(relay.url, busy_key, allow=(TEST_ENVS_MODULE,), env=sim_env()))
    relay.wait_for(None, "simulator", 1, workspace="robots")
    assert remoterl_ray.init(busy_key, relay_url=relay.url, simulator_wait=10.0)
    env = gym.make(f"{TEST_ENVS_MODULE}:EchoText-v0")
    env.reset()
    with stepping(lambda: env.step(0)):  # one trainer session per process: it ends before the next init
        page.wait_for_selector("tr[data-role=trainer][data-workspace=robots]")
        assert "Resumes" in page.inner_text("#online")  # channels resumed, per peer (0 here)
        page.wait_for_function(
            "() => [...document.querySelectorAll('tr[data-role=trainer][data-workspace=robots] td.num')]"
            ".some((td, i) => i === 3 && parseFloat(td.textContent) > 0)"
        )

    # Disconnect the simulator: its row goes, the process ends with the operator's reason.
    page.click(f"button[data-testid='disconnect-{peer_id}']")
    page.wait_for_selector(f"tr[data-peer='{peer_id}']", state="detached")
    wait_until(lambda: not sims[0].alive(), 10.0, "the disconnected simulator to exit")
    assert "disconnected by the relay operator" in sims[0].output()

    # Block the workspace: the page says so, and a new trainer is refused.
    page.click("button[data-testid='block-labs']")
    page.wait_for_selector("tr[data-workspace=labs] .pill.blocked")
    with pytest.raises(WorkspaceBlockedError, match="blocked by the relay operator"):
        remoterl_ray.init(key, relay_url=relay.url, simulator_wait=2.0)
    page.wait_for_selector("#audit td:has-text('block')")
    audit = page.inner_text("#audit")
    assert "dana" in audit and "disconnect" in audit and peer_id in audit and "labs" in audit

    page.click("button[data-testid='unblock-labs']")
    page.wait_for_selector("tr[data-workspace=labs] .pill.open")


FAR = 0.03  # seconds the proxy holds each chunk, each way: the far simulator's steps take 60 ms more


def test_charts_draw_live_data_and_the_far_simulator_stands_out(relay, page, sims, trainer_cleanup):
    relay, db = relay
    _, key = create_key(db, "fleet", "free")
    with LatencyProxy(relay.host, relay.port, FAR) as far:
        for name, url in (("near-1", relay.url), ("near-2", relay.url), ("far", f"ws://127.0.0.1:{far.port}")):
            sims.append(start_simulator(url, key, allow=(TEST_ENVS_MODULE,), env=sim_env(), extra_args=("--name", name)))
        online = relay.wait_for(None, "simulator", 3, workspace="fleet")
        far_id = next(p["id"] for p in online if p["name"] == "far")
        assert remoterl_ray.init(key, relay_url=relay.url, simulator_wait=10.0)
        envs = [gym.make(f"{TEST_ENVS_MODULE}:Counter-v0") for _ in range(3)]  # one on each (least loaded first)
        for env in envs:
            env.reset(seed=0)

        def step_all() -> None:
            for env in envs:
                if any(env.step(1)[2:4]):
                    env.reset()

        with stepping(step_all):
            # Steps/s: the workspace's line rises above the axis as samples arrive, one a second.
            page.wait_for_function(
                """() => {
                  const line = document.querySelector("#throughput-chart polyline[data-series='workspace:fleet']");
                  if (!line) return false;
                  const ys = line.getAttribute("points").split(" ").map((p) => parseFloat(p.split(",")[1]));
                  const axis = parseFloat(document.querySelector("#throughput-chart line.axis").getAttribute("y1"));
                  return ys.length >= 5 && ys.some((y) => y < axis - 0.1);  // above zero: steps counted
                }"""
            )
            # Step latency: the far simulator is flagged, the near ones are not; the table agrees.
            page.wait_for_selector(f"#latency-chart g[data-peer='{far_id}'][data-slow=true]")
            flags = page.eval_on_selector_all(
                "#latency-chart g[data-workspace=fleet]", "rows => rows.map(r => [r.dataset.peer, r.dataset.slow])"
            )
            assert dict(flags) == {p["id"]: str(p["id"] == far_id).lower() for p in online}, flags
            page.wait_for_selector(f"tr.slow[data-peer='{far_id}']")
            assert page.locator("#places-chart g[data-region=local] rect.simulators").count() == 1
            assert page.locator("#traffic-chart g[data-workspace=fleet]").count() == 1
            shot = os.environ.get("REMOTERL_SCREENSHOT")
            if shot:  # for the docs: some history first
                page.wait_for_function(
                    "() => document.querySelector(\"#throughput-chart polyline[data-series='workspace:fleet']\")"
                    ".getAttribute('points').split(' ').length >= 25", timeout=60_000
                )
                page.screenshot(path=shot, full_page=True)

            # Details on demand: one workspace's peers only, then everyone's again.
            page.select_option("#focus", "fleet")
            page.wait_for_function("() => document.querySelector('#shown').textContent.includes('of 4 peers')")
            rows = page.eval_on_selector_all("tr[data-peer]", "rows => rows.map(r => r.dataset.workspace)")
            assert set(rows) == {"fleet"}
            page.select_option("#focus", "")
            page.wait_for_function("() => document.querySelector('#focus').value === ''")
        remoterl_ray.shutdown()  # the trainer, then the far simulator, before their proxy closes
        sims.pop().stop()


def test_logout_returns_to_the_login_form(relay, page):
    page.click("#logout")
    page.wait_for_selector("#login-form", state="visible")
    assert page.evaluate("fetch('dashboard/api/snapshot').then(r => r.status)") == 401
