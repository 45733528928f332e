"""Render docs/errors.md, the table of every argument check, from the test registry.

The registry is ``tests/test_bad_inputs.py`` (``CASES`` and ``MEANINGS``); each row's message
is the one its case produces now, so the page shows what a user sees. The test
``test_error_table_is_current`` renders the page again and compares it with the file.

    python docs/tools/error_table.py           # write docs/errors.md
    python docs/tools/error_table.py --check   # exit 1 when docs/errors.md is out of date
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from collections.abc import Callable, Iterable

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "errors.md"

INTRO = """\
# Bad inputs and the errors they raise

Every argument check of seqjax's public API: which function and argument, what is checked,
the message a bad input gets (produced by running the case, so it is the message you will
see), and the test that holds it. Generated from the registry in
`tests/test_bad_inputs.py` by `python docs/tools/error_table.py`; a test fails when this page
and the registry disagree, and another when a check in the library has no case here.

Every check runs when the function is called, and under `jax.jit` while tracing: no value
of a traced array is needed, except for the few rows marked *concrete values only*, whose
check needs the numbers themselves; the row says what happens to traced values instead.
Messages follow one rule: the argument by name, what was expected, and what came (`got`).
The test of a row is `tests/test_bad_inputs.py::test_bad_input_raises[<test>]` (and
`test_bad_input_raises_at_trace_time[<test>]` for the checks made while tracing).

Not here: `seqjax.apps` (the command line), `seqjax.sharding` and `seqjax.checkpoint`.
"""

MEANINGS_INTRO = """\
## Inputs that look wrong but have a meaning

These are accepted on purpose; each meaning is pinned by
`tests/test_bad_inputs.py::test_documented_meaning[<test>]`.
"""


def _code(text: str) -> str:
    """``text`` as a Markdown code span inside a table cell."""
    text = " ".join(str(text).split())
    text = re.sub(r"0x[0-9a-f]{6,}", "0x...", text)  # object addresses change per run
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _plain(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _modules(entries: Iterable, order: Iterable[str]) -> list[str]:
    present = {entry.module for entry in entries}
    ordered = [name for name in order if name in present]
    return ordered + sorted(present - set(ordered))


def render(cases, meanings, message: Callable[[str], str], order: Iterable[str] = ()) -> str:
    """The page: one table per module of ``cases``, then the table of ``meanings``.

    ``message(label)`` is the message the case of that label produces; ``order`` lists the
    modules in the order their tables appear (others follow, sorted).
    """
    order = tuple(order)
    lines = [INTRO]
    for module in _modules(cases, order):
        rows = [c for c in cases if c.module == module]
        lines += [
            f"## `{module}`",
            "",
            "| function / argument | what is checked | message | test |",
            "|---|---|---|---|",
        ]
        for c in rows:
            check = _plain(c.check)
            if c.traced is not None:
                check += f" *Concrete values only: {_plain(c.traced)}.*"
            error = f"{c.error.__name__}: {message(c.label)}"
            lines.append(
                f"| `{c.target}` / `{c.argument}` | {check} | {_code(error)} | `{c.label}` |"
            )
        lines.append("")
    lines += [
        MEANINGS_INTRO,
        "| module | function / argument | meaning | test |",
        "|---|---|---|---|",
    ]
    for m in sorted(meanings, key=lambda m: _modules(meanings, order).index(m.module)):
        lines.append(
            f"| `{m.module}` | `{m.target}` / `{m.argument}` | {_plain(m.meaning)} | `{m.label}` |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/errors.md is stale")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import jax

    # The test suite's settings (tests/conftest.py), so that the registry's arrays and the
    # messages are the ones the tests see.
    jax.config.update("jax_enable_x64", True)
    import seqjax
    from tests import test_bad_inputs as registry

    text = render(registry.CASES, registry.MEANINGS, registry.message, seqjax.SUBMODULES)
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python docs/tools/error_table.py")
            return 1
        return 0
    OUT.write_text(text)
    print(
        f"wrote {OUT.relative_to(ROOT)}: {len(registry.CASES)} checks, "
        f"{len(registry.MEANINGS)} meanings"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
