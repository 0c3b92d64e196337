"""Hub ids, revisions and repo file names checked before anything touches the network or the cache,
and huggingface_hub's errors mapped to one-line opdgeo errors.

Repo ids are validated by huggingface_hub itself (``huggingface_hub.utils.validate_repo_id``,
the rules the Hub applies: 1-96 characters of ``[A-Za-z0-9_.-]``, no ``--`` or ``..``).
huggingface_hub has no validator for revisions (it quotes them into URLs and joins them into
cache paths as given), so :func:`check_revision` applies git's own rules for ref names
(``git check-ref-format``) and a length bound; :func:`check_repo_file` refuses file names that
leave the repo (``..``, absolute paths) before huggingface_hub raises a bare ``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath

import httpx2
from huggingface_hub import constants, errors
from huggingface_hub.errors import HFValidationError
from huggingface_hub.file_download import REGEX_COMMIT_HASH

# the documented import path; huggingface_hub.utils re-exports it lazily, which mypy cannot see
from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]

from opdgeo.errors import HubAccessError, OfflineMissError, OpdgeoError, SourceError

MAX_REVISION = 256
"""Longest revision accepted (git refs have no limit, file systems do: 255 bytes a name)."""

_SPEC_RE = re.compile(r"^(?P<repo>[^@\s/]+/[^@\s/]+)(?:@(?P<rev>.*))?$", re.DOTALL)
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


def parse_spec(spec: str) -> tuple[str, str | None] | None:
    """``org/name[@rev]`` -> (repo_id, revision or None); None when ``spec`` is not a Hub id
    (huggingface_hub's ``validate_repo_id`` decides; a bare ``name`` is taken as a path)."""
    match = _SPEC_RE.match(spec)
    if not match or hub_id_problem(spec):
        return None
    return match.group("repo"), match.group("rev")


def hub_id_problem(spec: str) -> str | None:
    """Why ``spec`` (``org/name[@rev]``-shaped) is not a valid Hub id, for error messages."""
    match = _SPEC_RE.match(spec)
    if not match:
        return None
    try:
        validate_repo_id(match.group("repo"))
    except HFValidationError:
        return "not a valid Hub repo id either (letters, digits, '-', '_', '.'; no '--' or '..')"
    return None


def check_revision(repo: str, revision: str | None) -> None:
    """Refuse a revision that cannot name a branch, tag or commit (git's ref-name rules)."""
    if revision is None:
        return
    problem = None
    if not revision:
        problem = "it is empty"
    elif len(revision) > MAX_REVISION:
        problem = f"it is {len(revision)} characters long (at most {MAX_REVISION})"
    elif _REF_FORBIDDEN.search(revision):
        problem = "it holds a character or sequence git forbids in ref names"
    elif revision.startswith(("/", "-")) or revision.endswith(("/", ".")):
        problem = "it starts or ends with a character git forbids in ref names"
    elif any(p.startswith(".") or p.endswith(".lock") for p in revision.split("/")):
        problem = "a part of it starts with '.' or ends with '.lock'"
    if problem is not None:
        shown = revision if len(revision) <= 40 else revision[:40] + "..."
        raise HubAccessError(f"revision {shown!r} cannot exist in Hub repo {repo}: {problem}")


def check_commit(repo: str, commit: str | None, where: str) -> str:
    """``commit`` if it is a 40-hex commit hash; a damaged cache ref or answer otherwise."""
    if commit is not None and REGEX_COMMIT_HASH.fullmatch(commit):
        return commit
    raise OfflineMissError(
        f"{repo}: {where} does not hold a commit hash (a damaged Hub cache entry?): "
        "download the repo again online, or delete that entry (`hf cache rm`)"
    )


def check_repo_file(where: str, name: str) -> str:
    """``name`` if it is a relative path inside a repo (no ``..``, not absolute, no ``\\``)."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise SourceError(f"{where}: file name {name!r} points outside the repo")
    return name


def endpoint() -> str:
    """The Hub endpoint: HF_ENDPOINT as huggingface_hub reads it (tests point it locally)."""
    import os

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


@contextmanager
def hub_errors(repo: str, revision: str | None = None, offline: bool = False) -> Iterator[None]:
    """Translate huggingface_hub's errors and the HTTP client's transport errors into one-line
    opdgeo errors: exit 4 (:class:`HubAccessError`), 5 (:class:`OfflineMissError`), else 1."""
    rev = f"@{revision}" if revision else ""
    auth = "pass --token, set HF_TOKEN or run `hf auth login`"
    network = (
        f"cannot fetch {repo}{rev} from {endpoint()}: {{}} "
        "(check the network; rerun to resume, or use --offline for cached repos)"
    )
    try:
        yield
    except errors.GatedRepoError:
        raise HubAccessError(
            f"Hub repo {repo} is gated: request access on its page and authenticate ({auth})"
        ) from None
    except errors.DisabledRepoError:
        raise HubAccessError(f"Hub repo {repo} has been disabled by its owner or the Hub") from None
    except errors.RepositoryNotFoundError:
        raise HubAccessError(
            f"Hub repo {repo} not found, or private and not visible with your credentials ({auth})"
        ) from None
    except errors.RevisionNotFoundError:
        raise HubAccessError(
            f"revision {revision!r} not found in Hub repo {repo} (check the branch, tag or commit)"
        ) from None
    except errors.RemoteEntryNotFoundError as exc:
        name = getattr(getattr(exc, "response", None), "url", "")
        raise HubAccessError(f"file not found in Hub repo {repo}{rev}: {name}") from None
    except (
        errors.LocalEntryNotFoundError,
        errors.OfflineModeIsEnabled,
        errors.RevisionResolutionError,
    ) as exc:
        cause = exc.__cause__
        if not offline and isinstance(cause, (httpx2.TransportError, OSError)):
            raise OpdgeoError(network.format(_one_line(cause))) from None
        raise OfflineMissError(
            f"{repo}{rev} is not in the local Hub cache and offline mode is on "
            "(--offline or HF_HUB_OFFLINE=1): download it once online, or go online"
        ) from None
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubAccessError(
                f"access to Hub repo {repo} denied (HTTP {status}): check your token ({auth})"
            ) from None
        raise OpdgeoError(f"Hub request for {repo}{rev} failed: HTTP {status}") from None
    except (httpx2.TransportError, OSError) as exc:  # refused, DNS, timeouts, cut transfers
        raise OpdgeoError(network.format(_one_line(exc))) from None
    except HFValidationError as exc:
        raise SourceError(f"{repo}{rev}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    detail = " ".join(str(exc).split())  # huggingface_hub's messages span several lines
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
