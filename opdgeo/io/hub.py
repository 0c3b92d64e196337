"""Checkpoints on the Hugging Face Hub: ``org/name`` or ``org/name@revision``.

Built on huggingface_hub's own client and cache, nothing of theirs rewritten here:

1. online, ``HfApi.model_info`` resolves the revision (branch, tag or commit) to a commit once
   and lists the repo's files; every later weight request is pinned to that commit, so a report
   labelled ``org/name@<sha>`` is reproducible. The small metadata files (``config.json``, the
   shard index) are downloaded by the revision's name with ``hf_hub_download``, which makes
   huggingface_hub record ``refs/<name>`` in its cache (for later offline runs); the commit they
   come from is checked against the resolved one (a branch that moved mid-run is an error);
2. offline (``--offline`` or HF_HUB_OFFLINE=1), ``HfApi.resolve_revision(local_files_only=True)``
   reads the cache's ref, the result must be a commit hash (a ``refs/main`` holding ``../..``
   is refused), and ``snapshot_download(local_files_only=True)`` finds the snapshot folder;
3. shard headers come from HTTP range reads on the resolve URL (``hf_hub_url``, the client's
   session, auth headers and ``hf_raise_for_status``), or from the cached file when the shard is
   local (``try_to_load_from_cache``). Not ``get_safetensors_metadata``: its result drops the
   header length and the file size (tensor offsets are relative to the end of the header) and
   skips the strict parser local files go through (:mod:`opdgeo.io.safetensors`);
4. shards are downloaded one at a time through ``hf_hub_download`` (resumable, cached), the
   next one on a background thread while the current one is analysed; with ``keep=False``
   they go to a scratch cache and each is deleted as soon as its last tensor was read;
5. :meth:`HubFetcher.read_range` reads byte ranges of a shard (range requests when it is not
   cached) for readers that need only parts of tensors (``opdgeo lineage``).

Ids, revisions and file names are validated first, and huggingface_hub's errors map to one
line each (:mod:`opdgeo.io.hub_names`): exit 4 (:class:`HubAccessError`), 5 (offline miss).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import (
    HfApi,
    constants,
    get_session,
    hf_hub_download,
    hf_hub_url,
    hf_raise_for_status,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.file_download import REGEX_COMMIT_HASH

# the documented import path; huggingface_hub.utils re-exports it lazily, which mypy cannot see
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

from opdgeo.errors import FormatError, OfflineMissError, OpdgeoError, SourceError
from opdgeo.io.checkpoint import (
    Checkpoint,
    SourceOptions,
    TensorInfo,
    check_weight_map,
    merge_shards,
)
from opdgeo.io.hub_names import (
    check_commit,
    check_repo_file,
    check_revision,
    endpoint,
    hub_errors,
    parse_spec,
)
from opdgeo.io.pickle import open_pickles, refusal
from opdgeo.io.safetensors import TensorReader, header_length, parse_header, read_header

__all__ = ["HubFetcher", "HubRepo", "open_hub", "parse_spec"]

RANGE_FIRST = 100_000
"""Bytes asked for in the first range read; most headers fit (huggingface_hub does the same)."""
WEIGHT_INDEX = "model.safetensors.index.json"
WEIGHT_SINGLE = "model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
"""A PEFT adapter repo's config (its ``adapter_model.safetensors`` is found as a shard)."""


def _cache_dir() -> Path:
    return Path(constants.HF_HUB_CACHE)


def is_offline(options: SourceOptions) -> bool:
    """Offline when asked for, or when huggingface_hub is in offline mode (HF_HUB_OFFLINE)."""
    return options.offline or bool(constants.HF_HUB_OFFLINE)


