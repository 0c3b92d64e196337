"""Checkpoints on the Hugging Face Hub: ``org/name`` or ``org/name@revision``.

Built on huggingface_hub's own client (URLs, auth headers, session, error types, cache):

1. the revision (branch, tag or commit) is resolved to a commit once, and every later request
   is pinned to it, so a report labelled ``org/name@<sha>`` is reproducible;
2. headers come from two HTTP range reads per shard (the 8-byte length, then the JSON), or
   from the cached file when the shard is already local, and go through the same strict
   parser as local files; nothing else is downloaded before the plan is shown;
3. shards are downloaded one at a time through ``hf_hub_download`` (resumable, cached), the
   next one on a background thread while the current one is analysed; with ``keep=False``
   they go to a scratch cache and each is deleted as soon as its last tensor was read.

Offline (``HF_HUB_OFFLINE=1`` or ``--offline``) everything comes from the cache. Failures map
to one-line errors: :class:`HubAccessError` (exit 4) and :class:`OfflineMissError` (exit 5).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opdgeo.errors import HubAccessError, OfflineMissError, OpdgeoError, SourceError
from opdgeo.io.checkpoint import (
    Checkpoint,
    SourceOptions,
    TensorInfo,
    check_weight_map,
    merge_shards,
)
from opdgeo.io.pickle import open_pickles, refusal
from opdgeo.io.safetensors import TensorReader, header_length, parse_header, read_header

RANGE_FIRST = 100_000
"""Bytes asked for in the first range read; most headers fit (huggingface_hub does the same)."""
WEIGHT_INDEX = "model.safetensors.index.json"
WEIGHT_SINGLE = "model.safetensors"

_REPO_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[^\s@]+))?$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def parse_spec(spec: str) -> tuple[str, str | None] | None:
    """``org/name[@rev]`` -> (repo_id, revision or None); None when ``spec`` is not a Hub id."""
    match = _REPO_RE.match(spec)
    if not match or spec.startswith((".", "/", "~")):
        return None
    return match.group("repo"), match.group("rev")


def _hf() -> Any:
    import huggingface_hub

    return huggingface_hub


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or str(_hf().constants.ENDPOINT)


def _cache_dir() -> Path:
    return Path(_hf().constants.HF_HUB_CACHE)


def is_offline(options: SourceOptions) -> bool:
    """Offline when asked for, or when huggingface_hub is in offline mode (HF_HUB_OFFLINE)."""
    hf = _hf()
    return options.offline or bool(hf.constants.HF_HUB_OFFLINE)


@contextmanager
def hub_errors(repo: str, revision: str | None = None) -> Iterator[None]:
    """Translate huggingface_hub / network exceptions into one-line opdgeo errors."""
    from huggingface_hub import errors

    rev = f"@{revision}" if revision else ""
    auth = "pass --token, set HF_TOKEN or run `hf auth login`"
    try:
        yield
    except errors.GatedRepoError:
        raise HubAccessError(
            f"Hub repo {repo} is gated: request access on its page and authenticate ({auth})"
        ) from None
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
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
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
    except OSError as exc:  # connection refused, DNS, timeouts, interrupted transfers
        detail = " ".join(str(exc).split())  # one line: huggingface_hub's messages span several
        raise OpdgeoError(
            f"cannot fetch {repo}{rev} from {_endpoint()}: {type(exc).__name__}: {detail} "
            "(check the network; rerun to resume, or use --offline for cached repos)"
        ) from None


def _is_network_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore")


@contextmanager
def _network_errors(repo: str, revision: str | None) -> Iterator[None]:
    """Like :func:`hub_errors`, also mapping the HTTP client's own transport errors."""
    with hub_errors(repo, revision):
        try:
            yield
        except Exception as exc:
            if _is_network_error(exc):
                raise OSError(str(exc) or type(exc).__name__) from exc
            raise


