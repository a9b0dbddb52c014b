"""Make a dataset version readable whole by other loaders: a dataset card and a wids list.

A build writes both beside ``index.json`` (just before it), from the shards themselves:

* ``README.md``, the dataset card. Its YAML front matter is what Hugging Face ``datasets``
  reads: ``configs`` names the shard files of each split as data files (relative paths), so
  ``load_dataset(folder)`` takes the webdataset builder and never looks at the sidecars,
  ``spec.json``, ``plan/``, ``indexes/`` or ``journal/`` beside them; ``dataset_info.features``
  declares every tar member: views, masks and material indices as ``image`` (EXR views as
  ``binary``), and the json as one struct, the union over every sample of the version (a
  params key of one family is null in the samples of another). The body says what the
  dataset holds, how to load it with each loader, and the licences of the assets used.
* ``wids.json``: the shard list of ``wids.ShardListDataset`` (``url`` relative to the file,
  ``nsamples``), for random access by index.

Splits: a version whose every shard holds materials of one catalog split gets one split per
catalog split (``train``, ``val``, ``test``, named as in the catalogs); shards mixing splits
make one ``train`` split. ``scan_shards`` reads only the json members (the image bytes are
skipped), and ``phieat-render verify`` compares both files with the index and the shards.

    from render import card
    summaries = card.scan_shards(version_url, [s["name"] for s in index["shards"]])
    card.write_card(version_url, index, summaries, asset_licences)
"""

from __future__ import annotations

import json
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from phieat.schema import CARD_NAME, IMAGE_FORMATS, META_MEMBER, WIDS_NAME
from render import storage

# A json value's type: "null", "bool", "int64", "float64", "string", ("list", item type), a
# dict of field name -> type (a struct), or CONFLICT (values that no Arrow type holds).
JsonType = Any
CONFLICT = "conflict"
SPLIT_ORDER = ("train", "val", "test")
SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
MEMBER_RE = re.compile(r"^view(?P<view>\d+)\.(?P<kind>mask\.png|matid\.png|[a-z0-9]+)$")
IMAGE_EXTENSIONS = {"jpg", "png"}  # what ``datasets``' Image feature decodes (not EXR)
# A tar member name longer than this takes a PAX header, which wids (0.1.11) does not follow:
# it reads the 100-byte name field of the plain header itself.
USTAR_NAME_MAX = 100
FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.S)


# ----------------------------------------------------------------------------- json types


def json_type(value: Any) -> JsonType:
    """The type of one decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        item: JsonType = "null"
        for x in value:
            item = merge_types(item, json_type(x))
        return ("list", item)
    if isinstance(value, dict):
        return {str(k): json_type(v) for k, v in value.items()}
    return CONFLICT


def merge_types(a: JsonType, b: JsonType) -> JsonType:
    """The type of values of type ``a`` or ``b``: null joins anything, an int widens to a
    float, structs take the union of their fields; anything else is a ``CONFLICT``."""
    if a == "null":
        return b
    if b == "null":
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, t in b.items():
            out[k] = merge_types(out[k], t) if k in out else t
        return out
    if isinstance(a, tuple) and isinstance(b, tuple):
        return ("list", merge_types(a[1], b[1]))
    if a == b:
        return a
    if isinstance(a, str) and isinstance(b, str) and {a, b} == {"int64", "float64"}:
        return "float64"
    return CONFLICT


def conflicts(t: JsonType, path: str = META_MEMBER) -> list[str]:
    """Paths of the fields whose values have no common type (left out of the features)."""
    if t == CONFLICT:
        return [path]
    if isinstance(t, tuple):
        return conflicts(t[1], path + "[]")
    if isinstance(t, dict):
        return [p for k in sorted(t) for p in conflicts(t[k], f"{path}.{k}")]
    return []


def _feature(t: JsonType) -> dict | None:
    """``datasets``' YAML form of a type (without the name); ``None`` for a conflict."""
    if isinstance(t, dict):
        fields = [f for k in sorted(t) if (f := _named(k, t[k])) is not None]
        # An empty struct has no Arrow type: such a field (always ``{}``) reads as null.
        return {"struct": fields} if fields else {"dtype": "null"}
    if isinstance(t, tuple):
        inner = _feature(t[1])
        if inner is None:
            return None
        if list(inner) == ["dtype"]:
            return {"list": inner["dtype"]}
        if list(inner) == ["struct"]:
            return {"list": inner["struct"]}
        return {"list": inner}
    if t == CONFLICT:
        return None
    return {"dtype": t}


