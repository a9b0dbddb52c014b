"""Build a dataset version: plan, skip what is published, render the rest, index it.

``build(spec)`` is what ``phieat-render build SPEC`` runs:

1. load the catalogs and start the renderer pool (Ray actors by default, or this process
   with ``local=True``); ask it for the Blender version;
2. the dataset version folder is ``<output>/v-<hash>`` where the hash covers the render
   settings, seed and Blender version, so a change there never mixes old and new samples;
3. take the version's lock (one build at a time), load the stored plan generations and add
   one for catalog entries that are new;
4. skip every shard that is published and unchanged, render the others through the pool,
   each published atomically with its sidecar; the build notes what it published in its
   journal (``journal/``, see ``render.journal``), so an edited sidecar cannot keep a
   changed shard;
5. write ``failures.jsonl`` (material, reason, attempts), the dataset card ``README.md`` and
   ``wids.json`` for other loaders (``render.card``), a new ``index.json`` (older ones stay
   under ``indexes/``; ``render.index``) and ``<output>/latest.json``; return a non-zero exit code when a
   shard is missing or failures exceed ``[build].max_failure_fraction``.

    from render.build import build
    from render.spec import load_spec
    result = build(load_spec("manifests/tiny.toml"), local=True)
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phieat.schema import FAILURES_NAME, INDEX_NAME
from render import storage
from render.index import write_failures, write_index
from render.journal import failed_materials, load_snapshots, record_published, split_published
from render.plan import (
    SNAPSHOT_DIR,
    ShardPlan,
    blender_version_tag,
    dataset_version,
    load_catalogs,
    make_plan,
    snapshot_name,
)
from render.spec import Spec
from render.workers import LocalPool, Pool, SessionFactory, ShardOutcome, blender_session_factory

logger = logging.getLogger("phieat.render")

LOCK_NAME = "build.lock"
LATEST_NAME = "latest.json"


def _default_ray_auth() -> None:
    """Speak Ray's token authentication when this machine holds a token and ``RAY_AUTH_MODE``
    is unset.

    A cluster started with Ray's defaults wants the token, but a client whose mode is unset
    sends none and is refused; a token sent to a cluster without authentication is ignored.
    Ray reads the mode once, when it is imported, so this runs before the pool imports it.
    """
    if "RAY_AUTH_MODE" in os.environ or "ray" in sys.modules:
        return
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file):
        os.environ["RAY_AUTH_MODE"] = "token"


def make_pool(
    spec: Spec,
    *,
    local: bool = False,
    session_factory: SessionFactory | None = None,
    verbose: bool = False,
    address: str | None = None,
) -> Pool:
    """The pool a build uses: ``LocalPool`` if ``local``, else a Ray ``RenderPool``."""
    b = spec.build
    session_factory = session_factory or blender_session_factory
    if local:
        return LocalPool(
            session_factory,
            threads=b.threads_per_worker,
            quiet=not verbose,
            shard_attempts=b.shard_attempts,
            recycle_after_shards=b.recycle_after_shards,
            max_rss_mb=b.max_worker_rss_mb,
            material_timeout_s=b.material_timeout_s,
        )
    _default_ray_auth()
    from render.pool import RenderPool

    return RenderPool(
        session_factory=session_factory,
        workers=b.workers,
        threads_per_worker=b.threads_per_worker,
        gpus_per_worker=b.gpus_per_worker,
        shard_attempts=b.shard_attempts,
        recycle_after_shards=b.recycle_after_shards,
        max_worker_rss_mb=b.max_worker_rss_mb,
        shard_timeout_s=b.shard_timeout_s,
        material_timeout_s=b.material_timeout_s,
        quiet=not verbose,
        address=address,
    )


@dataclass
class BuildResult:
    """What a build did; ``exit_code`` is what the CLI returns."""

    output: str
    version: str
    version_url: str
    index_url: str
    planned: list[str] = field(default_factory=list)
    rendered: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed_shards: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    samples: int = 0
    planned_samples: int = 0
    images_rendered: int = 0
    seconds: float = 0.0
    complete: bool = False
    exit_code: int = 0
    reasons: list[str] = field(default_factory=list)
    lost_nodes: dict[str, list[str]] = field(default_factory=dict)
    requeued: list[str] = field(default_factory=list)
    caches: str = ""  # hit rates of the workers' mesh/material/world caches

    def summary(self) -> str:
        rate = self.images_rendered / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"dataset  {self.version_url}",
            f"shards   {len(self.planned)} planned, {len(self.rendered)} rendered, "
            f"{len(self.skipped)} already published, {len(self.failed_shards)} failed",
            f"samples  {self.samples} of {self.planned_samples} planned "
            f"({len(self.failures)} failed materials/samples)",
            f"images   {self.images_rendered} rendered in {self.seconds:.1f} s ({rate:.2f} images/s)",
            f"index    {self.index_url} (complete: {str(self.complete).lower()})",
        ]
        if self.caches:
            lines.append(f"caches   {self.caches}")
        for node, shards in self.lost_nodes.items():
            moved = ", ".join(shards) if shards else "no shard in flight"
            lines.append(f"lost     node {node}: re-queued {moved}")
        if self.requeued:
            names = list(dict.fromkeys(self.requeued))
            lines.append(
                f"requeued {len(names)} shard(s) rendered again on live workers: "
                + ", ".join(names)
            )
        if self.failures:
            lines.append(f"failures {storage.join(self.version_url, FAILURES_NAME)}")
            for record in self.failures[:5]:
                lines.append(f"  {record['key']}: {record['reason']}")
            if len(self.failures) > 5:
                lines.append(f"  ... {len(self.failures) - 5} more")
        lines += [f"FAILED: {reason}" for reason in self.reasons]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- build


class _Progress:
    """tqdm bar over images with shards and failures in the postfix (or nothing).

    A pool that reports views as they finish (``on_view``) moves the bar per view; a finished
    shard then only tops the bar up to the images of the shards done (failed samples' views
    are never reported), so the bar never goes backwards or past the total.
    """

    def __init__(self, enabled: bool, images: int, shards: int) -> None:
        self.bar = None
        self.shards_total = shards
        self.shards_done = 0
        self.failures = 0
        self.shard_images = 0
        if enabled and images:
            from tqdm import tqdm

            self.bar = tqdm(
                total=images, unit="img", desc="render", file=sys.stderr, dynamic_ncols=True
            )
            self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"shards {self.shards_done}/{self.shards_total} failures {self.failures}"
            )

    def view(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(min(count, self.bar.total - self.bar.n))

    def update(self, images: int, failures: int) -> None:
        self.shards_done += 1
        self.failures += failures
        self.shard_images += images
        if self.bar is not None:
            self.bar.update(max(0, self.shard_images - self.bar.n))
            self._postfix()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _shard_failures(shard: ShardPlan, error: str, attempts: int) -> list[dict]:
    return [
        {
            "key": s["key"],
            "material_id": s["material"]["id"],
            "view": None,
            "attempts": attempts,
            "reason": f"shard failed after {attempts} attempts: {error}",
            "shard": shard.name,
        }
        for s in shard.samples
    ]


def build(
    spec: Spec,
    *,
    pool: Pool | None = None,
    local: bool = False,
    session_factory: SessionFactory | None = None,
    progress: bool = True,
    verbose: bool = False,
    address: str | None = None,
    force_unlock: bool = False,
    trust_sidecars: bool = False,
    on_shard: Callable[[ShardOutcome], None] | None = None,
) -> BuildResult:
    """Render what is missing of ``spec``'s dataset version; see the module docstring."""
    started = time.perf_counter()
    catalogs = load_catalogs(spec)
    own_pool = pool is None
    if pool is None:
        pool = make_pool(
            spec, local=local, session_factory=session_factory, verbose=verbose, address=address
        )
    try:
        blender_version = pool.blender_version
        version = dataset_version(spec, blender_version)
        output = spec.dataset.output
        version_url = storage.join(output, version)
        pool.check_output(version_url)
        with storage.lock(storage.join(version_url, LOCK_NAME), force=force_unlock):
            try:
                result = _build_locked(
                    spec,
                    catalogs,
                    pool,
                    version,
                    version_url,
                    blender_version,
                    progress=progress,
                    trust_sidecars=trust_sidecars,
                    on_shard=on_shard,
                )
            finally:
                # Workers stopped mid-publish (SIGTERM, a lost node) leave temporaries.
                if removed := storage.remove_temporaries(version_url):
                    logger.info("removed %d unfinished temporary file(s)", len(removed))
    finally:
        if own_pool:
            pool.close()
    result.seconds = time.perf_counter() - started
    return result


