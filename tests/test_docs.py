"""Every relative link in the repository's Markdown files resolves: the file or folder exists and a
`#anchor` names a heading of the target file (GitHub's heading ids). External links are skipped."""
import re
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parent.parent

INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+).*?\1")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def markdown_files(root):
    """The tracked Markdown files under `root` (all of them where git is unavailable), without the
    virtualenv and the run folders under log/ other than log/results/."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", "*.md"], cwd=root, capture_output=True,
                                check=True, text=True).stdout.split("\0")
        paths = [root / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):
        paths = sorted(root.rglob("*.md"))
    return [path for path in paths if path.is_file() and _documented(path.relative_to(root))]


def _documented(relative):
    parts = relative.parts
    if parts[0] in (".venv", ".git"):
        return False
    return not (parts[0] == "log" and len(parts) > 2 and parts[1] != "results")


def outside_fences(text):
    """`(line number, line)` of every line outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opening = FENCE.match(line)
        if opening:
            marker = opening.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
            continue
        if fence is None:
            yield number, line


def prose_lines(text):
    """`(line number, line)` outside fenced code blocks, with inline code spans blanked out."""
    for number, line in outside_fences(text):
        yield number, INLINE_CODE.sub("", line)


def link_targets(text):
    """`(line number, target)` of every inline link, image and reference definition in prose."""
    for number, line in prose_lines(text):
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            yield number, definition.group(1)
            continue
        for match in INLINE_LINK.finditer(line):
            yield number, match.group(1)


def github_slug(heading):
    """The id GitHub gives a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = "".join(char for char in text
                   if char in " -_" or unicodedata.category(char)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors_of(text):
    """Every `#anchor` a Markdown file offers: its headings' ids (repeats get -1, -2, ...) and HTML anchors."""
    anchors, seen = set(), {}
    for _, line in outside_fences(text):
        heading = HEADING.match(line)
        if not heading:
            continue
        slug = github_slug(heading.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors.update(HTML_ANCHOR.findall(text))
    return anchors


def broken_links(root, files):
    """One `file:line: target (why)` for each relative link in `files` that does not resolve."""
    problems, anchor_cache = [], {}
    for path in files:
        for number, target in link_targets(path.read_text(encoding="utf-8")):
            if not target or EXTERNAL.match(target):
                continue
            where = f"{path.relative_to(root)}:{number}: {target}"
            file_part, _, anchor = target.partition("#")
            destination = (path.parent / unquote(file_part)).resolve() if file_part else path
            if not destination.exists():
                problems.append(f"{where} (no such file or folder)")
                continue
            if not anchor:
                continue
            if destination.is_dir() or destination.suffix.lower() != ".md":
                problems.append(f"{where} (an anchor into something that is not a Markdown file)")
                continue
            if destination not in anchor_cache:
                anchor_cache[destination] = anchors_of(destination.read_text(encoding="utf-8"))
            if unquote(anchor).lower() not in anchor_cache[destination]:
                problems.append(f"{where} (no heading with this anchor)")
    return problems


def test_every_relative_link_in_the_documentation_resolves():
    files = markdown_files(REPO)
    assert REPO / "README.md" in files and len(files) > 5
    assert broken_links(REPO, files) == []


def test_a_broken_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## The run folder\n")
    (tmp_path / "index.md").write_text(
        "# Title: `code` and more\n\n"
        "[fine](docs/other.md#the-run-folder) [fine too](#title-code-and-more) [folder](docs)\n"
        "[web](https://example.org/missing) [mail](mailto:someone@example.org)\n"
        "![missing picture](pictures/plot.png)\n"
        "[missing page](docs/gone.md) [bad anchor](docs/other.md#the-run-folders)\n"
        "[bad local anchor](#nothing-here) `[in code](nowhere.md)`\n"
        "```\n[in a fence](nowhere.md)\n```\n"
        "[ref]: docs/missing-reference.md\n")
    problems = broken_links(tmp_path, [tmp_path / "index.md"])
    assert problems == [
        "index.md:5: pictures/plot.png (no such file or folder)",
        "index.md:6: docs/gone.md (no such file or folder)",
        "index.md:6: docs/other.md#the-run-folders (no heading with this anchor)",
        "index.md:7: #nothing-here (no heading with this anchor)",
        "index.md:11: docs/missing-reference.md (no such file or folder)",
    ]


def test_github_heading_ids_by_hand():
    assert github_slug("export — the inference network") == "export--the-inference-network"
    assert github_slug("8. Training from random weights") == "8-training-from-random-weights"
    assert github_slug("Training data: `--device-augment`") == "training-data---device-augment"
    assert github_slug("Evaluating (ours or the authors' checkpoints)") == "evaluating-ours-or-the-authors-checkpoints"
    assert anchors_of("# Notes\n## Notes\n```\n# not a heading\n```\n## Notes\n") == {"notes", "notes-1", "notes-2"}


def test_run_folders_under_log_are_skipped_but_results_are_kept():
    assert _documented(Path("log/results/README.md"))
    assert _documented(Path("log/README.md"))
    assert not _documented(Path("log/demo-qcs-20261201/notes.md"))
    assert not _documented(Path(".venv/lib/site-packages/pkg/README.md"))
