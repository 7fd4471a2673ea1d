"""Benchmark settings shared by the system modules, read from the environment the harness sets."""

from __future__ import annotations

import os

TAG = os.environ.get("BENCH_TAG", "cvbench-dev")
"""Unique per (bench run, system, repetition); every key, queue or schema we create contains it."""

QUEUE = os.environ.get("BENCH_QUEUE", TAG.replace("-", "_"))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/cvbench")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
LOG_LEVEL = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
