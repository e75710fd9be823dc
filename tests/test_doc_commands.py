"""The shell blocks of the README and docs/ run as written.

The blocks of one page run in order in one working directory, as a reader
would type them, with the placeholders a reader fills in replaced:
``relay-host`` and ``relay.example.org`` by this machine, ports 8000 and
8443 by free ones, the key id ``3f9a2b1c`` by a real one, the config's
``/var/lib/remoterl/`` by the page's directory; the demo gets a small
training budget. ``$KEY`` and ``$ADMIN``
are set as the README's quickstart sets them, and a relay from the same
accounts store is running, named by ``REMOTERL_RELAY_URL`` and
``REMOTERL_API_KEY``: a machine where that quickstart was followed. ``HOME`` is the page's own directory, so
nothing is written to the real one.

A command that serves until stopped (``remoterl relay``, ``remoterl
simulator``) runs in the background; the block waits for the line that says
it is up, and the page's services are stopped with Ctrl-C (SIGINT) at the
end. Every other command must exit with status 0. A block that cannot run
here says why in a ``<!-- not run: ... -->`` line above it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.doc_blocks import ROOT, Block, blocks

from remoterl_ray.local import free_port

BASH = [block for block in blocks() if block.lang == "bash"]
FILES = [block for block in blocks() if block.file_name]
# A service line, and the line it prints once it is up.
SERVICES = [
    (re.compile(r"^\s*(\w+=\S+\s+)*remoterl relay\b"), r"^remoterl relay on "),
    (re.compile(r"^\s*(\w+=\S+\s+)*remoterl simulator\b"), r"^simulator \S+ online at "),
]
READY_SECONDS = 300
BLOCK_SECONDS = 900


def logical_lines(code: str) -> list[str]:
    """The block's commands: backslash continuations joined, blank lines and comments dropped."""
    out, pending = [], ""
    for raw in code.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line)
    return out


READY = (
    r"""ready() {  # LOG PATTERN PID: wait until the service's log says it is up
  local deadline=$((SECONDS + %d))
  until grep -qE -- "$2" "$1"; do
    if ! kill -0 "$3" 2>/dev/null || ((SECONDS > deadline)); then echo "not up: $(cat "$1")" >&2; return 1; fi
    sleep 0.2
  done
}"""
    % READY_SECONDS
)


class Page:
    """One page's working directory, environment, placeholders and background services."""

    def __init__(self, page: Path, work: Path) -> None:
        self.page, self.work = page, work
        self.ports = {"8000": str(free_port()), "8443": str(free_port())}
        self.services = 0
        home, bin_dir = work / "home", work / "bin"
        home.mkdir()
        bin_dir.mkdir()
        (bin_dir / "python").symlink_to(sys.executable)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("REMOTERL_", "RAY_ADDRESS"))}
        self.env.update(
            HOME=str(home),
            PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        )
        user_pip = Path.home() / ".config" / "pip" / "pip.conf"
        if user_pip.exists():  # the machine's package sources, which live in the real home
            self.env.setdefault("PIP_CONFIG_FILE", str(user_pip))
        for name in (
            "HAPROXY_METRICS_PORT",
            "HAPROXY_STATS_PORT",
            "FALLBACK_PROXY_HTTP_PORT",
        ):
            self.env[f"RAY_SERVE_{name}"] = str(free_port())  # beside any other Serve of the suite
        for block in FILES:
            (work / block.file_name).write_text(self.fill(block.code))
        issued = json.loads(self.bash("remoterl keys create --workspace docs --json"))
        self.env.update(KEY=issued["key"], KEY_ID=issued["key_id"], ADMIN=secrets.token_urlsafe(24))
        relay_port = free_port()
        self.bash(self.script([f"remoterl relay --port {relay_port}"]))
        self.env.update(REMOTERL_RELAY_URL=f"ws://127.0.0.1:{relay_port}", REMOTERL_API_KEY=issued["key"])

    @property
    def cwd(self) -> Path:
        # The README's commands run in the checkout (they install "."); the pages' in their own directory.
        return ROOT if self.page.name == "README.md" else self.work

    def fill(self, text: str) -> str:
        text = text.replace("relay-host", "127.0.0.1").replace("relay.example.org", "localhost")
        text = text.replace("IP:10.0.0.5", "IP:127.0.0.1").replace("3f9a2b1c", "$KEY_ID")
        text = text.replace("/var/lib/remoterl/", f"{self.work}/")
        text = text.replace("python -m remoterl demo", "python -m remoterl demo --timesteps 4096")  # a small budget
        return re.sub(r"(?<=[: ])(8000|8443)\b", lambda m: self.ports[m[1]], text)

    def script(self, lines: list[str]) -> str:
        """One bash script for the lines: a service runs in the background, in a process
        group of its own (``set -m``), and the script goes on once it says it is up."""
        out = ["set -euo pipefail -m", READY]
        for line in lines:
            ready = next((up for pattern, up in SERVICES if pattern.search(line)), None)
            if ready is None:
                out.append(line)
                continue
            self.services += 1
            log = self.work / f"service-{self.services}.log"
            out += [
                f"{{\n{line}\n}} > {log} 2>&1 &",  # on its own line: it may end in a comment
                f"echo $! >> {self.work}/pids",
                f"ready {log} {shlex.quote(ready)} $!",
            ]
        return "\n".join(out)

    def bash(self, script: str) -> str:
        out = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                             timeout=BLOCK_SECONDS)  # fmt: skip
        assert out.returncode == 0, f"failed:\n{script}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        return out.stdout

    def run(self, block: Block) -> None:
        self.bash(self.script(logical_lines(self.fill(block.code))))

    def services_started(self) -> list[int]:
        pid_file = self.work / "pids"
        return [int(p) for p in pid_file.read_text().split()] if pid_file.exists() else []


def stop_groups(pids: list[int], timeout: float = 60.0) -> list[int]:
    """Ctrl-C (SIGINT) the process groups ``pids`` lead, all at once; SIGKILL those
    still alive after ``timeout``, and return them."""
    alive = []
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGINT)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if _group_alive(pid)]
    for pid in alive:
        os.killpg(pid, signal.SIGKILL)
    return alive


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def page_of(tmp_path_factory) -> Iterator[Callable[[Path], Page]]:
    opened: dict[Path, Page] = {}

    def page(path: Path) -> Page:
        if path not in opened:
            opened[path] = Page(path, tmp_path_factory.mktemp(path.stem))
        return opened[path]

    yield page
    stuck = stop_groups([pid for page_ in opened.values() for pid in page_.services_started()])
    assert not stuck, f"services that did not stop on Ctrl-C within 60 s: {stuck}"


def test_every_shell_block_is_run_or_says_why_not():
    assert len(BASH) >= 15
    for block in BASH:
        assert block.not_run is None or len(block.not_run) > 20, f"{block.where}: say why it cannot run"
    assert len([b for b in BASH if b.not_run is None]) >= 8


@pytest.mark.parametrize("block", BASH, ids=[block.where for block in BASH])
def test_shell_block_runs_as_written(page_of, block: Block):
    if block.not_run is not None:
        pytest.skip(block.not_run)
    page_of(block.page).run(block)
