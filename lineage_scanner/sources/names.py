"""Names that come from outside (a user's source string, a repo's index file) checked before any use.

A repo's ``model.safetensors.index.json`` chooses the file names the scanner then opens or fetches with
the user's token, so a name must be a plain relative path that stays inside the model directory or the
repo: no ``..``, no absolute path, no backslash or control character. Revisions are a commit SHA, a
branch or tag name, or ``refs/pr/N``, as the Hub accepts them.
"""

from __future__ import annotations

import re

from lineage_scanner.errors import HeaderError, SourceError

SHA = re.compile(r"[0-9a-f]{40}")
PR_REF = re.compile(r"refs/pr/[0-9]{1,9}")
#: a branch or tag name by git's rules, as far as a URL path needs (no "..", no "@{", no control chars)
BRANCH = re.compile(r"(?!.*\.\.)(?!.*@\{)(?!/)(?!.*//)(?!.*\.lock$)(?!.*/$)(?!.*\.$)[A-Za-z0-9._/-]{1,255}")
REPO_PART = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def check_revision(revision: str, where: str) -> str:
    if SHA.fullmatch(revision) or PR_REF.fullmatch(revision) or BRANCH.fullmatch(revision):
        return revision
    raise SourceError(where, f"revision {revision!r} is not a commit SHA, a branch or tag name, or refs/pr/N")


def check_repo_id(org: str, name: str, where: str) -> str:
    for part in (org, name):
        if not REPO_PART.fullmatch(part):
            raise SourceError(where, f"{part!r} is not a valid Hub repo name part")
    return f"{org}/{name}"


def check_relative_name(name: object, where: str, error: type = HeaderError) -> str:
    """A file name from a repo or an index: a plain relative path with no way out of its folder."""
    if not isinstance(name, str) or not name:
        raise error(where, f"file name {name!r} is not a non-empty string")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts) or \
            any(ord(c) < 32 or c == "\x7f" for c in name) or len(name) > 1024:
        raise error(where, f"file name {name!r} is not a plain relative path inside the model")
    return name
