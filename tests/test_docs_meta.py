"""The docs and code speak of the product: decisions are dated, and no words of how the work was
organised (they mean nothing to a reader of the product) appear in code, comments or docs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
DATE = re.compile(r"^Date: \d{4}-\d{2}-\d{2}$")
# Built from parts so this file does not match itself.
PROCESS_WORDS = re.compile(
    "|".join(
        [
            r"must[- ]" + r"show",
            r"design " + r"card",
            r"hostile " + r"review",
            r"\bissue " + r"#?\d",
            r"\(branch " + r"`",
            r"\bticket" + r"s?\b",
        ]
    ),
    re.IGNORECASE,
)
CHECKED = (".py", ".md", ".yaml", ".toml", ".html", ".js", ".sql", ".in")


def test_every_decision_is_dated():
    lines = (PROJECT / "docs" / "decisions.md").read_text().splitlines()
    undated = [
        h
        for i, h in enumerate(lines)
        if h.startswith("## ") and not DATE.match(lines[i + 1] if i + 1 < len(lines) else "")
    ]
    assert undated == [], "add a 'Date: YYYY-MM-DD' line under:\n" + "\n".join(undated)


def test_no_process_words_in_code_or_docs():
    tracked = subprocess.run(["git", "ls-files"], cwd=PROJECT, capture_output=True, text=True, check=True).stdout
    hits = []
    for name in tracked.split():
        path = PROJECT / name
        if path.suffix in CHECKED or path.name == "Makefile":
            if not path.is_file():
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
                if PROCESS_WORDS.search(line):
                    hits.append(f"{name}:{n}: {line.strip()[:100]}")
    assert hits == [], "\n".join(hits)


def test_the_word_check_finds_what_it_looks_for():
    assert PROCESS_WORDS.search("see must" + " show 2") and not PROCESS_WORDS.search("the issue date of a claim")
