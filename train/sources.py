"""Where the shards are: ``data.urls`` resolved to shard URLs, the dataset's ``index.json``
read and checked, and a shard URL opened as a byte stream.

Stage 1 of the loader pipeline described in ``train.data``: ``resolve_data`` (what the trainer
calls before anything else runs), ``expand_urls`` (the same listing without the checks, for
benches and tools), ``read_index`` / ``locate_index`` / ``shard_records`` (the index and each
shard's record in it) and ``open_url`` (WebDataset ``gopen`` or fsspec), which the stream in
``train.data`` reads shards through. ``DataError`` is the one error of the whole data pipeline.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import fsspec
import webdataset as wds
from braceexpand import braceexpand

from phieat import schema
from train.config import DataConfig

log = logging.getLogger("phieat.train")

WDS_SCHEMES = ("", "file", "pipe", "http", "https")


class DataError(RuntimeError):
    """Shards or samples that cannot be read; the message names the URL or key."""


# Written by ``phieat-render build`` beside its version folders: {"version": "v-<hash>", ...}.
LATEST_NAME = "latest.json"


@dataclass
class DataSource:
    """What ``data.urls`` names: shard URLs, where the dataset's ``index.json`` is, and how
    the shards were named (one by one, or as a dataset folder / index)."""

    shards: list[str]
    index_url: str | None = None
    explicit: bool = True


def _local_path(url: str) -> str | None:
    """The file system path of a local source (a plain path or ``file://``), else None."""
    if url.startswith("file://"):
        return url[len("file://") :]
    if "://" in url or url.startswith("pipe:"):
        return None
    return url


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _read_json(url: str, what: str) -> Any:
    """A JSON file by URL; a damaged one is a one-line ``DataError`` naming it."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        text = fs.cat_file(path).decode("utf-8")
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{url} is not valid JSON ({exc}): the {what} is damaged; re-run phieat-render build "
            "for this dataset, or name the shards explicitly (a brace pattern or .tar list)"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read the {what} {url}: {exc}") from None


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def _shard_names(index: dict, where: str) -> list[str]:
    """The shard file names an index lists; names that would leave the dataset folder are refused."""
    names = []
    for shard in index["shards"]:
        name = shard["name"]
        if not name.endswith(".tar") or "/" in name or "\\" in name or name.startswith("."):
            raise DataError(f"{where} lists the shard {name!r}, which is not a file in the dataset")
        names.append(name)
    return names


def _follow_latest(url: str) -> str:
    """``url`` itself when it holds ``index.json``, else the version folder its ``latest.json`` names."""
    if _exists(_join(url, schema.INDEX_NAME)):
        return url
    latest = _join(url, LATEST_NAME)
    if not _exists(latest):
        return url
    record = _read_json(latest, "dataset's latest.json")
    version = record.get("version") if isinstance(record, dict) else None
    if not isinstance(version, str) or not version or "/" in version or version.startswith("."):
        raise DataError(f"{latest} names no version folder (its 'version' is {version!r})")
    target = _join(url, version)
    if not _exists(_join(target, schema.INDEX_NAME)):
        raise DataError(
            f"{latest} names the version {version}, but {target} holds no {schema.INDEX_NAME}: "
            "the build did not finish; re-run phieat-render build"
        )
    log.info("%s: latest.json names %s", url, version)
    return target


def _resolve_one(source: str, data: DataConfig) -> DataSource:
    explicit = (
        source.startswith("pipe:") or source.endswith(".tar") or any(c in source for c in "{}")
    )
    if explicit:
        shards = list(braceexpand(source))
        missing = [
            u for u in shards if _local_path(u) is not None and not os.path.isfile(_local_path(u))
        ]
        if len(missing) == 1:
            raise DataError(f"data.urls: {missing[0]} does not exist")
        if missing:
            raise DataError(
                f"data.urls: {len(missing)} of {len(shards)} shards do not exist (first: {missing[0]})"
            )
        return DataSource(shards, None, True)
    path = _local_path(source)
    if source.endswith(".json"):
        if path is not None and not os.path.isfile(path):
            raise DataError(f"data.urls: {source} does not exist")
        base = source.rsplit("/", 1)[0] if "/" in source else "."
        index = schema.validate_index(_read_json(source, "dataset index"), where=source)
        names = _shard_names(index, source)
        return DataSource([_join(base, n) for n in names], source, False)
    if path is not None:
        if not os.path.exists(path):
            raise DataError(
                f"data.urls: {source} does not exist (pass a dataset folder, a version folder "
                "v-<hash>, an index.json, a brace pattern or .tar files)"
            )
        if not os.path.isdir(path):
            raise DataError(
                f"data.urls: {source} is neither a folder, an index.json nor a .tar file"
            )
        folder = _follow_latest(path.rstrip("/") or "/")
        found = sorted(n for n in os.listdir(folder) if n.endswith(".tar"))
        index_path = os.path.join(folder, schema.INDEX_NAME)
        if not os.path.isfile(index_path) and data.index == "auto":
            example = (
                f"{folder}/shard-{{000000..{len(found) - 1:06d}}}.tar"
                if found
                else f"{folder}/<shard>.tar"
            )
            raise DataError(
                f"data.urls: {folder} holds no {schema.INDEX_NAME} (nor {LATEST_NAME}): the dataset "
                f"is incomplete or its index was removed. Re-run phieat-render build, or name the "
                f"shards explicitly: data.urls='{example}'"
            )
        if not found:
            raise DataError(f"data.urls: {folder} holds no .tar shards")
        return DataSource([os.path.join(folder, n) for n in found], index_path, False)
    # A remote dataset or version folder: the shard list comes from its index.
    folder = _follow_latest(source)
    index_path = _join(folder, schema.INDEX_NAME)
    if not _exists(index_path):
        raise DataError(
            f"data.urls: {source} holds no {schema.INDEX_NAME} or {LATEST_NAME}; name remote "
            "shards explicitly (a brace pattern such as .../shard-{000000..000099}.tar)"
        )
    index = schema.validate_index(_read_json(index_path, "dataset index"), where=index_path)
    names = _shard_names(index, index_path)
    return DataSource([_join(folder, n) for n in names], index_path, False)


def resolve_data(data: DataConfig) -> DataSource:
    """Resolve ``data.urls`` up front: every local path is checked, a dataset folder follows
    its ``latest.json``, and a folder without ``index.json`` is refused (unless ``data.index``
    is "" or the shards are named explicitly). Raises ``DataError`` with a one-line message
    (``SchemaError`` for an index that breaks the contract)."""
    sources = [p.strip() for u in data.urls for p in u.split("::") if p.strip()]
    if not sources:
        raise DataError(
            "data.urls is empty: pass a dataset folder or data.urls='/path/to/shard-{000000..000009}.tar'"
        )
    parts = [_resolve_one(s, data) for s in sources]
    shards = [u for p in parts for u in p.shards]
    if not shards:
        raise DataError(f"data.urls {data.urls!r} names no shards")
    return DataSource(shards, parts[0].index_url, all(p.explicit for p in parts))


def expand_urls(urls: list[str] | str) -> list[str]:
    """Expand ``::``-joined sources, brace patterns and local folders into a list of shard URLs."""
    sources = (
        urls.split("::") if isinstance(urls, str) else [p for u in urls for p in u.split("::")]
    )
    out: list[str] = []
    for source in sources:
        source = source.strip()
        if not source:
            continue
        for url in braceexpand(source):
            if "://" not in url and not url.startswith("pipe:") and os.path.isdir(url):
                folder = _follow_latest(url)
                found = sorted(n for n in os.listdir(folder) if n.endswith(".tar"))
                out.extend(os.path.join(folder, n) for n in found)
            else:
                out.append(url)
    if not out:
        raise DataError(f"data.urls {urls!r} names no shards")
    return out


def open_url(url: str):
    """A readable binary stream for a shard URL (WebDataset ``gopen`` or fsspec)."""
    scheme = urlparse(url).scheme if "://" in url or url.startswith("pipe:") else ""
    if scheme in WDS_SCHEMES:
        return wds.gopen(url, "rb")
    return fsspec.open(url, "rb").open()


def index_url(first_shard: str) -> str | None:
    """Where ``index.json`` would be for a dataset whose first shard is ``first_shard``."""
    if first_shard.startswith(("pipe:", "http://", "https://")):
        return None
    return (
        first_shard.rsplit("/", 1)[0] + "/" + schema.INDEX_NAME
        if "/" in first_shard
        else schema.INDEX_NAME
    )


def locate_index(data: DataConfig, shards: list[str], url: str | None = None) -> str | None:
    """Where the dataset's ``index.json`` is read from: ``data.index``, or with "auto" ``url``
    (``DataSource.index_url``), else beside the first shard; None with ``data.index = ""``."""
    if data.index == "":
        return None
    if data.index != "auto":
        return data.index
    return url if url is not None else index_url(shards[0])


def read_index(data: DataConfig, shards: list[str], url: str | None = None) -> dict | None:
    """Load and validate the dataset's ``index.json`` (at ``locate_index``).

    Refuses an unknown schema version with ``SchemaError`` and a file that is not JSON with a
    one-line ``DataError``; returns None when there is none.
    """
    url = locate_index(data, shards, url)
    if url is None:
        return None
    if not _exists(url):
        if data.index != "auto":
            raise DataError(f"data.index {url} does not exist")
        return None
    index = _read_json(url, "dataset index")
    schema.validate_index(index, where=url)
    if not index["complete"]:
        log.warning("%s: dataset build is not complete; training on the shards present", url)
    return index


def shard_records(index: dict | None, shards: list[str], url: str | None) -> dict[str, dict]:
    """``{shard URL: its index.json record}`` for the shards in the index's folder that it lists."""
    if not index or not url:
        return {}
    folder = url.rsplit("/", 1)[0] if "/" in url else "."
    by_name = {s["name"]: s for s in index["shards"]}
    out = {}
    for shard in shards:
        base, _, name = shard.rpartition("/")
        if (base or ".") == folder and name in by_name:
            out[shard] = by_name[name]
    return out
