"""dslc.check: from the AST to the checked model (`check`, `check_source`, `check_file`)."""

from __future__ import annotations

from dslc.check.checker import check
from dslc.check.model import CheckedModel


def check_source(source: str | bytes, file: str) -> CheckedModel:
    """Parse and check `.nn` source text; user errors raise `DslcError`."""
    from dslc.syntax.parser import parse

    return check(parse(source, file))


def check_file(path: str) -> CheckedModel:
    """Read, parse and check a `.nn` file; user errors raise `DslcError`."""
    from dslc.syntax.parser import parse_file

    return check(parse_file(path))


__all__ = ["CheckedModel", "check", "check_file", "check_source"]
