"""hf://org/name[@revision]: Hugging Face repositories through huggingface_hub.

Online: the Hub API resolves the revision to a commit and lists files with sizes and LFS
sha256 digests; files already in the Hugging Face cache (HF_HUB_CACHE / HF_HOME) for that
commit are copied from it, the rest are downloaded from the resolve URLs in parallel byte ranges
(token from HF_TOKEN, sent to the Hub host only, never to the CDN it redirects to).
Offline (HF_HUB_OFFLINE=1): the cache alone, through snapshot_download(local_files_only=True).
Either way the LFS object ids (sha256) are verified before publishing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from glowplug_worker.prefetch.errors import (
    CredentialsError,
    NotFoundError,
    PrefetchError,
    SourceError,
    TransientError,
)
from glowplug_worker.prefetch.httpclient import HttpClient, HttpStream
from glowplug_worker.prefetch.localsrc import LocalStream
from glowplug_worker.prefetch.options import Options
from glowplug_worker.prefetch.plan import Plan, RemoteFile
from glowplug_worker.prefetch.safepath import safe_relpath

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TRUE = {"1", "true", "yes", "on"}
LOCAL = "cache:"


class HfSource:
    def __init__(
        self, repo: str, revision: str | None, opts: Options, env: Mapping[str, str]
    ) -> None:
        self.repo = repo
        self.revision = revision or "main"
        self.includes = list(opts.includes) or None
        self.token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None
        self.offline = env.get("HF_HUB_OFFLINE", "").lower() in _TRUE
        self.cache_dir = env.get("HF_HUB_CACHE") or None
        self.endpoint = (env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self.stall_timeout = opts.stall_timeout_s
        self.client: HttpClient | None = None
        # Pod logs get our plain progress lines, not tqdm bars (read when the hub is imported).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    @property
    def where(self) -> str:
        return f"hf://{self.repo}@{self.revision}"

    def plan(self) -> Plan:
        if self.offline:
            return self._plan_from_cache()
        try:
            return self._plan_online()
        except Exception as exc:
            raise map_error(exc, self.where, self.token is not None) from exc

    def _plan_from_cache(self) -> Plan:
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(
                self.repo,
                revision=self.revision,
                cache_dir=self.cache_dir,
                allow_patterns=self.includes,
                local_files_only=True,
            )
        except Exception as exc:
            if type(exc).__name__ in ("LocalEntryNotFoundError", "FileNotFoundError"):
                raise NotFoundError(
                    f"{self.where}: not in the Hugging Face cache ({self.cache_dir or 'default'}) "
                    "and HF_HUB_OFFLINE=1; populate the cache or allow network access"
                ) from exc
            raise map_error(exc, self.where, self.token is not None) from exc
        folder = str(folder)
        files: list[RemoteFile] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                rel = safe_relpath(os.path.relpath(full, folder).replace(os.sep, "/"))
                blob = os.path.realpath(full)
                digest = os.path.basename(blob)
                files.append(
                    RemoteFile(
                        rel,
                        os.path.getsize(blob),
                        digest if _SHA256.match(digest) else None,
                        LOCAL + blob,
                    )
                )
        if not files:
            raise NotFoundError(f"{self.where}: the cached snapshot holds no matching files")
        return Plan(files=files, resolved_revision=os.path.basename(folder.rstrip("/")))

    def _plan_online(self) -> Plan:
        from huggingface_hub import HfApi, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        api = HfApi(endpoint=self.endpoint, token=self.token)
        info = api.model_info(self.repo, revision=self.revision, files_metadata=True)
        commit = info.sha
        if not commit:
            raise SourceError(f"{self.where}: the Hub did not resolve the revision to a commit")
        headers = build_hf_headers(token=self.token)
        self.client = HttpClient(headers, self.stall_timeout)
        files: list[RemoteFile] = []
        for sib in info.siblings or []:
            rel = safe_relpath(sib.rfilename, f"Hub file name {sib.rfilename!r}")
            lfs = sib.lfs
            digest = getattr(lfs, "sha256", None) if lfs is not None else None
            size = sib.size if sib.size is not None else getattr(lfs, "size", None)
            cached = try_to_load_from_cache(
                self.repo, sib.rfilename, cache_dir=self.cache_dir, revision=commit
            )
            if isinstance(cached, str) and os.path.isfile(cached):
                locator = LOCAL + os.path.realpath(cached)
                size = os.path.getsize(cached)
            else:
                locator = hf_hub_url(
                    self.repo, sib.rfilename, revision=commit, endpoint=self.endpoint
                )
            files.append(RemoteFile(rel, size, digest, locator, commit))
        if not files:
            raise NotFoundError(f"{self.where}: the repository has no files")
        return Plan(files=files, resolved_revision=commit)

    def open_range(self, f: RemoteFile, start: int, end: int | None) -> HttpStream | LocalStream:
        if f.locator.startswith(LOCAL):
            return LocalStream(f.locator[len(LOCAL) :], start, end)
        assert self.client is not None
        rng = f"bytes={start}-{'' if end is None else end - 1}"
        stream = self.client.get(f.locator, {"Range": rng})
        if stream.resp.status != 206 and start > 0:
            stream.close()
            raise SourceError(f"{self.where}: {f.path}: the download server ignored the range")
        return stream

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def map_error(exc: Exception, where: str, have_token: bool) -> PrefetchError:
    """huggingface_hub's exceptions (by name, so nothing is imported for it) to ours."""
    if isinstance(exc, PrefetchError):
        return exc
    name = type(exc).__name__
    status = _status(exc)
    token_hint = (
        "the token in HF_TOKEN has no access to it"
        if have_token
        else "set HF_TOKEN (spec.model.credentialsSecretRef)"
    )
    if name == "GatedRepoError" or status in (401, 403):
        return CredentialsError(f"{where}: access refused (gated or private); {token_hint}")
    if name == "RevisionNotFoundError":
        return NotFoundError(f"{where}: the revision does not exist; check the branch/tag/commit")
    if name in ("RepositoryNotFoundError", "EntryNotFoundError", "RemoteEntryNotFoundError"):
        return NotFoundError(
            f"{where}: repository not found (or private: {token_hint}); check the name"
        )
    if status == 404:
        return NotFoundError(f"{where}: not found; check the repository name and revision")
    if status is not None and (status >= 500 or status == 429):
        return TransientError(f"{where}: the Hub answered HTTP {status}")
    if status is None and _looks_like_network(exc):
        return TransientError(f"{where}: {name}: {exc}")
    return SourceError(f"{where}: {name}: {exc}")


def _status(exc: Exception) -> int | None:
    resp: Any = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    return code if isinstance(code, int) else None


def _looks_like_network(exc: Exception) -> bool:
    if isinstance(exc, OSError | TimeoutError):
        return True
    mod = type(exc).__module__
    return mod.startswith(("httpx", "httpcore", "requests", "urllib3"))
