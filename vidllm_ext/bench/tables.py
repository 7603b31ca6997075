"""Tables of benchmark results, as aligned text and as GitHub Markdown."""

from __future__ import annotations

from dataclasses import dataclass


def format_ms(seconds: float) -> str:
    """Seconds as milliseconds with four significant digits: ``0.001234 -> "1.234"``."""
    return f"{seconds * 1e3:#.4g}"


@dataclass(frozen=True)
class Column:
    """A table column: its title and whether its cells are numbers (right-aligned)."""

    title: str
    numeric: bool = True


def text_columns(*titles: str) -> tuple[Column, ...]:
    """Left-aligned columns of words (a shape label, a dtype, an op name)."""
    return tuple(Column(title, numeric=False) for title in titles)


def number_columns(*titles: str) -> tuple[Column, ...]:
    """Right-aligned columns of numbers."""
    return tuple(Column(title) for title in titles)


def text_table(columns: list[Column], rows: list[list[str]]) -> str:
    """A plain table, columns padded to their widest cell.

    Example:
        >>> print(text_table([Column("case", False), Column("ms")], [["cpu", "12.5"]]))
        case    ms
        ----  ----
        cpu   12.5
    """
    widths = [max(len(col.title), *(len(row[i]) for row in rows)) for i, col in enumerate(columns)]

    def line(cells: list[str]) -> str:
        padded = (
            cell.rjust(width) if col.numeric else cell.ljust(width)
            for cell, width, col in zip(cells, widths, columns)
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line([col.title for col in columns]), rule, *map(line, rows)])


def markdown_table(columns: list[Column], rows: list[list[str]]) -> str:
    """The same table as GitHub markdown, numbers right-aligned.

    Example:
        >>> print(markdown_table([Column("case", False), Column("ms")], [["cpu", "12.5"]]))
        | case | ms |
        |:--|--:|
        | cpu | 12.5 |
    """
    header = "| " + " | ".join(col.title for col in columns) + " |"
    align = "|" + "|".join("--:" if col.numeric else ":--" for col in columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([header, align, *body])


def render_report(
    titles: tuple[str, str],
    facts: list[tuple[str, str]],
    columns: list[Column],
    rows: list[list[str]],
    lines: list[str],
) -> tuple[str, str]:
    """(terminal text, Markdown) of a benchmark run: title, run facts, the table, note lines.

    ``titles`` is (terminal title, Markdown heading)."""
    text = "\n".join(
        [
            titles[0],
            *(f"{name}: {value}" for name, value in facts),
            "",
            text_table(columns, rows),
            "",
            *lines,
        ]
    )
    markdown = "\n".join(
        [
            f"# {titles[1]}",
            "",
            *(f"- **{name}**: {value}" for name, value in facts),
            "",
            markdown_table(columns, rows),
            "",
            *(f"- {line}" for line in lines),
            "",
        ]
    )
    return text, markdown
