"""The project's prose, for the tests that hold the code to what it says: the README, and the
pages under docs/ it leads to."""

from pathlib import Path

from tools.mock_engine import PROJECT_DIR

README = PROJECT_DIR / "README.md"
DOCS = PROJECT_DIR / "docs"


def files() -> list[Path]:
    """The README, then every page under docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def text() -> str:
    """All of it, as one text."""
    return "\n".join(path.read_text() for path in files())


def page_with(marker: str) -> str:
    """The text of the one page that says `marker`."""
    pages = [path.read_text() for path in files() if marker in path.read_text()]
    assert len(pages) == 1, f"{marker!r} is on {len(pages)} pages of README.md and docs/, expected one"
    return pages[0]
