"""Property-based fault tests: random bad input and random damage, never a crash.

* Specs: a valid tiny spec with some of its numbers replaced (inf, nan, negative, huge, a
  swapped range, a wrong type) either loads and validates, or fails with one ``SpecError``
  line that names the file and a key.
* Shards: a small synthetic dataset (``train.synthetic``) with one shard truncated at a
  random byte, random bytes flipped, or one member dropped. ``verify`` never crashes and never
  says OK for it; the trainer's loader either yields valid batches with the damage skipped and
  counted, or stops with one ``DataError``, and with ``data.verify_shards`` it never yields a
  sample of the changed shard.

No Blender and no model: each example takes milliseconds.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import shutil
import tarfile
import tempfile
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from phieat.schema import sidecar_name
from render import card
from render.spec import SECTIONS, SpecError, load_spec
from render.verify import verify_dataset
from train.config import load_config
from train.data import DataError, Loader
from train.synthetic import write_synthetic_shards

# ----------------------------------------------------------------------------- specs

BASE = {
    "dataset": {"name": "fuzz", "output": "out/fuzz", "views": 2, "shard_size": 2},
    "render": {"resolution": 32, "samples": 2, "denoise": False},
    "build": {"max_failure_fraction": 1.0, "max_retries": 0},
}


def _numeric_keys() -> list[tuple[str, str, typing.Any]]:
    """Every (section, key, type) whose value is a number or a list of numbers."""
    out = []
    for section, cls in SECTIONS.items():
        for name, hint in typing.get_type_hints(cls).items():
            if hint in (int, float) or hint in (list[int], list[float]):
                out.append((section, name, hint))
    return out


NUMERIC_KEYS = _numeric_keys()
LARGE = 10**400  # beyond any float: tomllib reads such integers whole

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.inf, -math.inf, math.nan, -1, -1.0, 0, 0.0, 1e308, 2**63, -(2**63)]),
    st.integers(min_value=-LARGE, max_value=LARGE),
)
wrong_types = st.one_of(
    st.booleans(),
    st.text(max_size=6),
    st.dictionaries(st.sampled_from(["a", "low"]), st.integers(0, 3), max_size=2),
)


def _default(section: str, name: str) -> typing.Any:
    field = {f.name: f for f in dataclasses.fields(SECTIONS[section])}[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@st.composite
def _changes(draw) -> list[tuple[str, str, typing.Any]]:
    """1-3 replaced values, each fitting its key's shape or not."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        section, name, hint = draw(st.sampled_from(NUMERIC_KEYS))
        default = _default(section, name)
        if typing.get_origin(hint) is list:
            value = draw(
                st.one_of(
                    st.lists(numbers, min_size=len(default), max_size=len(default)),
                    st.lists(numbers, max_size=4),
                    st.just(list(reversed(default))) if len(default) > 1 else numbers,
                    numbers,
                    wrong_types,
                    st.lists(wrong_types, min_size=1, max_size=3),
                )
            )
        else:
            value = draw(st.one_of(numbers, wrong_types, st.lists(numbers, max_size=2)))
        out.append((section, name, value))
    return out


def _toml_value(value: typing.Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # A TOML basic string: JSON's escapes, except that TOML wants astral characters
        # whole (not as surrogate pairs) and DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml(raw: dict) -> str:
    return "".join(
        f"[{section}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
        for section, table in raw.items()
    )


def test_the_base_spec_is_valid(tmp_path):
    path = tmp_path / "fuzz.toml"
    path.write_text(_toml(BASE))
    assert load_spec(path).dataset.views == 2


@settings(max_examples=60, deadline=None, database=None)
@given(changes=_changes())
@example(changes=[("camera", "distance", [2.0, LARGE])])  # once an OverflowError traceback
def test_fuzzed_spec_values_are_refused_by_key_or_valid(changes):
    raw = json.loads(json.dumps(BASE))
    for section, name, value in changes:
        raw.setdefault(section, {})[name] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.toml"
        path.write_text(_toml(raw))
        try:
            spec = load_spec(path)
        except SpecError as exc:
            message = str(exc)
            assert "\n" not in message, message
            assert message.startswith(f"{path}: "), message
            assert re.search(r"\[[a-z_]+\]", message), message  # names a section and key
            return
    # Accepted: every number is finite, every range ordered, and the spec hashes.
    for section in SECTIONS:
        for field in dataclasses.fields(getattr(spec, section)):
            value = getattr(getattr(spec, section), field.name)
            for v in value if isinstance(value, list) else [value]:
                assert not (isinstance(v, float) and not math.isfinite(v)), (section, field.name)
    for low, high in (spec.camera.distance, spec.camera.elevation, spec.lighting.strength):
        assert low <= high
    assert spec.spec_hash()


# ----------------------------------------------------------------------------- shards

DAMAGE = ("truncate", "flip", "drop")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """Two shards of two samples (two 32 px views each) with sidecars: a verified dataset."""
    folder = tmp_path_factory.mktemp("pristine")
    write_synthetic_shards(folder, materials=4, views=2, size=32, per_shard=2)
    index = json.loads((folder / "index.json").read_text())
    for record in index["shards"]:
        sidecar = {**record, "shard": record["name"], "keys": [], "failures": []}
        (folder / sidecar_name(record["name"])).write_text(json.dumps(sidecar))
    names = [record["name"] for record in index["shards"]]
    card.write_card(str(folder), index, card.scan_shards(str(folder), names), {})
    report = verify_dataset(str(folder))
    assert report.ok, report.summary()
    return folder


def _damage(data: bytes, kind: str, draw) -> bytes:
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(out) - 1))
            out[at] ^= draw(st.integers(1, 255))
        return bytes(out)
    with tarfile.open(fileobj=io.BytesIO(data)) as src:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers()]
    dropped = draw(st.integers(0, len(members) - 1))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for i, (name, member) in enumerate(members):
            if i != dropped:
                info = tarfile.TarInfo(name)
                info.size = len(member)
                dst.addfile(info, io.BytesIO(member))
    return buffer.getvalue()


