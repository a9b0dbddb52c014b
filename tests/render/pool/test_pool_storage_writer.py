"""Atomic writes through fsspec, the build lock, and the deterministic tar writer."""

from __future__ import annotations

import os
import tarfile
import threading
import time

import fsspec
import pool_fakes
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from render import storage
from render.plan import load_catalogs, make_plan
from render.writer import ShardWriter, render_order, render_shard


@pytest.mark.parametrize("root", ["local", "file", "memory"])
def test_atomic_write_read_and_list(tmp_path, root):
    base = {
        "local": str(tmp_path / "d"),
        "file": f"file://{tmp_path}/d",
        "memory": "memory://st-test/d",
    }[root]
    url = storage.join(base, "sub", "a.json")
    storage.write_json(url, {"x": 1})
    assert storage.read_json(url) == {"x": 1}
    assert storage.list_names(storage.join(base, "sub")) == ["a.json"]  # no temporary left over
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 1000)
    storage.put_file(src, storage.join(base, "b.bin"))
    assert storage.read_bytes(storage.join(base, "b.bin")) == b"abc" * 1000
    assert storage.size(storage.join(base, "b.bin")) == 3000
    assert storage.is_process_local(base) == (root == "memory")


class RacyMemoryFS(MemoryFileSystem):
    """An object store without exclusive create: fsspec's generic check-then-write, with a
    gap between the check and the write, so builds starting together all pass the check."""

    protocol = "racymem"

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("racymem://"))

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        if mode == "create" and self.exists(path):
            raise FileExistsError(path)
        time.sleep(0.05)
        return super().pipe_file(path, value, **kwargs)


fsspec.register_implementation("racymem", RacyMemoryFS, clobber=True)
LOCK_URLS = {
    "local": lambda tmp: str(tmp / "v" / "build.lock"),
    "memory": lambda tmp: f"memory://lock-test/{tmp.name}/build.lock",
    "racy": lambda tmp: f"racymem://lock-test/{tmp.name}/build.lock",
}


@pytest.mark.parametrize("where", ["local", "memory"])
def test_lock_is_exclusive_and_released(tmp_path, where):
    url = LOCK_URLS[where](tmp_path)
    with storage.lock(url) as held:
        assert storage.read_json(url)["pid"] == held["pid"] == os.getpid()
        with pytest.raises(storage.LockedError, match="--force-unlock"), storage.lock(url):
            raise AssertionError("a second holder must not get the lock")
    assert not storage.exists(url)
    with storage.lock(url, force=False) as again:
        assert again["pid"] == os.getpid()
    with storage.lock(url), storage.lock(url, force=True) as forced:
        assert forced["pid"] == os.getpid()  # --force-unlock takes over a held lock