def _named(name: str, t: JsonType) -> dict | None:
    feature = _feature(t)
    return None if feature is None else {"name": name, **feature}


# ----------------------------------------------------------------------------- shards


@dataclass
class ShardSummary:
    """What the card needs to know of one shard: samples, catalog splits, members, json type."""

    name: str
    bytes: int = 0
    samples: int = 0
    splits: set[str] = field(default_factory=set)
    members: set[str] = field(default_factory=set)
    json: JsonType = "null"
    long_names: int = 0  # samples with a member name over USTAR_NAME_MAX characters

    def add(self, members: list[str], meta: Any, key: str = "") -> None:
        """Count one sample with these member names (after the key) and decoded json."""
        self.samples += 1
        self.members.update(members)
        if members and len(key) + 1 + max(map(len, members)) > USTAR_NAME_MAX:
            self.long_names += 1
        if isinstance(meta, dict):
            self.json = merge_types(self.json, json_type(meta))
            material = meta.get("material")
            if isinstance(material, dict) and isinstance(material.get("split"), str):
                self.splits.add(material["split"])


def scan_shard(url: str, name: str) -> ShardSummary:
    """Summarise one shard, reading its json members only (image data is skipped by seeking)."""
    fs, path = storage.url_to_fs(url)
    summary = ShardSummary(name, bytes=int(fs.size(path)))
    key, members, meta = None, [], None
    with fs.open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            base, _, member = info.name.partition(".")
            if base != key:
                if key is not None:
                    summary.add(members, meta, key)
                key, members, meta = base, [], None
            members.append(member.lower())
            if member == META_MEMBER:
                meta = json.loads(tar.extractfile(info).read())
        if key is not None:
            summary.add(members, meta, key)
    return summary


def scan_shards(version_url: str, names: list[str]) -> list[ShardSummary]:
    return [scan_shard(storage.join(version_url, n), n) for n in names]


def split_files(summaries: list[ShardSummary]) -> dict[str, list[str]]:
    """Split name -> shard names (in shard order); empty shards are left out."""
    full = [s for s in summaries if s.samples]
    pure = all(len(s.splits) == 1 and SPLIT_NAME.match(next(iter(s.splits))) for s in full)
    if not full or not pure:
        return {"train": [s.name for s in full]}
    out: dict[str, list[str]] = {}
    for s in full:
        out.setdefault(next(iter(s.splits)), []).append(s.name)
    order = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return {k: out[k] for k in sorted(out, key=lambda k: (order.get(k, len(order)), k))}


def _member_order(member: str) -> tuple[int, int, str]:
    match = MEMBER_RE.match(member)
    if not match:
        return (-1, 0, member)
    kind = match["kind"]
    rank = 1 if kind == "mask.png" else 2 if kind == "matid.png" else 0
    return (int(match["view"]), rank, member)


def features(summaries: list[ShardSummary]) -> list[dict]:
    """``dataset_info.features`` of the card: every member, the json as the union struct."""
    members = set().union(*(s.members for s in summaries))
    meta = _union(summaries)
    out = []
    for member in sorted(members, key=_member_order):
        if member == META_MEMBER:
            feature = _named(META_MEMBER, meta if isinstance(meta, dict) else {})
            if feature is not None:
                out.append(feature)
            continue
        ext = member.rsplit(".", 1)[-1]
        out.append({"name": member, "dtype": "image" if ext in IMAGE_EXTENSIONS else "binary"})
    out += [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]
    return out


def front_matter(summaries: list[ShardSummary]) -> dict:
    """The card's YAML front matter (a dict) for these shards."""
    splits = split_files(summaries)
    counts = {s.name: s.samples for s in summaries}
    sizes = {s.name: s.bytes for s in summaries}
    return {
        "tags": ["webdataset", "image"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": k, "path": list(v)} for k, v in splits.items()],
            }
        ],
        "dataset_info": {
            "config_name": "default",
            "features": features(summaries),
            # ``datasets`` checks num_examples after loading; num_bytes here are tar bytes.
            "splits": [
                {
                    "name": k,
                    "num_bytes": sum(sizes[n] for n in v),
                    "num_examples": sum(counts[n] for n in v),
                }
                for k, v in splits.items()
            ],
        },
    }


# ----------------------------------------------------------------------------- writing


def wids_descriptor(index: dict) -> dict:
    """The ``wids`` dataset description of a version: every indexed shard, relative url."""
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": f"{index['dataset']}-{index['version']}",
        "shardlist": [
            {"url": s["name"], "nsamples": s["samples"], "filesize": s["bytes"]}
            for s in index["shards"]
        ],
    }


