"""README.md stays a short front door, and every relative link in it and in docs/ resolves."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def links(text):
    """Targets of the markdown links outside fenced code blocks."""
    return LINK.findall(FENCE.sub("", text))


def anchors(text):
    """GitHub's heading anchors of a page (code blocks left out)."""
    out = set()
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move the manual text to docs/"


def test_links_helpers_see_links_and_anchors():
    text = "# A `b` c\n[x](y.md#a-b-c)\n```\n[no](z.md)\n```\n"
    assert links(text) == ["y.md#a-b-c"]
    assert anchors(text) == {"a-b-c"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue                               # http:, https:, mailto:
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT)})")
        elif fragment and dest.suffix == ".md" and \
                fragment not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading #{fragment} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"
