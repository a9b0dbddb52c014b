"""Build orchestration with a fake renderer (no Blender, no Ray): resume, failures, index."""

from __future__ import annotations

import pool_fakes
import pytest

from render import storage
from render.build import build
from render.journal import load_snapshots
from render.verify import iter_tar_samples, verify_dataset
from render.workers import LocalPool, ShardOutcome


def _build(spec, **kw):
    return build(spec, local=True, session_factory=pool_fakes.fake_factory, progress=False, **kw)


def _keys(version_url, index):
    return [
        k
        for s in index["shards"]
        for k, _ in iter_tar_samples(storage.join(version_url, s["name"]))
    ]


def test_build_writes_verified_dataset_and_rerun_skips_everything(make_spec):
    spec = make_spec()
    first = _build(spec)
    assert first.exit_code == 0 and first.complete and len(first.rendered) == 3
    index = storage.read_json(first.index_url)
    assert index["complete"] and index["views_per_sample"] == 2 and index["samples"] == 6
    assert index["licences"] == {"CC0-1.0": [f"mat-{i:03d}" for i in range(6)]}
    assert sorted(_keys(first.version_url, index)) == [f"mat-{i:03d}__g0000" for i in range(6)]
    report = verify_dataset(spec.dataset.output)
    assert report.ok, report.summary()
    assert report.samples == 6 and report.images == 12
    again = _build(spec)
    assert again.rendered == [] and len(again.skipped) == 3 and again.exit_code == 0
    # every build publishes its own index; older ones are kept
    assert len(storage.list_names(storage.join(first.version_url, "indexes"))) == 2


def test_corrupt_or_stale_shards_are_rendered_again(make_spec):
    spec = make_spec()
    first = _build(spec)
    tar = storage.join(first.version_url, "shard-000001.tar")
    data = bytearray(storage.read_bytes(tar))
    data[700] ^= 0xFF  # same size, different bytes: only the checksum can tell
    storage.write_bytes(tar, bytes(data))
    side = storage.join(first.version_url, "shard-000002.json")
    sidecar = storage.read_json(side)
    sidecar["plan_hash"] = "0" * 16
    storage.write_json(side, sidecar)
    again = _build(spec)
    assert again.rendered == ["shard-000001.tar", "shard-000002.tar"]
    assert verify_dataset(first.version_url).ok
    # --trust-sidecars checks sizes only, so a same-size corruption goes unnoticed
    storage.write_bytes(tar, bytes(data))
    assert _build(spec, trust_sidecars=True).rendered == []


def test_interrupted_build_resumes_with_only_missing_shards(make_spec):
    spec = make_spec()

    def stop_after_first(outcome: ShardOutcome) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(spec, on_shard=stop_after_first)
    resumed = _build(spec)
    assert resumed.skipped == ["shard-000000.tar"]
    assert resumed.rendered == ["shard-000001.tar", "shard-000002.tar"]
    assert verify_dataset(spec.dataset.output).ok


def test_failed_material_is_recorded_and_threshold_sets_exit_code(make_spec, catalog_dir):
    pool_fakes.write_catalogs(catalog_dir, extra_materials=[pool_fakes.material("bad-tex", fail=1)])
    result = _build(make_spec(build={"max_failure_fraction": 0.5}))
    assert result.exit_code == 0 and result.complete
    lines = (
        storage.read_bytes(storage.join(result.version_url, "failures.jsonl")).decode().splitlines()
    )
    assert len(lines) == 1 and '"material_id":"bad-tex"' in lines[0] and "corrupt" in lines[0]
    index = storage.read_json(result.index_url)
    assert "bad-tex" not in index["materials"] and index["failures"][0]["key"] == "bad-tex__g0000"
    assert verify_dataset(result.version_url).ok
    strict = _build(make_spec(build={"max_failure_fraction": 0.0}))
    assert strict.exit_code == 1 and "max_failure_fraction" in strict.summary()


def test_crashing_shard_costs_attempts_then_fails_only_itself(make_spec, catalog_dir):
    pool_fakes.write_catalogs(catalog_dir, extra_materials=[pool_fakes.material("boom", crash=1)])
    spec = make_spec(build={"shard_attempts": 2, "max_failure_fraction": 1.0})
    result = _build(spec)
    assert len(result.failed_shards) == 1 and len(result.rendered) == 3
    assert not result.complete and result.exit_code == 1
    failed = [f for f in result.failures if "shard failed after 2 attempts" in f["reason"]]
    assert "boom__g0000" in {f["key"] for f in failed}


