"""The fenced blocks of the README and docs/, for the tests that run them as written.

A line just above a block may say something about it:

* ``<!-- not run: why -->``: the block cannot run on a test machine (a cloud
  account, a Kubernetes cluster, minutes of measurement); the reason names
  where else it is checked.
* ``<!-- file: NAME -->``: the block is a file the commands of that page use
  (``relay.yaml``); the shell tests write it into the page's working directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"(?P<before>[^\n]*)\n(?P<indent>[ ]*)```(?P<lang>\w*)\n(?P<code>.*?)(?P=indent)```",
    re.S,
)
NOT_RUN = re.compile(r"<!-- not run: (?P<why>[^>]+) -->")
FILE = re.compile(r"<!-- file: (?P<name>[\w.-]+) -->")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    not_run: str | None
    file_name: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(lang: str | None = None) -> list[Block]:
    """Every fenced block (of ``lang`` if given), in page order."""
    out = []
    for page in FILES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if lang is not None and match["lang"] != lang:
                continue
            skip, name = NOT_RUN.search(match["before"]), FILE.search(match["before"])
            indent = len(match["indent"])
            code = "".join(line[indent:] for line in match["code"].splitlines(keepends=True))
            out.append(
                Block(
                    page=page,
                    line=text[: match.start("code")].count("\n"),
                    lang=match["lang"],
                    code=code,
                    not_run=skip["why"] if skip else None,
                    file_name=name["name"] if name else None,
                )
            )
    return out