def _one_epoch(folder: Path, verify_shards: bool) -> tuple[list[str], int, int]:
    """Keys the trainer's loader yields in one epoch over the dataset, and the samples and
    shards it skipped; raises ``DataError`` when it stops."""
    cfg = load_config(
        None,
        [
            f"data.urls={folder}", "data.batch_size=1", "data.num_workers=0",
            "data.shuffle_buffer=1", "data.max_errors=20", "data.max_skipped_fraction=1.0",
            f"data.verify_shards={str(verify_shards).lower()}", "crops.global_size=16",
            "crops.local_size=8", "crops.local_per_view=1", "model.patch_size=8",
        ],
    )  # fmt: skip
    shards = [str(folder / f"shard-{i:06d}.tar") for i in range(2)]
    index = json.loads((folder / "index.json").read_text())
    records = {str(folder / s["name"]): s for s in index["shards"]}
    loader = Loader(shards, cfg.data, cfg.crops, 8, seed=0, records=records)
    keys: list[str] = []
    for batch in loader:
        if loader.epoch > 0:
            break
        assert batch["global"][0].shape[-1] == 16
        keys += batch["keys"]
    return keys, loader.skipped_samples, loader.skipped_shards


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(kind=st.sampled_from(DAMAGE), verify_shards=st.booleans(), data=st.data())
def test_damaged_shard_is_reported_skipped_or_refused_never_a_crash(
    pristine, kind, verify_shards, data
):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ds"
        shutil.copytree(pristine, folder)
        shard = folder / "shard-000000.tar"
        before = shard.read_bytes()
        after = _damage(before, kind, data.draw)
        shard.write_bytes(after)
        changed = after != before

        report = verify_dataset(str(folder))
        if changed:
            assert not report.ok
            assert any("shard-000000.tar" in p for p in report.problems), report.summary()
        assert all("\n" not in p for p in report.problems)

        try:
            keys, skipped_samples, skipped_shards = _one_epoch(folder, verify_shards)
        except DataError as exc:
            assert "\n" not in str(exc).strip(), str(exc)
            return
        good = {"synth-002__g0000", "synth-003__g0000"}  # the undamaged shard's samples
        assert good <= set(keys)
        assert len(keys) == len(set(keys)) <= 4
        if changed and verify_shards:
            assert set(keys) == good and skipped_shards == 1
        if len(keys) < 4:  # a sample was lost: it was counted
            assert skipped_samples + skipped_shards >= 1


def test_json_member_that_is_not_utf8_is_a_problem_not_a_crash(pristine, tmp_path):
    """Found by the property above: ``verify`` stopped with a UnicodeDecodeError."""
    folder = tmp_path / "ds"
    shutil.copytree(pristine, folder)
    shard = folder / "shard-000001.tar"
    with tarfile.open(shard) as src:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for name, member in members:
            if name.endswith(".json"):
                member = b"\xfb" + member[1:]
            info = tarfile.TarInfo(name)
            info.size = len(member)
            dst.addfile(info, io.BytesIO(member))
    shard.write_bytes(buffer.getvalue())
    problems = verify_dataset(str(folder)).problems
    assert any("synth-002__g0000.json: not UTF-8 text" in p for p in problems), problems
