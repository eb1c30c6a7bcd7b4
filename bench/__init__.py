"""
Benchmarks of cobalt_async that print ratios, not just times.

Absolute times on a shared machine are noise, so every metric is measured next to a
baseline in the same run (alternated or interleaved with it, medians taken) and printed with
their ratio, its target and PASS/FAIL. Each metric runs in a fresh interpreter::

    python -m bench                    # the full run (about 17 minutes)
    python -m bench --quick            # smaller sizes, under 60 s
    python -m bench --json             # one JSON object per metric per line
    python -m bench --only ingest,wakeup
    python -m bench --profile [--profile-dir DIR]   # profiles of the hot paths

Metrics (short names for ``--only``):

- ``submit``: ``client.tasks.create`` vs raw ``httpx`` POSTs (same headers and body) against
  the simulator in its own process; requests/s, target ratio >= 0.90. Also
  ``create_many_cpu``: client CPU per job of ``tasks.create_many(concurrency=32)`` vs 32
  workers looping over raw ``httpx`` POSTs; target ratio >= 0.90.
- ``ingest``: ``WebhookApp`` (verify, parse, dedup, store, wake a pending waiter) driven by
  direct ASGI calls vs an app that only checks the HMAC and calls ``json.loads``; events/s
  (CPU time), target ratio >= 0.90; and ``webhook_ingest_fragmented``, the pair again on a
  fragmented heap, target >= 0.85. Its details also print ``floor_app``: the SDK's HMAC,
  model validation and slot wake-up with nothing around them, the most a rework could reach.
- ``memory``: tracemalloc bytes per pending awaited handle, net of a task awaiting a bare
  ``anyio.Event``; target <= 1 KiB.
- ``correlator``: ``memory_vs_correlator``, tracemalloc bytes per pending awaited handle, its
  task included, vs a naive ``dict[str, asyncio.Future]`` correlator with a task awaiting
  each future; target ratio <= 1.5.
- ``wakeup``: ``receive()`` returning -> the code after ``await handle`` running, in-process,
  vs ``anyio.Event``; p99 target <= 1 ms.
- ``wakeup_redis``: the same across processes through ``RedisSink`` (a private redis-server),
  vs raw redis-py ``XADD`` -> ``XREAD BLOCK``; target p99 ratio <= 1.5.
- ``wakeup_sqlite``: the same through ``SQLiteSink`` (one file, two processes), vs a bare
  ``INSERT`` -> a poll of the table at the sink's ``poll_interval``; p99 target <= 50 ms.
- ``wakeup_postgres``: the same through ``PostgresSink`` (a private PostgreSQL cluster), vs a
  bare asyncpg ``NOTIFY`` -> ``LISTEN`` callback; target p99 ratio <= 2.
- ``stores_sqlite``: webhooks stored per second, ``WebhookReceiver.receive`` into
  ``SQLiteSink`` (a temporary file) vs the sink's own put transaction issued bare with the
  stdlib ``sqlite3`` from worker threads (as many connections, same concurrency); target
  ratio >= 0.6.
- ``stores_redis``: the same into ``RedisSink`` (a private redis-server) vs the sink's own
  publish script issued bare with redis-py; target ratio >= 0.45.
- ``stores_postgres``: the same into ``PostgresSink`` vs the sink's own statement issued bare
  with asyncpg (same pool size and concurrency); target ratio >= 0.45.
- ``scaling``: CPU per resolved event with 1,000,000 pending handles / with 1,000, each size
  in fresh interpreters (alternated), the collector on and no ``gc.freeze()``; <= 1.3.
- ``requests``: HTTP requests per resolved job for a 30 s job with webhooks (counted at the
  fake, time scaled) vs Cobalt's 1-second polling helper; target exactly 1.0.
- ``waits``: CPU of ``wait_all`` and of ``as_completed`` over 100,000 handles vs
  ``asyncio.gather(*(h.wait() for h in handles))`` in the same run, target ratio <= 0.2
  each; and ``wait_all_memory``, tracemalloc bytes per handle while ``wait_all`` waits (the
  handles themselves not counted), target <= 512 B.
- ``gc``: GC-tracked objects per pending handle awaited in a task, net of a task awaiting a
  bare ``anyio.Event``, target <= 2; and ``gc_pause``, a full ``gc.collect()`` with
  1,000,000 pending (each way in its own process, no ``gc.freeze()``) vs the same number of
  tasks awaiting a bare ``anyio.Event``, target ratio <= 1.1.
"""
