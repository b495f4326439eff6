"""The repository's documents stand on their own: every link and path they name is inside the repository, so a
clone has everything they point to (nothing like `../shared/DESIGN.md`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # markdown [text](target)
# Paths that leave the repository, and the workspace's shared design notes, named in prose or code.
OUTSIDE = re.compile(r"(?<![\w.])\.\./(?:shared|\.\.)|DESIGN\.md|/work/")

pytestmark = pytest.mark.unit


def tracked_docs() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "*.md", "*.txt", "*.rst"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [ROOT / name for name in names]


def test_there_are_documents_to_check() -> None:
    docs = {p.relative_to(ROOT).as_posix() for p in tracked_docs()}
    assert {"README.md", "docs/API.md", "docs/INTERNALS.md", "charts/longrun/README.md"} <= docs


@pytest.mark.parametrize("doc", tracked_docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_document_refers_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    problems = [f"mentions {m[0]!r}" for m in OUTSIDE.finditer(text)]
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor on the same page
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(ROOT):
            problems.append(f"links outside the repository: {target}")
        elif not path.exists():
            problems.append(f"links to a missing file: {target}")
    assert problems == [], f"{doc.relative_to(ROOT)}: {problems}"
