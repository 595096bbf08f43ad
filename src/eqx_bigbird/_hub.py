"""A local path or a Hugging Face Hub repo id (`org/name`) -> a local folder, through the standard
HF cache (`HF_HOME`, `HF_HUB_CACHE`) and `huggingface_hub`.

Every decision is made here: path or repo id, which files of a repo to fetch (only those needed,
one weights format), offline mode (`HF_HUB_OFFLINE=1` or `local_files_only=True`: the cache only),
and the errors. An existing local path is returned as it is, without importing `huggingface_hub`:
loading local files never touches the network.

Online, one request with a bounded timeout (`HF_HUB_ETAG_TIMEOUT`, default 10 s, and no retries)
lists the repo's files at the revision; an unreachable Hub falls back to the cached snapshot of
that revision, else fails with advice. Files are then fetched with `hf_hub_download`, pinned to
the commit listed, into the cache that `transformers` shares.
"""

import json
import os
import re
import warnings
from typing import Literal

from ._hf_read import _WEIGHT_FILES, SAFETENSORS_INDEX
from ._tokenizer import _CONFIG_FILES, SENTENCEPIECE_MODELS, TOKENIZER_JSON

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
_TOKENIZERS = (TOKENIZER_JSON, *SENTENCEPIECE_MODELS)  # one of these, in order of preference

_COMMIT = re.compile(r"[0-9a-f]{40}")

# "model": config.json and one weights file (plus generation_config.json where the repo has it);
# "tokenizer": a tokenizer file and its configs; "model+tokenizer": the model, and the tokenizer
# files where the repo has them (the CLI's CHECKPOINT, whose tokenizer is the default).
Files = Literal["model", "tokenizer", "model+tokenizer"]


class HubError(OSError):
    """A Hub repo id could not be resolved to local files: not in the cache while offline, the
    Hub unreachable, no such repo or revision, or a repo without the files needed."""


def local_path(
    path: str | os.PathLike,
    files: Files = "model",
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> str:
    """`path` itself when it exists locally, else the cached snapshot folder of the Hub repo
    `path` holding `files` (downloaded if needed and allowed).

    **Arguments:**
    - `revision`: branch, tag or commit (default `main`); only for a repo id.
    - `cache_dir`: the HF cache (default `HF_HUB_CACHE`, i.e. `$HF_HOME/hub`).
    - `local_files_only`: the cache only, never the network (as `HF_HUB_OFFLINE=1`).
    - `token`: for private or gated repos (default: the saved login or `HF_TOKEN`).
    """
    text = os.fspath(path)
    if os.path.exists(text):
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} was given, but {text!r} is a local path: a revision "
                "selects a version of a Hub repo id"
            )
        return text
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as e:
        why = str(e).split(": '")[0]  # the rule broken, without the id repeated
        raise FileNotFoundError(
            f"{text}: no such file or directory (the path does not exist), and not a Hub repo id "
            f"either ({why})"
        ) from None
    cache = os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    repo = _Repo(text, revision, cache, token)
    if local_files_only or constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "local_files_only=True"
        return repo.cached(files, f"offline ({why}; turn it off to download)")
    return repo.fetch(files)