@pytest.mark.parametrize("where", sorted(LOCK_URLS))
def test_builds_racing_for_a_lock_get_exactly_one(tmp_path, where):
    url = LOCK_URLS[where](tmp_path)
    takers = 6
    barrier = threading.Barrier(takers)
    outcomes: list[tuple] = []

    def take() -> None:
        barrier.wait()
        try:
            with storage.lock(url, settle_s=0.3) as info:
                outcomes.append(("held", info["token"], storage.read_json(url)["token"]))
                time.sleep(0.5)  # hold it while the others read back and give up
        except storage.LockedError as exc:
            outcomes.append(("refused", str(exc)))

    threads = [threading.Thread(target=take) for _ in range(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = [o for o in outcomes if o[0] == "held"]
    assert len(held) == 1, outcomes
    assert held[0][1] == held[0][2]  # the file held the winner's token while it ran
    assert len(outcomes) == takers and not storage.exists(url)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_lock_taken_over_meanwhile_is_left_to_its_new_holder(tmp_path, where):
    url = LOCK_URLS[where](tmp_path)
    with storage.lock(url) as info:
        assert storage.read_json(url)["token"] == info["token"]
        # Another build took it over (--force-unlock) while this one ran.
        storage.write_json(url, {"host": "elsewhere", "pid": 1, "since": 0, "token": "theirs"})
    assert storage.read_json(url)["token"] == "theirs"
    storage.remove(url)


def test_stale_lock_of_dead_process_is_taken_over(tmp_path):
    url = str(tmp_path / "build.lock")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    import json
    import socket

    (tmp_path / "build.lock").write_text(
        json.dumps({"host": socket.gethostname(), "pid": pid, "since": 0})
    )
    with storage.lock(url) as info:
        assert info["pid"] == os.getpid()


def test_tar_writer_is_byte_deterministic(tmp_path):
    digests = []
    for _ in range(2):
        w = ShardWriter(tmp_path)
        w.add_sample("a__g0000", [("view0.jpg", b"123"), ("json", b"{}")])
        digests.append(w.close())
        with tarfile.open(w.path) as tar:
            assert [m.mtime for m in tar] == [0, 0] and tar.getnames() == [
                "a__g0000.view0.jpg",
                "a__g0000.json",
            ]
        w.discard()
        assert not w.path.exists()
    assert digests[0] == digests[1]


def test_render_order_groups_views_by_light_then_mesh(make_spec):
    spec = make_spec(dataset={"views": 3, "shard_size": 6})
    shard = make_plan(spec, load_catalogs(spec)).shards[0]
    order = render_order(shard.samples)
    lights = [shard.samples[i]["views"][v]["light"]["id"] for i, v in order]
    assert lights == sorted(lights) and len(order) == 18
    changes = sum(a != b for a, b in zip(lights, lights[1:], strict=False))
    assert changes == 2  # three lights: each loaded once per shard


def test_render_shard_publishes_tar_then_sidecar_and_retries(make_spec, catalog_dir):
    extra = [pool_fakes.material("flaky", fail_once=1), pool_fakes.material("broken", fail=1)]
    pool_fakes.write_catalogs(catalog_dir, n_materials=2, extra_materials=extra)
    spec = make_spec(dataset={"shard_size": 10}, render={"passes": ["mask", "matid"]})
    shard = make_plan(spec, load_catalogs(spec)).shards[0]
    session = pool_fakes.FakeSession()
    url = "memory://render-shard/v"
    sidecar = render_shard(session, shard.to_dict(), url, max_retries=2)
    assert sidecar["samples"] == 3 and sidecar["plan_hash"] == shard.plan_hash
    assert [f["material_id"] for f in sidecar["failures"]] == ["broken"]
    assert (
        sidecar["failures"][0]["attempts"] == 3
        and "texture file is corrupt" in sidecar["failures"][0]["reason"]
    )
    broken_calls = [c for c in session.calls if c[0].startswith("broken")]
    assert len(broken_calls) == 3  # first view tried 3 times, the other view never
    data = storage.read_bytes(storage.join(url, "shard-000000.tar"))
    import hashlib

    assert hashlib.sha256(data).hexdigest() == sidecar["sha256"] and len(data) == sidecar["bytes"]
    assert storage.read_json(storage.join(url, "shard-000000.json"))["keys"] == sidecar["keys"]
    assert session.resets >= 1


def test_the_tar_is_published_before_its_sidecar(make_spec, catalog_dir, monkeypatch):
    pool_fakes.write_catalogs(catalog_dir, n_materials=2)
    spec = make_spec(dataset={"shard_size": 10})
    shard = make_plan(spec, load_catalogs(spec)).shards[0]
    url = "memory://publish-order/v"
    order: list[str] = []
    put_file, write_json = storage.put_file, storage.write_json

    def record_put(local, target):
        assert not storage.exists(storage.join(url, "shard-000000.json"))  # no sidecar yet
        order.append(target.rsplit("/", 1)[-1])
        put_file(local, target)

    def record_json(target, obj):
        assert storage.exists(storage.join(url, "shard-000000.tar"))  # the tar is there first
        order.append(target.rsplit("/", 1)[-1])
        write_json(target, obj)

    monkeypatch.setattr(storage, "put_file", record_put)
    monkeypatch.setattr(storage, "write_json", record_json)
    render_shard(pool_fakes.FakeSession(), shard.to_dict(), url, max_retries=0)
    assert order == ["shard-000000.tar", "shard-000000.json"]


def test_a_failure_while_publishing_leaves_no_partial_file(
    make_spec, catalog_dir, tmp_path, monkeypatch
):
    pool_fakes.write_catalogs(catalog_dir, n_materials=2)
    spec = make_spec(dataset={"shard_size": 10})
    shard = make_plan(spec, load_catalogs(spec)).shards[0]
    out = tmp_path / "v"
    out.mkdir()

    def broken_link(src, dst):
        with open(dst, "wb") as fh:
            fh.write(b"part of a shard")  # the temporary file is half written ...
        raise OSError("injected: no space left on device")  # ... when the disk fails

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(OSError):
        render_shard(pool_fakes.FakeSession(), shard.to_dict(), str(out), max_retries=0)
    # Neither the shard, its sidecar nor a temporary file is left where readers look.
    assert sorted(p.name for p in out.iterdir()) == []


def test_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    from render import storage

    folder = tmp_path / "v-1"
    folder.mkdir()
    (folder / ".shard-000001.json.tmp-0123456789ab").write_text("{")
    (folder / ".shard-000002.tar.tmp-ba9876543210").write_bytes(b"\0")
    for keep in ("shard-000000.json", "shard-000000.tar", ".build.lock", "index.json"):
        (folder / keep).write_text("x")
    removed = storage.remove_temporaries(str(folder))
    assert sorted(removed) == [
        ".shard-000001.json.tmp-0123456789ab",
        ".shard-000002.tar.tmp-ba9876543210",
    ]
    assert sorted(p.name for p in folder.iterdir()) == [
        ".build.lock",
        "index.json",
        "shard-000000.json",
        "shard-000000.tar",
    ]
