"""The standard metric set, used when ``Telemetry(metrics=...)`` is not given."""

from __future__ import annotations

from .. import signals as sig
from .spec import Metric

DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
)
"""Job duration buckets in seconds: 5 ms to 10 minutes."""

_JOB = ("queue", "job_type")


def _depth(key: str, state: str) -> Metric:
    return Metric(
        sig.QUEUE_DEPTH, "conveyor_queue_depth", kind="gauge", value_key=key, labels=["queue"],
        const_labels={"state": state},
        description="Jobs per queue and state (ready, delayed, in_flight, dead).",
    )


STANDARD_METRICS: tuple[Metric, ...] = (
    Metric(sig.JOB_ENQUEUED, "conveyor_jobs_enqueued_total", labels=_JOB,
           description="Jobs enqueued."),
    Metric(sig.JOB_COMPLETED, "conveyor_jobs_completed_total", labels=_JOB,
           description="Attempts that completed."),
    Metric(sig.JOB_FAILED, "conveyor_jobs_failed_total", labels=_JOB,
           description="Attempts that raised or timed out (retried or not)."),
    Metric(sig.JOB_RETRYING, "conveyor_jobs_retried_total", labels=_JOB,
           description="Failed attempts scheduled to run again."),
    Metric(sig.JOB_DEAD, "conveyor_jobs_dead_total", labels=(*_JOB, "reason"),
           description="Jobs moved to the dead-letter queue, by reason."),
    Metric(sig.JOB_LEASE_LOST, "conveyor_leases_lost_total", labels=(*_JOB, "detected_by"),
           description="Leases a worker lost while holding the job (another worker may run it)."),
    Metric(sig.JOB_ACK_REFUSED, "conveyor_acks_refused_total", labels=_JOB,
           description="Finished jobs whose ack the broker refused because their lease was lost."),
    Metric([sig.JOB_COMPLETED, sig.JOB_FAILED], "conveyor_job_duration_seconds",
           kind="histogram", value_key="duration", labels=_JOB, buckets=DURATION_BUCKETS,
           unit="s", description="Duration of attempts, completed or failed."),
    _depth("ready", "ready"),
    _depth("delayed", "delayed"),
    _depth("in_flight", "in_flight"),
    _depth("dead", "dead"),
    Metric(sig.QUEUE_DEPTH, "conveyor_queue_latency_seconds", kind="gauge",
           value_key="oldest_age", labels=["queue"], unit="s",
           description="Age of the oldest ready job per queue."),
    Metric(sig.JOB_STARTED, "conveyor_jobs_in_progress", kind="gauge",
           decrement=[sig.JOB_COMPLETED, sig.JOB_FAILED, sig.JOB_ACK_REFUSED], labels=_JOB,
           description="Attempts running now in this process."),
    Metric(sig.WORKER_STARTED, "conveyor_workers", kind="gauge",
           decrement=sig.WORKER_STOPPED, description="Workers running in this process."),
    Metric(sig.WORKER_ERROR, "conveyor_worker_errors_total", labels=(*_JOB, "stage"),
           description="Failures of conveyor's own code around a job, by stage; the worker carried on."),
    Metric(sig.WORKER_THREAD_STUCK, "conveyor_worker_threads_stuck", kind="gauge",
           decrement=sig.WORKER_THREAD_RETURNED, labels=_JOB,
           description="Worker threads still running a sync handler past its timeout."),
    Metric(sig.DLQ_RETRIED, "conveyor_dead_letters_retried_total", value_key="count",
           labels=["requested_by"], description="Dead letters sent back to their queues, by who asked."),
    Metric(sig.DLQ_PURGED, "conveyor_dead_letters_purged_total", value_key="count",
           labels=["requested_by"], description="Dead letters deleted for good, by who asked."),
    Metric(sig.DLQ_PRUNED, "conveyor_dead_letters_pruned_total", value_key="count",
           description="Dead letters deleted by retention (max_age, max_per_queue)."),
)
"""``conveyor_*`` metrics labelled by queue and job type (never by job id)."""
