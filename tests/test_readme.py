"""Every Python block of README.md and of the pages under docs/ runs as written.

Each file's ```` ```python ```` blocks run in order in one fresh interpreter (as a reader
pastes them into one session; a fresh process, because a page may configure JAX before its
first operation). A block preceded by ``<!-- not run: REASON -->`` is shown, not run; one
preceded by ``<!-- requires: MODULE -->`` is skipped when MODULE is missing (later blocks
must then not need it).
Other languages (``bash``, ``text``) are not run. The tutorials (docs/tutorials/) are
notebooks that the docs build executes; they are not read here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    page
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if "```python" in page.read_text()
]
FENCE = re.compile(r"^```(\S*)\s*$")
MARK = re.compile(r"^<!-- (not run|requires): (.+?) -->$")


def python_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """``[(first line number, code, modules it requires)]`` of the blocks to run."""
    blocks, requires, lines = [], [], text.splitlines()
    i, mark = 0, None
    while i < len(lines):
        line = lines[i]
        if found := MARK.match(line.strip()):
            kind, value = found.groups()
            if kind == "requires":
                requires.append(value.strip())
            else:
                mark = value
        elif found := FENCE.match(line):
            language, start = found.group(1), i + 1
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            if language == "python" and mark is None:
                blocks.append((start + 1, "\n".join(lines[start:i]), requires))
            mark, requires = None, []
        elif line.strip():
            mark, requires = None, []
        i += 1
    return blocks


RUNNER = textwrap.dedent(
    """
    import json, sys, traceback
    blocks = json.loads(sys.stdin.read())
    namespace = {"__name__": "__main__"}
    for where, code in blocks:
        try:
            exec(compile(code, where, "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"BLOCK FAILED: {where}", file=sys.stderr)
            sys.exit(1)
    """
)


def run_blocks(name: str, blocks: list[tuple[int, str, list[str]]]) -> subprocess.CompletedProcess:
    payload = json.dumps([(f"{name}:{line}", code) for line, code, _ in blocks])
    return subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=payload,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_runs(page):
    blocks = python_blocks(page.read_text())
    runnable = [b for b in blocks if all(importlib.util.find_spec(m) for m in b[2])]
    if not runnable:
        pytest.skip(f"{page.name}: every Python block needs a module missing here")
    proc = run_blocks(str(page.relative_to(ROOT)), runnable)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_the_readme_has_a_tour_to_run():
    assert PAGES[0].name == "README.md" and python_blocks(PAGES[0].read_text())


def test_a_block_that_raises_fails_the_check():
    text = "```python\nx = 1\n```\n\nprose\n\n```python\nraise ValueError('stale example')\n```\n"
    proc = run_blocks("fake.md", python_blocks(text))
    assert proc.returncode == 1
    assert "BLOCK FAILED: fake.md:8" in proc.stderr and "stale example" in proc.stderr


def test_marks_skip_a_block_and_require_a_module():
    text = (
        "```python\na = 1\n```\n<!-- not run: needs two processes -->\n```python\nboom()\n```\n"
        "<!-- requires: torch -->\n```python\nimport torch\n```\n```bash\nexit 1\n```\n"
        "```python\nb = 2\n```\n"
    )
    blocks = python_blocks(text)
    assert [(line, code) for line, code, _ in blocks] == [
        (2, "a = 1"),
        (10, "import torch"),
        (16, "b = 2"),
    ]
    assert [requires for _, _, requires in blocks] == [[], ["torch"], []]


def test_readme_links_point_at_files_that_exist():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?!https?:|#)[^)\s]+)\)", text)
    assert targets, "the README links into the docs"
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
