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


# --- module tables and code imports -------------------------------------------------------------

MODULE_TABLE_READMES = ["models/README.md", "data_preprocessing/README.md", "utils/README.md",
                        "utils/tools/README.md", "tests/README.md"]
PY_NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)\.py`")
BACKTICKED = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)`")


def table_rows(text):
    """`(header cells, row cells)` for every row of every Markdown table outside code fences."""
    header = None
    for _, line in outside_fences(text):
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = [cell.lower() for cell in cells]
        elif not set("".join(cells)) <= set("-: "):
            yield header, cells


def documented_modules(readme):
    """`{module name: imports cell or None}` for the rows of `readme`'s module tables (rows whose
    first cell names `.py` files)."""
    modules = {}
    for header, cells in table_rows(readme.read_text(encoding="utf-8")):
        imports = cells[header.index("imports (inside the project)")] \
            if "imports (inside the project)" in header else None
        for name in PY_NAME.findall(cells[0]):
            modules[name] = imports
    return modules


def project_packages(root):
    return {entry.name for entry in root.iterdir() if (entry / "__init__.py").is_file()}


def project_imports(path, package, root=REPO):
    """The project names a module imports (at any depth): a sibling module of `package` by its name,
    another top-level package of the project by the package's name."""
    import ast
    tops = project_packages(root)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                names = [f"{package}.{name}" for name in names]
            else:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if name.startswith(package + ".") and (path.parent / f"{parts[package.count('.') + 1]}.py").is_file():
                found.add(parts[package.count(".") + 1])
            elif parts[0] in tops and parts[0] != package.split(".")[0]:
                found.add(parts[0])
    return found


def module_table_problems(root=REPO, readmes=MODULE_TABLE_READMES):
    """One line for each module a README's table names that does not exist, each module of the
    folder the table leaves out, and each imports cell that differs from the module's imports."""
    problems = []
    for relative in readmes:
        readme = root / relative
        folder, package = readme.parent, ".".join(Path(relative).parent.parts)
        documented = {name: cell for name, cell in documented_modules(readme).items()
                      if name not in ("__init__", "__main__")}
        pattern = "test_*.py" if package == "tests" else "*.py"
        present = {path.stem for path in folder.glob(pattern)} - {"__init__", "__main__"}
        problems += [f"{relative}: `{name}.py` is in the table but not in {folder.name}/"
                     for name in sorted(set(documented) - present)]
        problems += [f"{relative}: `{name}.py` is missing from the table"
                     for name in sorted(present - set(documented))]
        for name, cell in sorted(documented.items()):
            if cell is None or name not in present or cell == "everything below":
                continue
            said = {token.split(".")[0] if token.split(".")[0] != package else token.split(".")[1]
                    for token in BACKTICKED.findall(cell)}
            actual = project_imports(folder / f"{name}.py", package, root)
            if said != actual:
                problems.append(f"{relative}: `{name}.py` imports {sorted(actual)}, the table says {sorted(said)}")
    return problems


def test_module_tables_match_the_code():
    assert module_table_problems() == []


def test_a_wrong_module_table_is_reported(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "alpha.py").write_text("from . import beta\nimport pkg.gamma\n")
    (package / "beta.py").write_text("def f():\n    from other import thing\n")
    (package / "gamma.py").write_text("")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "__init__.py").write_text("")
    (package / "README.md").write_text(
        "| file | what | imports (inside the project) |\n|---|---|---|\n"
        "| `alpha.py` | a | `beta` |\n| `beta.py` | b | `other.thing` |\n| `gone.py` | g | — |\n")
    assert module_table_problems(tmp_path, ["pkg/README.md"]) == [
        "pkg/README.md: `gone.py` is in the table but not in pkg/",
        "pkg/README.md: `gamma.py` is missing from the table",
        "pkg/README.md: `alpha.py` imports ['beta', 'gamma'], the table says ['beta']",
    ]


def python_blocks(text):
    """The source of every fenced block marked `python`."""
    block, lines = False, []
    for line in text.splitlines():
        if block and line.strip().startswith("```"):
            yield "\n".join(lines)
            block, lines = False, []
        elif block:
            lines.append(line)
        elif line.strip() == "```python":
            block = True


def test_imports_in_the_documentation_name_what_the_code_has():
    import ast
    import importlib
    tops, missing = project_packages(REPO), []
    for path in markdown_files(REPO):
        for source in python_blocks(path.read_text(encoding="utf-8")):
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in tops:
                    module = importlib.import_module(node.module)
                    missing += [f"{path.relative_to(REPO)}: {node.module}.{alias.name}"
                                for alias in node.names if not hasattr(module, alias.name)]
    assert missing == []
