"""The documents in docs/ (but jsonrpc.md, which test_openrpc.py keeps in step with the code),
README.md and CHANGELOG.md: every task document and stage in a json block of docs/tasks.md is
one that tasks.create accepts, every json block parses, and every link to a file of the
repository or to a heading of a page leads somewhere.  No Redis, no daemon."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from stagewise.models import parse_command, parse_task

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "docs/tasks.md", ROOT / "docs/deploy.md", ROOT / "README.md", ROOT / "CHANGELOG.md"]
_BLOCK = re.compile(r"^```json\n(.*?)^```", re.M | re.S)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.M)
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_CALL = {"method", "params", "timeout", "if"}


def _blocks(page: Path) -> list[Any]:
    return [json.loads(b) for b in _BLOCK.findall(page.read_text())]


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_task_document_of_tasks_md_is_accepted() -> None:
    tasks = commands = 0
    for doc in _blocks(ROOT / "docs/tasks.md"):
        for item in doc if isinstance(doc, list) else [doc]:
            if not isinstance(item, dict):
                continue
            if "app" in item and "commands" in item:
                parse_task(item)
                tasks += 1
            elif ("method" in item and item.keys() <= _CALL) or item.keys() in ({"timer"}, {"message"}):
                parse_command(item, "command")
                commands += 1
    assert tasks >= 8 and commands >= 3, (tasks, commands)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_lead_somewhere(page: Path) -> None:
    if not page.exists():
        pytest.skip(f"{page.name} does not exist")
    text = page.read_text()
    broken = []
    for target in _LINK.findall(_FENCE.sub("", text)):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md":
            dest_text = _FENCE.sub("", dest.read_text())
            if anchor not in {_slug(h) for h in _HEADING.findall(dest_text)}:
                broken.append(target)
    assert not broken, f"{page.name}: {broken}"
    for block in _BLOCK.findall(text):
        json.loads(block)  # every json block parses