class HubRepo:
    """One repo pinned to one commit: file list, headers, downloads, range reads."""

    def __init__(self, repo: str, revision: str | None, options: SourceOptions) -> None:
        check_revision(repo, revision)
        self.repo = repo
        self.requested = revision
        self.options = options
        self.offline = is_offline(options)
        self.sha, self.files = self._resolve()

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.sha}"

    def _errors(self) -> AbstractContextManager[None]:
        return hub_errors(self.repo, self.requested, self.offline)

    def _resolve(self) -> tuple[str, list[str]]:
        api = HfApi(endpoint=endpoint(), token=self.options.token)
        if self.offline:
            with self._errors():
                resolved = api.resolve_revision(
                    self.repo,
                    revision=self.requested,
                    cache_dir=_cache_dir(),
                    local_files_only=True,
                )
            ref = f"the Hub cache's refs/{self.requested or 'main'}"
            sha = check_commit(self.repo, resolved.resolved, ref)
            with self._errors():
                folder = Path(
                    snapshot_download(
                        self.repo, revision=sha, cache_dir=_cache_dir(), local_files_only=True
                    )
                )
            files = sorted(  # os.walk does not follow linked folders (no loop in a bad cache)
                (Path(root) / name).relative_to(folder).as_posix()
                for root, _, names in os.walk(folder)
                for name in names
                if (Path(root) / name).is_file()
            )
            return sha, files
        with self._errors():
            info = api.model_info(
                self.repo, revision=self.requested, timeout=constants.HF_HUB_ETAG_TIMEOUT
            )
        if info.sha is None or not REGEX_COMMIT_HASH.fullmatch(info.sha):
            raise OpdgeoError(f"the Hub gave no commit hash for {self.repo}: retry later")
        return info.sha, sorted(s.rfilename for s in info.siblings or [])

    def cached_path(self, filename: str, cache_dir: Path | None = None) -> Path | None:
        """The cached copy of ``filename`` at this commit, or None."""
        found = try_to_load_from_cache(
            self.repo, filename, cache_dir=cache_dir or _cache_dir(), revision=self.sha
        )
        return Path(found) if isinstance(found, str) else None

    def download(self, filename: str, cache_dir: Path | None = None, named: bool = False) -> Path:
        """Download (or find in the cache) ``filename`` at the pinned commit. ``named``: ask
        for it by the requested branch or tag, so huggingface_hub records that ref in its
        cache (the file must still come from the pinned commit)."""
        check_repo_file(self.label, filename)
        revision = self.sha
        if named and not self.offline and cache_dir is None:
            revision = self.requested or constants.DEFAULT_REVISION
        with self._errors():
            path = Path(
                hf_hub_download(
                    self.repo,
                    filename,
                    revision=revision,
                    token=self.options.token,
                    cache_dir=cache_dir or _cache_dir(),
                    local_files_only=self.offline,
                    endpoint=endpoint(),
                )  # fmt: skip
            )
        commit = path.parts[-len(PurePosixPath(filename).parts) - 1]
        if commit != self.sha:
            raise OpdgeoError(
                f"{self.repo}@{revision} moved from commit {self.sha} to {commit} during "
                "the run: rerun (or pin a commit with @<sha>)"
            )
        return path

    def read_json(self, filename: str) -> dict[str, Any]:
        path = self.download(filename, named=True)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            raise SourceError(f"{self.label}: {filename} is not valid JSON") from None
        if not isinstance(data, dict):
            raise SourceError(f"{self.label}: {filename} is not a JSON object")
        return data

    def header(self, filename: str) -> tuple[dict[str, TensorInfo], int]:
        """Tensor infos of shard ``filename`` (its name as ``file``) and the shard's size."""
        check_repo_file(self.label, filename)
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
            head, size = self._get(filename, 0, RANGE_FIRST - 1)
            n = header_length(where, head, size)
            if len(head) < 8 + n:
                rest, _ = self._get(filename, len(head), 8 + n - 1)
                head += rest
            infos, _ = parse_header(where, head[8 : 8 + n], size)
        relabelled = {
            name: TensorInfo(i.name, i.dtype, i.shape, where, i.start, i.nbytes)
            for name, i in infos.items()
        }
        return relabelled, size

    def read_range(self, filename: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of ``filename`` by one range request."""
        if length <= 0:
            return b""
        data, _ = self._get(filename, offset, offset + length - 1)
        if len(data) != length:
            raise FormatError(f"{self.label}: {filename} ends early (range read)")
        return data

    def _get(self, filename: str, first: int, last: int) -> tuple[bytes, int]:
        """(bytes ``first..last`` of ``filename`` or fewer at its end, the file's size), by a
        range request on its resolve URL; a server that ignores ``Range`` is read only as far
        as needed."""
        url = hf_hub_url(self.repo, filename, revision=self.sha, endpoint=endpoint())
        headers = {**build_hf_headers(token=self.options.token), "Range": f"bytes={first}-{last}"}
        body = bytearray()
        with self._errors():
            with get_session().stream(
                "GET", url, headers=headers, follow_redirects=True,
                timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
            ) as response:  # fmt: skip
                hf_raise_for_status(response)
                ranged = response.status_code == 206
                skip = 0 if ranged else first
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > skip + (last - first):
                        break
                total = response.headers.get("Content-Range", "").rpartition("/")[2]
                size = total if ranged else response.headers.get("Content-Length", "")
        return bytes(body[skip : skip + last - first + 1]), int(size) if size.isdigit() else 0


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

    def read_range(self, shard: str, offset: int, length: int) -> bytes:
        """Bytes of ``shard``: from the cached copy when there is one, else a range request
        (nothing is downloaded whole)."""
        cached = self.repo.cached_path(shard)
        if cached is None:
            if self.repo.offline:
                raise OfflineMissError(
                    f"{self.repo.label}: {shard} is not in the local Hub cache and offline mode "
                    "is on"
                )
            return self.repo.read_range(shard, offset, length)
        with open(cached, "rb") as fh:
            fh.seek(offset)
            data = fh.read(length)
        if len(data) != length:
            raise FormatError(f"{cached}: truncated: ends before byte {offset + length}")
        return data

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._cleanup is not None:
            self._cleanup()


def weight_files(repo: HubRepo) -> tuple[str, list[str], dict[str, str] | None]:
    """(kind, files, weight_map): kind ``safetensors`` (shards in order, the index's weight_map
    when sharded) or ``pickle`` (pickle weight files, read only with the opt-in)."""
    if WEIGHT_INDEX in repo.files:
        index = repo.read_json(WEIGHT_INDEX)
        where = f"{repo.label}: {WEIGHT_INDEX}"
        weight_map = check_weight_map(where, index)
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            check_repo_file(where, shard)
        return "safetensors", shards, weight_map
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


def open_hub(repo: HubRepo) -> Checkpoint:
    """A :class:`Checkpoint` for a resolved Hub repo: headers now, shards fetched when first
    read."""
    options = repo.options
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
    adapter = repo.read_json(ADAPTER_CONFIG) if ADAPTER_CONFIG in repo.files else None
    return Checkpoint(
        repo.label, tensors, list(sizes), TensorReader(), config, fetcher=HubFetcher(repo),
        check_header=lambda local: read_header(local)[0], shard_sizes=sizes, adapter=adapter,
    )  # fmt: skip
