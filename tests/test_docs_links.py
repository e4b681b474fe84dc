"""Every relative link in the README and the documents reaches a file that exists and,
when it names a heading, a heading of that file (GitHub's anchors)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("benchmarks/*.md")]
    + [*REPO.glob("deploy/*.md")]
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
    return {
        re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        for title in re.findall(r"(?m)^#+ (.+)$", text)
    }


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_its_file_and_heading(document):
    broken = []
    for target in LINK.findall(document.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no such heading")
    assert broken == []


def test_the_readme_lists_every_document():
    readme = (REPO / "README.md").read_text()
    for document in REPO.glob("docs/*.md"):
        assert f"](docs/{document.name})" in readme, document.name
