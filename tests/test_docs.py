"""README.md and docs/: a README that fits on a screen, links that resolve inside the repository,
no reference to folders beside the clone, no issue numbers in the docs or the code."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO

README_MAX_LINES = 250
FRESH_MACHINE = ("python -m pip install -r requirements.txt && dvc repro", "python -m pytest")
ISSUE_NUMBER = re.compile(r"\bissues?\b\W{0,3}\d+", re.I)  # the word, up to 3 non-word characters, a number
PROCESS_WORDS = re.compile(r"\bsession\b|\bthis host\b|\blent\b", re.I)  # how it was built, not what it is
CODE_TREES = ("pipeline", "tests", "benchmarks")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


# ------------------------------------------------------------------------------------------ checkers
def _unfenced(text: str) -> str:
    return re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.S | re.M)


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (a link there is an example, not a link)."""
    return re.sub(r"`[^`\n]*`", "", _unfenced(text))


def links(text: str) -> list[str]:
    """Every link target of Markdown ``text``: inline links and images, and reference definitions."""
    prose = _prose(text)
    inline = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
    refs = re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", prose, flags=re.M)
    return inline + refs


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _unfenced(text), flags=re.M):
        s = slug(heading)
        n = seen.get(s, 0)
        found.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return found


def _git_ignored(paths: list[Path], root: Path) -> set[Path]:
    """The paths git ignores in ``root`` (none when git or a repository is not at hand)."""
    if not paths:
        return set()
    try:
        done = subprocess.run(["git", "check-ignore", "--stdin"], cwd=root, capture_output=True, text=True,
                              input="\n".join(str(p) for p in paths), timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    if done.returncode not in (0, 1):  # 128: not a git repository
        return set()
    return {Path(line) for line in done.stdout.splitlines() if line}


def broken_links(doc: Path, text: str, root: Path = REPO) -> list[str]:
    """Each relative link of ``doc`` (whose content is ``text``) that does not name a file of the
    repository at ``root`` (missing, a folder, outside it, git-ignored), or names a missing heading."""
    bad, targets = [], []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # https:, mailto: ...
            continue
        path_part, _, fragment = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc.resolve()
        if "../shared" in target or root.resolve() not in path.parents:
            bad.append(f"{target}: outside the repository")
        elif not path.is_file():
            bad.append(f"{target}: no such file")
        else:
            targets.append(path)
            if fragment and path.suffix == ".md" and fragment not in anchors(path.read_text()):
                bad.append(f"{target}: no heading #{fragment} in {path.relative_to(root.resolve())}")
    ignored = _git_ignored(targets, root)
    bad += [f"{p.relative_to(root.resolve())}: ignored by git (not a file of the repository)" for p in targets
            if p in ignored]
    return bad


def issue_numbers(text: str) -> list[str]:
    return [m.group(0) for m in ISSUE_NUMBER.finditer(text)]


def readme_problems(text: str) -> list[str]:
    """What keeps ``text`` from being the README: too long, a fresh-machine command missing from its
    code blocks, a result (a number of dB) copied into it."""
    problems = []
    if len(text.splitlines()) > README_MAX_LINES:
        problems.append(f"{len(text.splitlines())} lines (at most {README_MAX_LINES})")
    fenced = "\n".join(re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M))
    problems += [f"no code line `{c}`" for c in FRESH_MACHINE
                 if not re.search(rf"^{re.escape(c)}\s*(#.*)?$", fenced, flags=re.M)]
    problems += [f"a result copied by hand: {n}" for n in re.findall(r"\d+(?:\.\d+)?\s*dB\b", text)]
    return problems