def test_memory_url_output_and_version_folders(make_spec):
    spec = make_spec(output="memory://phieat-build-test/ds")
    result = _build(spec)
    assert result.version_url.startswith("memory://") and result.exit_code == 0
    assert verify_dataset("memory://phieat-build-test/ds").ok
    other = _build(make_spec(output="memory://phieat-build-test/ds", render={"samples": 3}))
    assert other.version != result.version
    assert (
        storage.read_json("memory://phieat-build-test/ds/latest.json")["version"] == other.version
    )


def test_catalog_growth_adds_shards_without_touching_published_ones(make_spec, catalog_dir):
    spec = make_spec()
    first = _build(spec)
    before = {
        n: storage.read_json(storage.join(first.version_url, n.replace(".tar", ".json")))["sha256"]
        for n in first.rendered
    }
    pool_fakes.write_catalogs(catalog_dir, n_materials=8)
    grown = _build(spec)
    assert grown.skipped == first.rendered and grown.rendered == ["shard-000003.tar"]
    assert len(load_snapshots(first.version_url)) == 2
    for name, sha in before.items():
        assert (
            storage.read_json(storage.join(first.version_url, name.replace(".tar", ".json")))[
                "sha256"
            ]
            == sha
        )
    assert verify_dataset(spec.dataset.output).ok


def test_lock_blocks_a_second_build(make_spec):
    spec = make_spec()
    first = _build(spec)
    with storage.lock(storage.join(first.version_url, "build.lock")):
        with pytest.raises(storage.LockedError):
            _build(spec)


def test_local_pool_recycles_its_session(make_spec):
    spec = make_spec()
    before = pool_fakes.FakeSession.instances
    pool = LocalPool(pool_fakes.fake_factory, recycle_after_shards=1)
    result = build(spec, pool=pool, progress=False)
    assert result.exit_code == 0
    # one session to learn the Blender version + one per shard after each recycle
    assert pool_fakes.FakeSession.instances - before == 3


def test_fixed_failed_material_gets_a_new_sample_in_a_new_shard(make_spec, catalog_dir):
    broken = pool_fakes.material("bad-tex", fail=1)
    pool_fakes.write_catalogs(catalog_dir, extra_materials=[broken])
    spec = make_spec(build={"max_failure_fraction": 0.0})
    first = _build(spec)
    assert [f["material_id"] for f in first.failures] == ["bad-tex"] and first.exit_code == 1
    assert _build(spec).rendered == []  # unchanged entry: not retried, published shards stay
    fixed = pool_fakes.material("bad-tex")  # the catalog entry is repaired
    pool_fakes.write_catalogs(catalog_dir, extra_materials=[fixed])
    again = _build(spec)
    assert again.rendered == ["shard-000004.tar"] and again.exit_code == 0
    index = storage.read_json(again.index_url)
    assert "bad-tex" in index["materials"]
    assert "bad-tex__g0001" in _keys(again.version_url, index)


def test_progress_bar_counts_images_shards_and_failures(make_spec, catalog_dir, capsys):
    pool_fakes.write_catalogs(catalog_dir, extra_materials=[pool_fakes.material("bad-tex", fail=1)])
    spec = make_spec()
    result = build(spec, local=True, session_factory=pool_fakes.fake_factory, progress=True)
    err = capsys.readouterr().err
    assert "14/14" in err and "img/s" in err and "shards 4/4 failures 1" in err
    assert "1 failed materials/samples" in result.summary() and "bad-tex__g0000" in result.summary()


def test_local_pool_fails_a_material_whose_views_exceed_the_timeout(make_spec, catalog_dir):
    slow = pool_fakes.material("slow-mat", sleep_s=0.4)
    pool_fakes.write_catalogs(catalog_dir, extra_materials=[slow])
    spec = make_spec(build={"material_timeout_s": 0.2, "max_retries": 1})
    result = _build(spec)
    assert result.exit_code == 0 and result.complete, result.summary()
    (failure,) = result.failures
    assert failure["material_id"] == "slow-mat" and failure["attempts"] == 2
    assert "timeout after 0.2 s" in failure["reason"]
    index = storage.read_json(result.index_url)
    assert sorted(_keys(result.version_url, index)) == [f"mat-{i:03d}__g0000" for i in range(6)]
    assert verify_dataset(result.version_url).ok
