"""A pool of long-lived Ray actors, each holding one Blender session; one task = one shard.

This package is the only place that imports ray. Each ``RenderWorker`` actor imports bpy once,
reserves ``num_cpus = threads_per_worker`` (Cycles renders with exactly that many fixed
threads) and optionally ``num_gpus``; it renders whole shards with
``render.writer.render_shard`` and publishes them itself (rename or upload), so the driver
only moves small sidecars.

The driver (``RenderPool.run``) counts attempts itself: actors are created with
``max_restarts=0`` and no task retries (Ray's own retry would replay a shard that crashes its
actor until the actor is dead for good). When an actor dies (killed, out of memory, Blender
segfault) or a shard exceeds ``shard_timeout_s``, its shard is re-queued on a fresh actor
until ``shard_attempts`` is spent; only that shard is lost. Actors are recycled after
``recycle_after_shards`` shards or when their resident memory passes ``max_worker_rss_mb``.

With ``material_timeout_s``, every actor posts which view it is rendering to a small
progress actor; the driver reads it each poll and stops an actor whose view has run longer
than the limit (measured from when the driver first saw that view, so never early). The
shard goes back to the front of the queue: the material is tried ``max_retries`` more times,
then the shard is rendered without it and the material lands in the shard's failures
(``timeout after N s``). These re-queues do not count against ``shard_attempts``: a stuck
material costs its own sample, not the shard.

GPU actors try OptiX, then CUDA, on the GPU Ray assigned them. Cycles compiles its GPU
kernels on first use (minutes on some cards): every actor warms up under a per-node file
lock with a persistent kernel cache, so a node compiles once and the rest of its actors hit
the cache. The bpy wheel cannot use the GPUs of the machines this project is tested on, so
that path is covered by logic tests with a fake session only.

Elastic pool: a task is handed only to an actor that has started (its ``info`` call
returned), so a replacement actor that no node can host never holds a shard. When an actor
is lost with its node (spot preemption, a dead raylet: the actor is reported dead with its
node, or unreachable before Ray marks the node dead), its shard goes back to the front of
the queue at once, without using up ``shard_attempts`` (at most ``MAX_NODE_LOSSES`` times),
and the next free live actor takes it. A new actor that has not started within
``placement_timeout_s`` is dropped with a warning naming the node it replaced; the pool is
topped up again when the cluster has room (an autoscaler added a node, or ``workers = 0``
and a node joined). Every driver-side ``ray.get`` has a timeout; with no live actor for
``placement_timeout_s`` the remaining shards fail with a message instead of waiting forever.

Progress per view: every actor posts how many views of its shard it has rendered to the
small progress actor (fire and forget, one call per view); the driver asks it about once a
second and never waits for the answer (a zero-timeout ``ray.wait``; a late answer is picked
up on a later poll). Finished shards plus views of shards in flight give images done,
images/s and an ETA (``ViewProgress``): a tqdm bar with ``progress=True``, ``on_view(n)``
for whoever drives the build, and an INFO log line every ``PROGRESS_LOG_S`` and at the end
of a run. Each shard's result also carries its actor's cache counts
(``BlenderSession.cache_stats``); ``cache_stats()`` sums them over the run's actors and
``cache_summary()`` formats them.

Local mode: ``ray.init()`` on this machine's cores. A cluster: ``RAY_ADDRESS`` or
``address=`` (see docs/cluster.md).

The package: ``connect`` (``ensure_ray``, ``shutdown_ray``), ``actors`` (``RenderWorker``,
``ProgressBoard``), ``fleet`` (starting, replacing and dropping actors) and ``driver``
(``RenderPool``: scheduling, attempts, timeouts, progress). Its plain parts live outside it:
``render.gpu`` (GPU sessions, kernel warm-up), ``render.progress`` (``ViewProgress``) and
``render.workers`` (sessions, recycling, cache counts).
"""

from render.gpu import (
    DEFAULT_KERNEL_CACHE,
    GPU_DEVICES,
    kernel_cache_env,
    open_session,
    warm_kernels,
)
from render.pool.actors import TIMED_OUT, ProgressBoard, RenderWorker
from render.pool.connect import ensure_ray, shutdown_ray
from render.pool.driver import RenderPool
from render.progress import ViewProgress

__all__ = [
    "DEFAULT_KERNEL_CACHE",
    "GPU_DEVICES",
    "TIMED_OUT",
    "ProgressBoard",
    "RenderPool",
    "RenderWorker",
    "ViewProgress",
    "ensure_ray",
    "kernel_cache_env",
    "open_session",
    "shutdown_ray",
    "warm_kernels",
]