# ------------------------------------------------------------------------------------------ the docs
def test_the_readme_fits_on_a_screen_keeps_the_fresh_machine_commands_and_copies_no_result():
    """Results live in the generated pages of reports/; a PSNR copied into the README would go stale."""
    assert readme_problems((REPO / "README.md").read_text()) == []


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_to_a_file_of_the_repository(doc):
    bad = broken_links(doc, doc.read_text())
    assert not bad, f"{doc.relative_to(REPO)}: {bad}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = REPO / "README.md"
    linked = {(readme.parent / t.partition("#")[0]).resolve() for t in links(readme.read_text())}
    pages = sorted((REPO / "docs").glob("*.md"))
    assert pages, "docs/ has no page"
    assert [p.name for p in pages if p.resolve() not in linked] == []


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_docs_name_nothing_beside_the_clone_and_nothing_of_how_they_were_built(doc):
    text = doc.read_text()
    assert "../shared" not in text and "SPEC.md" not in text
    assert not PROCESS_WORDS.findall(text), PROCESS_WORDS.findall(text)


def test_no_issue_numbers_in_the_docs_or_the_code():
    files = doc_files() + [p for tree in CODE_TREES for p in sorted((REPO / tree).rglob("*.py"))]
    found = {str(p.relative_to(REPO)): issue_numbers(p.read_text()) for p in files}
    assert {k: v for k, v in found.items() if v} == {}


# ------------------------------------------------------------------------------------ the checkers
def test_the_link_checker_catches_bad_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Some heading, with `code`\n")
    (tmp_path / "docs" / "folder").mkdir()
    doc = tmp_path / "README.md"
    text = ("[ok](docs/a.md) [ok too](docs/a.md#some-heading-with-code) ![img](docs/a.md) [web](https://x.org/y)\n"
            "[missing](docs/b.md) [spec](../shared/SPEC.md) [out](../elsewhere.md) [dir](docs/folder)\n"
            "[anchor](docs/a.md#nope) [self](#title)\n\n[ref]: docs/c.md\n"
            "`[in code](docs/none.md)`\n```\n[fenced](docs/none.md)\n```\n")
    doc.write_text(text)
    bad = broken_links(doc, text, root=tmp_path)
    assert [b.split(":")[0] for b in bad] == ["docs/b.md", "../shared/SPEC.md", "../elsewhere.md", "docs/folder",
                                             "docs/a.md#nope", "#title", "docs/c.md"], bad


def test_the_link_checker_refuses_git_ignored_files(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/build/\n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out.md").write_text("x\n")
    (tmp_path / "kept.md").write_text("x\n")
    bad = broken_links(tmp_path / "README.md", "[a](build/out.md) [b](kept.md)", root=tmp_path)
    assert bad == ["build/out.md: ignored by git (not a file of the repository)"]


def test_the_anchors_follow_github(tmp_path):
    assert slug("One grid for every method, chosen on validation data") == \
        "one-grid-for-every-method-chosen-on-validation-data"
    assert slug("`pretrain` runs again") == "pretrain-runs-again"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_the_issue_checker_catches_issue_numbers():
    word = "iss" + "ue"  # spelled apart, so that this file passes its own check
    bad = f"see {word} 14; {word.title()} #8 allows it; ({word}s: 17)"
    assert issue_numbers(bad) == [f"{word} 14", f"{word.title()} #8", f"{word}s: 17"]
    assert issue_numbers(f"a known {word}: the verdict; 14 {word}s") == []


def test_the_readme_checker_catches_a_long_readme_a_missing_command_and_a_copied_result():
    good = "```bash\npython -m pip install -r requirements.txt && dvc repro   # install, run\npython -m pytest\n```\n"
    assert readme_problems(good) == []
    assert readme_problems(good + "x\n" * README_MAX_LINES) == [f"{README_MAX_LINES + 4} lines (at most 250)"]
    assert readme_problems(good.replace("&& dvc repro", "")) == [
        "no code line `python -m pip install -r requirements.txt && dvc repro`"]
    assert readme_problems(good + "`python -m pytest` gives a base of 26.74 dB (+0.42dB)\n") == [
        "a result copied by hand: 26.74 dB", "a result copied by hand: 0.42dB"]