class HubRepo:
    """One repo pinned to one commit: file list, headers, downloads."""

    def __init__(self, repo: str, revision: str | None, options: SourceOptions) -> None:
        self.repo = repo
        self.requested = revision
        self.options = options
        self.offline = is_offline(options)
        self.sha, self.files = self._resolve()

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.sha}"

    def _errors(self) -> Any:
        return _network_errors(self.repo, self.requested)

    def _resolve(self) -> tuple[str, list[str]]:
        hf = _hf()
        if self.offline:
            snapshot = self._cached_snapshot()
            files = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
            return snapshot.name, files
        with self._errors():
            info = hf.HfApi(endpoint=_endpoint()).model_info(
                self.repo,
                revision=self.requested,
                token=self.options.token,
                timeout=hf.constants.HF_HUB_ETAG_TIMEOUT,
            )
        siblings = [s.rfilename for s in (info.siblings or [])]
        return str(info.sha), sorted(siblings)

    def _cached_snapshot(self) -> Path:
        folder = _cache_dir() / f"models--{self.repo.replace('/', '--')}"
        rev = self.requested or "main"
        sha = rev if _SHA_RE.match(rev) else None
        if sha is None:
            ref = folder / "refs" / rev
            sha = ref.read_text().strip() if ref.is_file() else None
        snapshot = folder / "snapshots" / sha if sha else None
        if snapshot is None or not snapshot.is_dir():
            raise OfflineMissError(
                f"{self.repo}@{rev} is not in the local Hub cache ({_cache_dir()}) and offline "
                "mode is on (--offline or HF_HUB_OFFLINE=1): download it once online"
            )
        return snapshot

    def cached_path(self, filename: str, cache_dir: Path | None = None) -> Path | None:
        """The cached copy of ``filename`` at this commit, or None."""
        hf = _hf()
        found = hf.try_to_load_from_cache(
            self.repo, filename, cache_dir=str(cache_dir or _cache_dir()), revision=self.sha
        )
        return Path(found) if isinstance(found, str) else None

    def download(self, filename: str, cache_dir: Path | None = None) -> Path:
        """Download (or find in the cache) ``filename`` at the pinned commit."""
        hf = _hf()
        with self._errors():
            path = hf.hf_hub_download(
                self.repo,
                filename,
                revision=self.sha,
                token=self.options.token,
                cache_dir=str(cache_dir or _cache_dir()),
                local_files_only=self.offline,
                endpoint=_endpoint(),
            )
        if cache_dir is None and not self.offline:
            self._remember_ref()
        return Path(path)

    def _remember_ref(self) -> None:
        """Write ``refs/<branch or tag>`` -> commit in the Hub cache.

        Downloads are pinned to the commit, so huggingface_hub records no ref for the branch or
        tag that was asked for; without one a later offline run of the same spec would miss.
        """
        rev = self.requested or "main"
        if rev == self.sha:
            return
        ref = _cache_dir() / f"models--{self.repo.replace('/', '--')}" / "refs" / rev
        try:
            if not ref.is_file() or ref.read_text().strip() != self.sha:
                ref.parent.mkdir(parents=True, exist_ok=True)
                ref.write_text(self.sha)
        except OSError:
            pass  # a read-only cache: offline runs then need the commit itself

    def read_json(self, filename: str) -> dict[str, Any]:
        path = self.download(filename)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise SourceError(f"{self.label}: {filename} is not valid JSON") from None
        if not isinstance(data, dict):
            raise SourceError(f"{self.label}: {filename} is not a JSON object")
        return data

    def header(self, filename: str) -> tuple[dict[str, TensorInfo], int]:
        """Tensor infos of shard ``filename`` (its name as ``file``) and the shard's size."""
        cached = self.cached_path(filename)
        where = Path(filename)
        if cached is not None:
            infos, _ = read_header(cached)
            size = cached.stat().st_size
        elif self.offline:
            raise OfflineMissError(
                f"{self.label}: {filename} is not in the local Hub cache and offline mode is on"
            )
        else:
            raw, size = self._range_header(filename)
            infos, _ = parse_header(where, raw, size)
        relabelled = {
            name: TensorInfo(i.name, i.dtype, i.shape, where, i.start, i.nbytes)
            for name, i in infos.items()
        }
        return relabelled, size

    def _range_header(self, filename: str) -> tuple[bytes, int]:
        hf = _hf()
        url = hf.hf_hub_url(self.repo, filename, revision=self.sha, endpoint=_endpoint())
        headers = hf.utils.build_hf_headers(token=self.options.token)
        session = hf.utils.get_session()

        def fetch(first: int, last: int) -> tuple[bytes, int]:
            with self._errors():
                response = session.get(
                    url, headers={**headers, "Range": f"bytes={first}-{last}"},
                    follow_redirects=True, timeout=hf.constants.HF_HUB_DOWNLOAD_TIMEOUT,
                )  # fmt: skip
                hf.utils.hf_raise_for_status(response)
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            size = int(total) if total.isdigit() else len(response.content)
            return bytes(response.content), size

        head, size = fetch(0, RANGE_FIRST - 1)
        n = header_length(Path(filename), head, size)
        if len(head) < 8 + n:
            rest, _ = fetch(len(head), 8 + n - 1)
            head += rest
        return head[8 : 8 + n], size


