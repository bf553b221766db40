"""dslc.syntax: the `.nn` grammar's parser and the AST it produces."""

from dslc.syntax.parser import parse, parse_file

__all__ = ["parse", "parse_file"]