def _build_locked(
    spec: Spec,
    catalogs: Any,
    pool: Pool,
    version: str,
    version_url: str,
    blender_version: str,
    *,
    progress: bool,
    trust_sidecars: bool,
    on_shard: Callable[[ShardOutcome], None] | None,
) -> BuildResult:
    b = spec.build
    previous = load_snapshots(version_url)
    plan = make_plan(spec, catalogs, previous, failed_materials(version_url) if previous else None)
    if plan.new is not None:
        name = snapshot_name(plan.new["generation"])
        storage.write_json(storage.join(version_url, SNAPSHOT_DIR, name), plan.new, indent=None)
        logger.info(
            "planned generation %d: %d new shards", plan.new["generation"], len(plan.new_shards)
        )
    spec_url = storage.join(version_url, "spec.json")
    if not storage.exists(spec_url):
        storage.write_json(
            spec_url, {"spec": spec.render_settings(), "blender_version": blender_version}
        )

    result = BuildResult(
        output=spec.dataset.output,
        version=version,
        version_url=version_url,
        index_url=storage.join(version_url, INDEX_NAME),
        planned=[s.name for s in plan.shards],
        planned_samples=plan.num_samples,
    )
    sidecars, todo = split_published(version_url, plan.shards, trust_sidecars)
    result.skipped = list(sidecars)
    logger.info(
        "%s: %d shards planned, %d already published, %d to render",
        version_url,
        len(plan.shards),
        len(result.skipped),
        len(todo),
    )

    shard_failures: list[dict] = []
    by_name = {s.name: s for s in todo}
    bar = _Progress(progress, sum(s.num_images for s in todo), len(todo))
    # Base folders travel beside the plan, outside its hash: plans stay machine-independent.
    base_dirs = {
        kind: str(spec.catalog_path(kind).parent) for kind in ("materials", "meshes", "lights")
    }
    jobs = [{**s.to_dict(), "base_dirs": base_dirs} for s in todo]
    # A pool that reports finished views moves the bar per view (beside any hook of its own).
    hook = getattr(pool, "on_view", None)
    if hasattr(pool, "on_view"):

        def on_view(count: int) -> None:
            bar.view(count)
            if hook is not None:
                hook(count)

        pool.on_view = on_view
    outcomes = pool.run(jobs, version_url, b.max_retries)
    try:
        for outcome in outcomes:
            shard = by_name[outcome.name]
            if outcome.sidecar is not None:
                record_published(version_url, shard.name, outcome.sidecar)
                sidecars[shard.name] = outcome.sidecar
                result.rendered.append(shard.name)
                result.images_rendered += outcome.sidecar["images"]
                bar.update(shard.num_images, len(outcome.sidecar["failures"]))
            else:
                result.failed_shards.append(shard.name)
                shard_failures += _shard_failures(
                    shard, outcome.error or "unknown error", outcome.attempts
                )
                bar.update(shard.num_images, len(shard.samples))
                logger.error(
                    "%s failed after %d attempts: %s", shard.name, outcome.attempts, outcome.error
                )
            if on_shard is not None:
                on_shard(outcome)
    finally:
        outcomes.close()
        bar.close()
        result.lost_nodes = dict(getattr(pool, "lost_nodes", {}))
        result.requeued = list(getattr(pool, "requeued", []))
        if hasattr(pool, "on_view"):
            pool.on_view = hook
        caches = getattr(pool, "cache_summary", None)
        result.caches = caches() if callable(caches) else ""

    order = {name: i for i, name in enumerate(result.planned)}
    failures = [f for name in sorted(sidecars, key=order.get) for f in sidecars[name]["failures"]]
    failures += shard_failures
    write_failures(version_url, failures)
    index, result.index_url = write_index(
        spec, plan, version, version_url, sidecars, failures, catalogs.hashes, blender_version
    )
    storage.write_json(
        storage.join(spec.dataset.output, LATEST_NAME),
        {"version": version, "index": f"{version}/{INDEX_NAME}", "dataset": spec.dataset.name},
    )
    result.failures = failures
    result.samples = index["samples"]
    result.complete = index["complete"]
    # A failure whose material rendered in a later sample (its entry was fixed) stays in the
    # record but no longer counts against the threshold.
    rendered_ids = set(index["materials"])
    open_failures = [f for f in failures if f["material_id"] not in rendered_ids]
    fraction = len(open_failures) / max(1, plan.num_samples)
    if not result.complete:
        result.reasons.append(
            f"{len(plan.shards) - len(index['shards'])} shard(s) not published: "
            f"{', '.join(result.failed_shards)}"
        )
    if fraction > b.max_failure_fraction:
        result.reasons.append(
            f"{len(open_failures)} of {plan.num_samples} samples failed ({fraction:.1%}), above "
            f"[build].max_failure_fraction = {b.max_failure_fraction:.1%}; see {FAILURES_NAME}"
        )
    result.exit_code = 1 if result.reasons else 0
    return result


def resolve_dataset_url(url: str) -> str:
    """A version folder URL from either a version folder or a dataset output (``latest.json``)."""
    if storage.exists(storage.join(url, INDEX_NAME)):
        return url
    latest = storage.join(url, LATEST_NAME)
    if storage.exists(latest):
        return storage.join(url, storage.read_json(latest)["version"])
    raise storage.StorageError(
        f"{url} holds neither {INDEX_NAME} nor {LATEST_NAME}: pass a dataset version folder "
        "(…/v-<hash>) or the output of a finished build"
    )


def expected_blender_version() -> str:
    """The Blender version a build here would report, read from the installed bpy wheel."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return blender_version_tag(version("bpy"))
    except PackageNotFoundError:
        return "unknown"
