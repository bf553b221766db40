"""dslc.check: from the AST to the checked model (`check`, `check_source`, `check_file`).

The checker is imported on first use, so that `dslc.check.model` (which the
catalogue and lowering import) never pulls in the checker and its catalogue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dslc.check.model import CheckedModel
    from dslc.syntax.ast import Module


def check(module: Module) -> CheckedModel:
    """Check a parsed module; every user error in it is raised as one `DslcError`."""
    from dslc.check.checker import check as check_module

    return check_module(module)


def check_source(source: str | bytes, file: str) -> CheckedModel:
    """Parse and check `.nn` source text; user errors raise `DslcError`."""
    from dslc.syntax.parser import parse

    return check(parse(source, file))


def check_file(path: str) -> CheckedModel:
    """Read, parse and check a `.nn` file; user errors raise `DslcError`."""
    from dslc.syntax.parser import parse_file

    return check(parse_file(path))


__all__ = ["check", "check_file", "check_source"]
