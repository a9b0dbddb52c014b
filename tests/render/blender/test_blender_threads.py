"""Two Cycles threads give the same bytes for the same job, however often it is rendered.

Opt-in by size: ``PHIEAT_THREAD_REPEATS`` (default 3) rounds of a mixed sequence of jobs in
one 2-thread session; each round must repeat the first byte for byte. Run it many times with
``PHIEAT_THREAD_REPEATS=20 pytest tests/render/blender/test_blender_threads.py``; the whole
folder runs with 2 threads under ``PHIEAT_TEST_THREADS=2``. docs/cluster.md ("Deterministic
pixels with several threads") has what was measured.
"""

from __future__ import annotations

import copy
import hashlib
import os

import pytest

pytestmark = [pytest.mark.blender, pytest.mark.slow]


def _sequence(job: dict) -> list[dict]:
    from assets import families, lights, meshes

    mesh_list, light_list = meshes.builtin_meshes(), lights.builtin_lights()
    studio = next(e for e in light_list if e["kind"] == "studio")
    base = copy.deepcopy(job)
    base["render"].update(resolution=48, samples=16, passes=["mask"])
    denoised = copy.deepcopy(base)
    denoised["render"]["denoise"] = True
    jobs = [base, denoised]
    for k, (fam, mesh, light) in enumerate([("wood", 3, 5), ("car-paint", 10, 20)]):
        jobs.append(
            dict(
                copy.deepcopy(base),
                material=families.material_entry(fam, k),
                mesh=mesh_list[mesh],
                light=light_list[light],
                seed=100 + k,
            )
        )
    jobs.append(dict(copy.deepcopy(denoised), light=studio, seed=7))
    scene = copy.deepcopy(base)
    scene["scene"] = {
        "objects": [
            {
                "material": families.material_entry("fabric", 1),
                "mesh": mesh_list[12],
                "location": [0.3, 0.0, 0.0],
            }
        ]
    }
    scene["render"]["passes"] = ["mask", "matid"]
    jobs.append(scene)
    return jobs


def test_two_threads_repeat_bytes_in_one_session(session, job, mesh_cache_dir):
    from render.blender.session import BlenderSession

    repeats = int(os.environ.get("PHIEAT_THREAD_REPEATS", "3"))
    jobs = _sequence(job)
    two = BlenderSession(threads=2, quiet=True, mesh_cache_dir=mesh_cache_dir)
    try:
        rounds = []
        for r in range(repeats):
            digests = []
            for j in jobs:
                view = two.render_view(j)
                parts = [view.image, view.mask or b"", view.matid or b""]
                digests.append(hashlib.sha256(b"".join(parts)).hexdigest())
            rounds.append(digests)
            if r % 2:
                two.reset()  # a shard boundary every other round
        for r, digests in enumerate(rounds[1:], 1):
            differ = [i for i, (a, b) in enumerate(zip(rounds[0], digests, strict=True)) if a != b]
            assert not differ, f"round {r}: jobs {differ} gave other bytes than in round 0"
    finally:
        two.close()


def test_changing_the_thread_count_in_a_session_keeps_the_bytes(job, mesh_cache_dir):
    """The pool widens an actor at the end of a build (``set_threads``): a job must render to
    the same bytes at 1 and at 2 threads, plain, denoised and as a selection scene."""
    from render.blender.session import BlenderSession

    jobs = _sequence(job)
    jobs = [jobs[0], jobs[1], jobs[-1]]  # plain, denoised, a scene with its matid pass
    session = BlenderSession(threads=1, quiet=True, mesh_cache_dir=mesh_cache_dir)
    try:
        by_threads = {}
        for threads in (1, 2, 1):
            session.set_threads(threads)
            digests = []
            for j in jobs:
                view = session.render_view(j)
                assert view.meta["samples"] == j["render"]["samples"]
                parts = [view.image, view.mask or b"", view.matid or b""]
                digests.append(hashlib.sha256(b"".join(parts)).hexdigest())
            assert session.scene.render.threads == threads  # Cycles was given the count
            assert by_threads.setdefault(threads, digests) == digests
        assert by_threads[2] == by_threads[1]
        with pytest.raises(ValueError, match="threads must be >= 1"):
            session.set_threads(0)
    finally:
        session.close()