def _licence_table(index: dict, asset_licences: dict[str, Counter]) -> list[str]:
    rows = ["| assets | licence | used |", "|---|---|---:|"]
    materials = Counter({lic: len(ids) for lic, ids in index["licences"].items()})
    for kind, counts in (("materials", materials), *sorted(asset_licences.items())):
        for lic, n in sorted(counts.items()):
            rows.append(f"| {kind} | {lic} | {n} |")
    return rows


def _scene_size_note(index: dict, resolution: object) -> str:
    """A sentence for selection scenes rendered at another size than the object views."""
    scenes = (index.get("spec") or {}).get("scenes") or {}
    size = scenes.get("resolution")
    if not size or size == resolution:
        return ""
    return (
        f" Material-selection scenes (samples whose json lists `scene_materials`) are "
        f"{size} px: their images, masks and material indices are that size."
    )


def card_text(
    index: dict, summaries: list[ShardSummary], asset_licences: dict[str, Counter]
) -> str:
    """The whole ``README.md``: YAML front matter, then a short description for people."""
    meta = front_matter(summaries)
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    splits = split_files(summaries)
    counts = {s.name: s.samples for s in summaries}
    views, fmt = index["views_per_sample"], index["image_format"]
    ext = IMAGE_FORMATS[fmt]
    resolution = (index.get("spec") or {}).get("render", {}).get("resolution")
    size = f"{resolution} px " if resolution else ""
    names = [s["name"] for s in index["shards"]]
    pattern = _pattern(names)
    mixed = conflicts(_union(summaries))
    lines = [
        f"# {index['dataset']} ({index['version']})",
        "",
        f"Renders of {len(index['materials'])} materials ({len(index['categories'])} categories: "
        f"{', '.join(index['categories'])}) made with Blender {index.get('blender_version', '?')}"
        f" by phieat. One sample is one material in {views} {size}{ext} views, each on another "
        "mesh under another light; its json holds the material (id, category, family, "
        "parameters), and per view the mesh, light, camera and render settings. Shard "
        f"contract: schema version {index['schema_version']} (`phieat/schema.py`)."
        + _scene_size_note(index, resolution),
        "",
        "| split | shards | samples |",
        "|---|---:|---:|",
        *[f"| {k} | {len(v)} | {sum(counts[n] for n in v)} |" for k, v in splits.items()],
        "",
        f"{sum(counts.values())} samples in {len(names)} shards"
        + (
            f"; {len(index['failures'])} failed samples are listed in `failures.jsonl`."
            if index["failures"]
            else "."
        ),
        "",
        "## Loading",
        "",
        "```python",
        "import webdataset as wds",
        'grey = wds.imagehandler("l")  # masks: one channel ("pil"/"torchrgb" make them RGB)',
        f'ds = wds.WebDataset("{pattern}", shardshuffle=False).decode(',
        '    lambda key, data: grey(key, data) if key.endswith(".mask.png") else None, "pil")',
        "",
        "import wids  # random access by index",
        f'ds = wids.ShardListDataset("{WIDS_NAME}")',
        "",
        "import datasets  # the splits and features of this card",
        'ds = datasets.load_dataset("path/to/this/folder")  # or streaming=True',
        "```",
        "",
        "Material indices (`view{i}.matid.png`, when present) are 16-bit: open them with "
        "`PIL.Image.open` as they are (webdataset's image specs convert them to 8 bits). "
        "With `datasets`, a json field that a sample lacks (a parameter of another material "
        "family) reads as `None`; views, masks and material indices are PIL images (masks "
        "8-bit `L`, material indices 16-bit).",
    ]
    long_names = sum(s.long_names for s in summaries)
    if long_names:
        lines += [
            "",
            f"{long_names} samples have member names over {USTAR_NAME_MAX} characters (long "
            "material IDs), stored with PAX headers: `webdataset` and `datasets` read them, "
            "`wids` does not.",
        ]
    if mixed:
        lines += [
            "",
            "Left out of the `datasets` features (their values have no common type): "
            + ", ".join(f"`{p}`" for p in mixed)
            + ".",
        ]
    lines += ["", "## Licences of the assets used", "", *_licence_table(index, asset_licences)]
    return f"---\n{head}---\n\n" + "\n".join(lines) + "\n"


