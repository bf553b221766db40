"""User-facing errors: source spans, diagnostics and their rendering.

Every mistake a user can make (in a `.nn` file, on the command line, in a
dataset) is raised as a `DslcError`. Python tracebacks are for dslc's own bugs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns count from 1, `end_col` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def to(self, other: Span) -> Span:
        """The span from the start of `self` to the end of `other`."""
        return Span(self.file, self.line, self.col, other.end_line, other.end_col)


@dataclass(frozen=True)
class Diagnostic:
    """One error message, anchored at a span when it comes from a source file."""

    message: str
    span: Span | None = None
    hint: str | None = None


@dataclass
class DslcError(Exception):
    """One or more user errors; the CLI renders them and exits with status 1."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __init__(
        self,
        message: str | list[Diagnostic],
        span: Span | None = None,
        hint: str | None = None,
    ) -> None:
        if isinstance(message, list):
            self.diagnostics = list(message)
        else:
            self.diagnostics = [Diagnostic(message, span, hint)]
        super().__init__(self.diagnostics[0].message if self.diagnostics else "error")

    @property
    def span(self) -> Span | None:
        return self.diagnostics[0].span if self.diagnostics else None

    @property
    def message(self) -> str:
        return self.diagnostics[0].message if self.diagnostics else ""

    def __str__(self) -> str:
        return "\n".join(render(d) for d in self.diagnostics)

    __hash__ = Exception.__hash__


def render(diag: Diagnostic, source: str | None = None) -> str:
    """Format a diagnostic: `FILE:LINE:COL: error: MESSAGE`, the source line, a caret, a hint."""
    if diag.span is None:
        lines = [f"error: {diag.message}"]
    else:
        s = diag.span
        lines = [f"{s.file}:{s.line}:{s.col}: error: {diag.message}"]
        text = _source_line(source, s.line)
        if text is not None:
            shown = text.expandtabs(1)
            width = max(1, (s.end_col - s.col) if s.end_line == s.line else len(shown) - s.col + 1)
            width = min(width, max(1, len(shown) - s.col + 1))
            shown, col, width = _clip(shown, s.col, width)
            lines.append(f"    {shown}")
            lines.append("    " + " " * (col - 1) + "^" + "~" * (width - 1))
    if diag.hint:
        lines.append(f"hint: {diag.hint}")
    return "\n".join(lines)


def render_all(error: DslcError, sources: dict[str, str] | None = None) -> str:
    """Render every diagnostic of an error, looking up source text by file name."""
    sources = sources or {}
    out = []
    for d in error.diagnostics:
        out.append(render(d, sources.get(d.span.file) if d.span else None))
    return "\n".join(out)


_SHOWN = 100  # longest source excerpt shown under a message


def _clip(text: str, col: int, width: int) -> tuple[str, int, int]:
    """A window of a long source line around `col`, marked with `...` where it is cut."""
    if len(text) <= _SHOWN:
        return text, col, width
    start = max(0, min(col - 1 - _SHOWN // 2, len(text) - _SHOWN))
    end = start + _SHOWN
    head = "..." if start > 0 else ""
    tail = "..." if end < len(text) else ""
    new_col = col - start + len(head)
    return head + text[start:end] + tail, new_col, max(1, min(width, end - (col - 1)))


def _source_line(source: str | None, line: int) -> str | None:
    if source is None:
        return None
    lines = source.splitlines()
    if 1 <= line <= len(lines):
        return lines[line - 1]
    return None
