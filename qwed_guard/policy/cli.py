"""`qwed-guard policy check FILE`: print the stack a policy file builds, or every problem in it.

`qwed-guard policy schema`: print the JSON Schema of policy files (docs/policy.schema.json).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from qwed_guard.errors import PolicyError

__all__ = ["check", "main", "register", "schema"]

EXIT_OK = 0
EXIT_INVALID = 2


def check(path: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Validate the policy file at `path`: print `describe()` and return 0, or the errors and 2."""
    from qwed_guard.policy._core import Policy

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        policy = Policy.from_file(path)
    except PolicyError as exc:
        print(_printable(str(exc)), file=err)
        return EXIT_INVALID
    print(_printable(policy.describe()), file=out)
    print(f"hash: {policy.hash}", file=out)
    return EXIT_OK


def schema(out: TextIO | None = None) -> int:
    """Print the JSON Schema policy files are checked against; return 0."""
    from qwed_guard.policy._schema import schema_text

    (out if out is not None else sys.stdout).write(schema_text())
    return EXIT_OK


def _printable(text: str) -> str:
    """Scrubbed, and encodable on any terminal (a lone surrogate is shown escaped)."""
    from qwed_guard.redact import scrub

    return scrub(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _run(args: argparse.Namespace) -> int:
    return check(args.file)


def register(subparsers: Any) -> None:
    """Add `policy check FILE` and `policy schema` to a CLI's subparsers; each command's
    `run(args)` returns the exit code."""
    parser = subparsers.add_parser("policy", help="work with policy files")
    commands = parser.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    checker = commands.add_parser(
        "check",
        help="validate a policy file and print the stack it builds",
        description="Print the decorator stack a policy file builds (exit 0), or every problem "
        "in it with its dotted path (exit 2).",
    )
    checker.add_argument("file", help="a .toml, .yaml/.yml or .json policy file")
    checker.set_defaults(run=_run)
    printer = commands.add_parser(
        "schema",
        help="print the JSON Schema of policy files",
        description="Print the JSON Schema (draft 2020-12) policy files are checked against, "
        "for editors (taplo, yaml-language-server) and CI.",
    )
    printer.set_defaults(run=lambda args: schema())


def main(argv: Sequence[str] | None = None) -> int:
    """Run `policy ...` on its own (as `python -m qwed_guard.policy`)."""
    parser = argparse.ArgumentParser(prog="qwed-guard")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code