def _pattern(names: list[str]) -> str:
    """A brace pattern of consecutive shard names (else the first shard's name)."""
    numbers = [n[len("shard-") : -len(".tar")] for n in names if re.fullmatch(r"shard-\d+\.tar", n)]
    if len(numbers) == len(names) > 1 and [int(x) for x in numbers] == list(
        range(int(numbers[0]), int(numbers[0]) + len(numbers))
    ):
        return f"shard-{{{numbers[0]}..{numbers[-1]}}}.tar"
    return names[0] if names else "shard-000000.tar"


def _union(summaries: list[ShardSummary]) -> JsonType:
    out: JsonType = "null"
    for s in summaries:
        out = merge_types(out, s.json)
    return out


def write_card(
    version_url: str,
    index: dict,
    summaries: list[ShardSummary],
    asset_licences: dict[str, Counter],
) -> None:
    """Write ``README.md`` and ``wids.json`` into the version folder (each atomically)."""
    text = card_text(index, summaries, asset_licences)
    storage.write_bytes(storage.join(version_url, CARD_NAME), text.encode("utf-8"))
    storage.write_json(storage.join(version_url, WIDS_NAME), wids_descriptor(index))


# ----------------------------------------------------------------------------- checking


def read_front_matter(text: str) -> dict:
    """The YAML front matter of a card; raises ``ValueError`` saying what is wrong."""
    match = FRONT_MATTER.match(text)
    if not match:
        raise ValueError("has no YAML front matter (--- ... --- at the top)")
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise ValueError(f"front matter is not valid YAML ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError("front matter is not a YAML mapping")
    return meta


def check(version_url: str, index: dict, summaries: list[ShardSummary] | None) -> list[str]:
    """Problems of the card and the wids list against the index (and, given ``summaries``
    of every indexed shard, against the shards' members and json). Empty means good."""
    problems: list[str] = []
    fix = "re-run the build to write it again"
    wids_url = storage.join(version_url, WIDS_NAME)
    try:
        listed = storage.read_json(wids_url)
        got = [(s.get("url"), s.get("nsamples")) for s in listed["shardlist"]]
        if listed.get("wids_version") != 1:
            problems.append(f"{WIDS_NAME}: wids_version is {listed.get('wids_version')!r}, not 1")
        want = [(s["name"], s["samples"]) for s in index["shards"]]
        if got != want:
            problems.append(
                f"{WIDS_NAME}: shard list {got[:3]}... differs from the index "
                f"({want[:3]}...): {fix}"
            )
    except storage.StorageError as exc:
        problems.append(f"{WIDS_NAME}: {exc}: {fix}")
    except (KeyError, TypeError, AttributeError):
        problems.append(f"{WIDS_NAME}: no list of shards with url and nsamples: {fix}")
    card_url = storage.join(version_url, CARD_NAME)
    try:
        meta = read_front_matter(storage.read_bytes(card_url).decode("utf-8"))
    except storage.StorageError as exc:
        return [*problems, f"{CARD_NAME}: {exc}: {fix}"]
    except (ValueError, UnicodeDecodeError) as exc:
        return [*problems, f"{CARD_NAME}: {exc}: {fix}"]
    try:
        files = [
            (entry["split"], name)
            for entry in meta["configs"][0]["data_files"]
            for name in ([entry["path"]] if isinstance(entry["path"], str) else entry["path"])
        ]
        examples = sum(s["num_examples"] for s in meta["dataset_info"]["splits"])
    except (KeyError, IndexError, TypeError):
        return [*problems, f"{CARD_NAME}: front matter lacks configs/data_files or splits: {fix}"]
    names = [n for _, n in files]
    want_names = [s["name"] for s in index["shards"] if s["samples"]]
    if sorted(names) != sorted(want_names):
        problems.append(
            f"{CARD_NAME}: data files {sorted(set(names) ^ set(want_names))[:5]} are in the card "
            f"or the index but not both (or listed twice): {fix}"
        )
    indexed = sum(s["samples"] for s in index["shards"])
    if examples != indexed:
        problems.append(f"{CARD_NAME}: splits hold {examples} examples, the index {indexed}: {fix}")
    if summaries is not None:
        want = front_matter(summaries)
        if meta.get("configs") != want["configs"]:
            problems.append(f"{CARD_NAME}: configs (splits) differ from the shards' samples: {fix}")
        if meta["dataset_info"].get("features") != want["dataset_info"]["features"]:
            problems.append(
                f"{CARD_NAME}: dataset_info.features differ from the shards' members and json: "
                f"{fix}"
            )
    return problems