class HubFetcher:
    """Downloads shards on demand with one-ahead background prefetch (see module docstring)."""

    def __init__(self, repo: HubRepo) -> None:
        self.repo = repo
        self.keep = repo.options.keep
        # resolved: huggingface_hub resolves cache_dir, and release() compares paths with it
        self._scratch = (
            None if self.keep else Path(tempfile.mkdtemp(prefix="opdgeo-shards-")).resolve()
        )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opdgeo-prefetch")
        self._futures: dict[str, Future[Path]] = {}
        # the scratch shards go even when close() is never called (a run that failed part-way)
        self._cleanup = (
            None
            if self._scratch is None
            else weakref.finalize(self, shutil.rmtree, self._scratch, ignore_errors=True)
        )

    def _fetch(self, shard: str) -> Path:
        if self._scratch is not None:
            cached = self.repo.cached_path(shard)  # already in the normal cache: no download
            if cached is not None:
                return cached
        return self.repo.download(shard, self._scratch)

    def prefetch(self, shard: str) -> None:
        if shard not in self._futures:
            self._futures[shard] = self._pool.submit(self._fetch, shard)

    def local(self, shard: str) -> Path:
        self.prefetch(shard)
        return self._futures[shard].result()

    def release(self, shard: str) -> None:
        future = self._futures.pop(shard, None)
        if self._scratch is None or future is None:
            return
        path = future.result()
        if self._scratch in path.parents:
            blob = path.resolve()
            path.unlink(missing_ok=True)
            if self._scratch in blob.parents:
                blob.unlink(missing_ok=True)

    def cached(self, shard: str) -> bool:
        return self.repo.cached_path(shard) is not None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._cleanup is not None:
            self._cleanup()


def weight_files(repo: HubRepo) -> tuple[str, list[str], dict[str, str] | None]:
    """(kind, files, weight_map): kind ``safetensors`` (shards in order, the index's weight_map
    when sharded) or ``pickle`` (pickle weight files, read only with the opt-in)."""
    if WEIGHT_INDEX in repo.files:
        index = repo.read_json(WEIGHT_INDEX)
        weight_map = check_weight_map(f"{repo.label}: {WEIGHT_INDEX}", index)
        return "safetensors", sorted(set(weight_map.values())), weight_map
    if WEIGHT_SINGLE in repo.files:
        return "safetensors", [WEIGHT_SINGLE], None
    shards = [f for f in repo.files if f.endswith(".safetensors") and "/" not in f]
    if shards:
        return "safetensors", shards, None
    pickles = sorted(f for f in repo.files if re.fullmatch(r"pytorch_model[\w.-]*\.bin", f))
    if pickles:
        return "pickle", pickles, None
    if repo.offline:  # offline, files lists what is cached, not the repo
        raise OfflineMissError(
            f"{repo.label}: its weights are not in the local Hub cache and offline mode is on "
            "(--offline or HF_HUB_OFFLINE=1): download them once online"
        )
    raise SourceError(f"no safetensors weights in Hub repo {repo.label}")


def open_hub(repo_id: str, revision: str | None, options: SourceOptions) -> Checkpoint:
    """A :class:`Checkpoint` for a Hub repo: headers now, shards fetched when first read."""
    repo = HubRepo(repo_id, revision, options)
    kind, shards, weight_map = weight_files(repo)
    if kind == "pickle":
        if not options.allow_pickle:
            raise refusal(f"{repo.label}/{shards[0]}")
        return open_pickles(repo.label, [repo.download(f) for f in shards], {}, options)
    headers: dict[str, dict[str, TensorInfo]] = {}
    sizes: dict[Path, int] = {}
    for shard in shards:
        headers[shard], sizes[Path(shard)] = repo.header(shard)
    tensors = merge_shards(repo.label, headers, weight_map)
    config: dict[str, Any] = {}
    if "config.json" in repo.files:
        try:
            config = repo.read_json("config.json")
        except (SourceError, OfflineMissError):
            config = {}
    return Checkpoint(
        repo.label, tensors, list(sizes), TensorReader(), config, fetcher=HubFetcher(repo),
        check_header=lambda local: read_header(local)[0], shard_sizes=sizes,
    )  # fmt: skip