class _Repo:
    """One repo id at one revision, in one cache."""

    def __init__(self, repo_id: str, revision: str | None, cache: str, token):
        self.repo_id, self.revision, self.cache, self.token = repo_id, revision, cache, token

    @property
    def name(self) -> str:
        return self.repo_id + (f" (revision {self.revision})" if self.revision else "")

    def _advice(self) -> str:
        return (
            f"download it where there is internet into the same cache (`hf download "
            f"{self.repo_id}`, or any from_pretrained there) and set HF_HOME / HF_HUB_CACHE to "
            "it here; with HF_HUB_OFFLINE=1 only the cache is used"
        )

    def snapshot(self) -> str | None:
        """The cached snapshot folder of the revision (`refs/` or a commit), or None."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import LocalEntryNotFoundError

        try:
            return snapshot_download(
                self.repo_id, revision=self.revision, cache_dir=self.cache, local_files_only=True
            )
        except LocalEntryNotFoundError:
            return None

    def cached(self, files: Files, why: str) -> str:
        """The cached snapshot, which must hold `files`; `why` says why the cache only."""
        folder = self.snapshot()
        if folder is None:
            raise HubError(
                f"{self.name}: not a local path, and not in the Hugging Face cache "
                f"({self.cache}) while {why}; {self._advice()}"
            )
        held = sorted(_listing(folder))
        chosen = _choose(files, held)
        if isinstance(chosen, str):
            raise HubError(
                f"{self.name}: the cached snapshot {folder} {chosen} (it holds {held}); "
                f"{self._advice()}"
            )
        return folder

    def fetch(self, files: Files) -> str:
        """The snapshot folder after downloading what `files` needs (or the cached snapshot,
        with a warning, when the Hub cannot be reached)."""
        import requests
        from huggingface_hub import HfApi, constants, hf_hub_download
        from huggingface_hub.utils import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if self.revision is not None and _COMMIT.fullmatch(self.revision):
            folder = self.snapshot()  # a commit never changes: a complete snapshot is final
            if folder is not None and _complete(folder, files):
                return folder
        try:
            # No retries and a bounded timeout: an unreachable Hub fails in seconds.
            info = HfApi(token=self.token).model_info(
                self.repo_id, revision=self.revision, timeout=constants.HF_HUB_ETAG_TIMEOUT
            )
        except GatedRepoError:
            raise HubError(
                f"{self.name} is gated: accept its terms on the Hub, then log in "
                "(`hf auth login`) or pass token="
            ) from None
        except RevisionNotFoundError:
            raise HubError(f"{self.repo_id} has no revision {self.revision!r}") from None
        except RepositoryNotFoundError:
            raise HubError(
                f"{self.repo_id}: not a local path, and no such Hub repo (or it is private: log "
                "in with `hf auth login` or pass token=)"
            ) from None
        except (requests.ConnectionError, requests.Timeout, HfHubHTTPError) as e:
            return self._unreachable(files, constants.ENDPOINT, e)
        held = sorted(s.rfilename for s in info.siblings or ())
        chosen = _choose(files, held)
        if isinstance(chosen, str):
            raise HubError(f"{self.name} {chosen}; the repo holds {held}")
        # The first file by the requested revision, so that the cache records which commit a
        # branch or tag names (refs/); the rest pinned to the commit listed.
        revisions = [self.revision] + [info.sha] * (len(chosen) - 1)
        for filename, revision in zip(chosen, revisions):
            path = hf_hub_download(
                self.repo_id, filename, revision=revision, cache_dir=self.cache, token=self.token
            )
            if filename == SAFETENSORS_INDEX:
                for shard in _shards(path):
                    hf_hub_download(
                        self.repo_id, shard, revision=info.sha, cache_dir=self.cache,
                        token=self.token,
                    )
        folder = os.path.dirname(path)
        if os.path.basename(folder) != info.sha:
            raise HubError(f"{self.name} changed while it was downloaded; try again")
        return folder

    def _unreachable(self, files: Files, endpoint: str, error: Exception) -> str:
        """The cached snapshot, with a warning, after the listing failed with `error`."""
        why = f"the Hub ({endpoint}) could not list the repo ({_reason(error)})"
        folder = self.cached(files, why)
        warnings.warn(f"{self.name}: {why}; using the cached snapshot {folder} (set "
                      "HF_HUB_OFFLINE=1 to skip the Hub)")
        return folder


def _reason(error: Exception) -> str:
    """The root of a network error in a few words (requests wraps urllib3's reason twice)."""
    inner = error.args[0] if error.args else error
    return f"{type(error).__name__}: {getattr(inner, 'reason', inner)}"


def _listing(folder: str) -> list[str]:
    """The files of a snapshot folder, as repo paths (`a/b.json`)."""
    out = []
    for root, _, names in os.walk(folder):
        rel = os.path.relpath(root, folder)
        out += [n if rel == "." else f"{rel}/{n}".replace(os.sep, "/") for n in names]
    return out


def _choose(files: Files, held: list[str]) -> list[str] | str:
    """The files to fetch, in order, from those a repo `held`; or what is wrong, as a phrase."""
    present = set(held)
    chosen = []
    if files in ("model", "model+tokenizer"):
        weights = next((w for w in _WEIGHT_FILES if w in present), None)
        if CONFIG not in present:
            return f"has no {CONFIG}, so it is not a BigBird (or BERT) checkpoint"
        if weights is None:
            return f"has no BigBird weights (looked for {', '.join(_WEIGHT_FILES)})"
        chosen += [CONFIG, weights] + [GENERATION_CONFIG] * (GENERATION_CONFIG in present)
    if files in ("tokenizer", "model+tokenizer"):
        tokenizer = next((t for t in _TOKENIZERS if t in present), None)
        if tokenizer is None and files == "tokenizer":
            return f"has no tokenizer (looked for {', '.join(_TOKENIZERS)})"
        if tokenizer is not None:
            chosen += [tokenizer] + [c for c in _CONFIG_FILES if c in present]
    return chosen


def _complete(folder: str, files: Files) -> bool:
    """Whether a snapshot holds everything `files` needs (a sharded index: every shard)."""
    chosen = _choose(files, _listing(folder))
    if isinstance(chosen, str):
        return False
    shards = _shards(os.path.join(folder, SAFETENSORS_INDEX)) if SAFETENSORS_INDEX in chosen else []
    return all(os.path.exists(os.path.join(folder, f)) for f in shards)


def _shards(index: str) -> list[str]:
    """The shard files a safetensors index names."""
    try:
        with open(index, encoding="utf-8") as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise HubError(f"{index}: not a safetensors index ({e!r})") from None
