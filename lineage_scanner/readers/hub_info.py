"""What the Hub says of a commit, checked before it is believed: model info, or one entry of a listing.

A server names the repo and commit that a scan stores, so neither is taken on trust: the ``id`` must be
the repo asked for (or the one a redirect of the Hub announced as its new name; the Hub's ids are
case-insensitive), the ``sha`` exactly 40 hex digits (and the pinned commit, when one was asked for), file
names plain relative paths; anything else is an :class:`IdentityError` and nothing is stored under the
claimed name. The answer itself is streamed under a cap (:data:`MAX_INFO_BYTES`) before it is parsed.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from urllib.parse import quote

from lineage_scanner.errors import IdentityError, ScanError
from lineage_scanner.readers.hub_http import HubClient
from lineage_scanner.readers.jsonfile import MAX_JSON_BYTES
from lineage_scanner.sources.hub import HubCommit, HubRef, endpoint
from lineage_scanner.sources.names import SHA, check_relative_name, check_repo_id

#: Model info with every file's size and hash: about 200 bytes a file, so 16 MiB is some 80,000 files.
MAX_INFO_BYTES = MAX_JSON_BYTES
#: Longest declared base list and name kept from a card (a card is the repo owner's free text).
MAX_DECLARED = 64
_LFS = re.compile(r"[0-9a-f]{64}")
#: The config fields a scan reads from the Hub's answer (the Hub extracts only a few of config.json's).
CONFIG_FIELDS = ("model_type", "architectures", "quantization_config")


def model_info(ref: HubRef, client: HubClient) -> HubCommit:
    """Model info at the asked revision, with every file's size and LFS SHA-256 (``blobs``), in one admitted
    API call; Hub errors become typed scan errors, a lying answer an :class:`IdentityError`."""
    url = f"{endpoint()}/api/models/{ref.repo_id}"
    if ref.revision is not None:
        url += f"/revision/{quote(ref.revision, safe='')}"
    data, _ = client.get_json(url + "?blobs=true", "model info", limit=MAX_INFO_BYTES)
    pinned = ref.revision if ref.revision and SHA.fullmatch(ref.revision) else None
    return commit_from(data, client.renamed or ref.repo_id, client.source, pinned)


def commit_from(data: dict, asked: str | None, where: str, pinned: str | None = None) -> HubCommit:
    """A :class:`HubCommit` from one model-info answer or listing entry, every field checked. ``asked``: the
    repo the answer must name (None for a listing, whose entries name themselves)."""
    claimed = data.get("id")
    if not isinstance(claimed, str):
        raise IdentityError(where, "the Hub's answer names no repo id")
    org, _, name = claimed.partition("/")
    try:
        repo = check_repo_id(org, name, where)
    except ScanError:
        raise IdentityError(where, f"the Hub's answer names {_shown(claimed)}, not a valid repo id") from None
    if asked is not None and repo.lower() != asked.lower():
        raise IdentityError(where, f"the Hub's answer names {_shown(repo)}, not the repo asked for; nothing is "
                                   "stored under that name")
    sha = data.get("sha")
    if not isinstance(sha, str) or not SHA.fullmatch(sha):
        raise IdentityError(where, f"the Hub's answer gives commit {_shown(sha)}, not 40 hex digits")
    if pinned is not None and sha != pinned:
        raise IdentityError(where, f"the Hub's answer gives commit {sha}, not the pinned {pinned}")
    card = data.get("cardData") if isinstance(data.get("cardData"), dict) else {}
    relation = card.get("base_model_relation")
    safetensors = data.get("safetensors") if isinstance(data.get("safetensors"), dict) else {}
    total = safetensors.get("total")
    downloads = data.get("downloads")
    files, lfs = _files(data.get("siblings"), where)
    return HubCommit(
        model=repo, sha=sha, files=files, lfs=lfs, config=_config(data.get("config")),
        declared_base=_bases(card.get("base_model")),
        declared_relation=relation[:MAX_DECLARED] if isinstance(relation, str) else None,
        gated=bool(data.get("gated")), last_modified=_timestamp(data.get("lastModified")),
        params=total if _count(total) else None, downloads=downloads if _count(downloads) else None)


def _files(siblings: object, where: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """File names (each a plain relative path) and the LFS SHA-256s the answer gives."""
    if siblings is None:
        return (), {}
    if not isinstance(siblings, list):
        raise IdentityError(where, "the Hub's answer lists files as something else than a list")
    names, lfs = [], {}
    for entry in siblings:
        name = check_relative_name(entry.get("rfilename") if isinstance(entry, dict) else None, where, IdentityError)
        names.append(name)
        oid = entry.get("lfs", {}).get("sha256") if isinstance(entry.get("lfs"), dict) else None
        if isinstance(oid, str) and _LFS.fullmatch(oid):
            lfs[name] = oid
    return tuple(names), lfs


def _config(config: object) -> dict:
    """The config fields a scan reads, where they have the types config.json gives them."""
    if not isinstance(config, dict):
        return {}
    out = {}
    if isinstance(config.get("model_type"), str):
        out["model_type"] = config["model_type"][:MAX_DECLARED]
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs):
        out["architectures"] = [a[:MAX_DECLARED] for a in archs[:MAX_DECLARED]]
    if isinstance(config.get("quantization_config"), dict):
        out["quantization_config"] = config["quantization_config"]
    return out


def _bases(base: object) -> list[str]:
    """``base_model`` may be one id or a list of them (merges); anything else declares nothing."""
    bases = [base] if isinstance(base, str) else base if isinstance(base, list) else []
    return [b[:256] for b in bases[:MAX_DECLARED] if isinstance(b, str) and b]


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 62


def _shown(value: object) -> str:
    """A claimed name as a message shows it: printable, short."""
    return repr(value)[:80].encode("ascii", "backslashreplace").decode()
