from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

import conveyor
from conveyor import App, ConfigError, PayloadError, UnknownJob
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.job import decode
from conveyor.testing import capture_signals


def test_public_api_is_pinned() -> None:
    assert conveyor.__all__ == sorted(conveyor.__all__)
    assert set(conveyor.__all__) == {
        "App",
        "Backoff",
        "BoolKey",
        "Broker",
        "BrokerUnavailable",
        "Bus",
        "ConfigError",
        "ConveyorError",
        "DeadLetter",
        "Delivery",
        "DurationKey",
        "ErrorInfo",
        "ErrorKey",
        "Event",
        "FloatKey",
        "IntKey",
        "Job",
        "JobCancelled",
        "JobContext",
        "JobTimeout",
        "Message",
        "MessageTooLarge",
        "Middleware",
        "NonRetryable",
        "PayloadError",
        "QueueStats",
        "Retry",
        "RetryPolicy",
        "Selector",
        "ServiceUnavailable",
        "Signal",
        "StringKey",
        "UnknownJob",
        "Worker",
        "WorkerConfig",
        "WorkerResult",
        "current_job",
    }


def test_url_defaults_to_sqlite_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_BROKER_URL", raising=False)
    assert App().url == "sqlite:///conveyor.db"
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "memory://")
    assert App().url == "memory://"
    assert App("sqlite:///x.db").url == "sqlite:///x.db"


@pytest.mark.parametrize("url", ["mysql://x", "nonsense", "sqlite://relative.db"])
def test_bad_urls_fail_fast(url: str) -> None:
    with pytest.raises(ConfigError):
        App(url)._broker_cls.from_url(url)


async def test_url_chooses_the_broker(tmp_path: object) -> None:
    assert isinstance(await App("memory://").broker(), MemoryBroker)
    assert isinstance(await App(f"sqlite:///{tmp_path}/a.db").broker(), SQLiteBroker)


def test_send_returns_an_id_and_stores_the_job(app: App) -> None:
    @app.job(queue="mail", priority=2, max_attempts=5)
    def send_email(to: str, subject: str = "") -> str:
        return f"{to}:{subject}"

    job_id = send_email.send("a@b", subject="hi")
    [d] = asyncio.run(_lease(app, ["mail"]))
    job = decode(d.body)
    assert (d.id, job.id, job.type, job.queue, job.args, job.kwargs) == (
        job_id,
        job_id,
        send_email.name,
        "mail",
        ["a@b"],
        {"subject": "hi"},
    )
    assert (job.priority, job.max_attempts, d.priority) == (2, 5, 2)


async def _lease(app: App, queues: list[str]) -> list[conveyor.Delivery]:
    return await (await app.broker()).lease(queues, 10, 30)


def test_calling_the_function_runs_it_inline(app: App) -> None:
    @app.job
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    assert app.stats()["default"].ready == 0


def test_name_defaults_to_module_and_qualname(app: App) -> None:
    @app.job
    def thing() -> None: ...

    assert thing.name == f"{__name__}.test_name_defaults_to_module_and_qualname.<locals>.thing"


def test_duplicate_names_and_bad_options_are_rejected(app: App) -> None:
    @app.job(name="x")
    def one() -> None: ...

    with pytest.raises(ConfigError, match="already registered"):
        app.job(name="x")(lambda: None)
    with pytest.raises(ConfigError, match="invalid queue name"):
        app.job(name="y", queue="bad queue!")(lambda: None)
    with pytest.raises(ConfigError, match="max_attempts"):
        app.job(name="z", max_attempts=0)(lambda: None)
    with pytest.raises(ConfigError, match="timeout"):
        app.job(name="w", timeout=0)(lambda: None)


def test_per_send_options(app: App) -> None:
    @app.job
    def work(n: int) -> None: ...

    before = time.time()
    a = work.options(delay=60, queue="slow", priority=9, max_attempts=7).message(1)
    assert a.queue == "slow" and a.priority == 9 and a.max_attempts == 7
    assert before + 59 < a.scheduled_at < time.time() + 61
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    b = work.options(eta=eta).message(2)
    assert abs(b.scheduled_at - eta.timestamp()) < 1e-6
    c = work.options(delay=dt.timedelta(seconds=5)).message(3)
    assert c.scheduled_at - c.created_at == pytest.approx(5, abs=0.01)
    with pytest.raises(ConfigError, match="not both"):
        work.options(delay=1, eta=eta)
    with pytest.raises(ConfigError, match="delay"):
        work.options(delay=-1)
    work.options(delay=30).send(4)
    s = app.stats()
    assert s["default"].delayed == 1


def test_non_json_arguments_fail_at_send_time(app: App) -> None:
    @app.job
    def work(x: object) -> None: ...

    with pytest.raises(PayloadError, match=r"args\[0\] is a datetime.datetime"):
        work.send(dt.datetime.now())
    with pytest.raises(PayloadError, match="kwargs"):
        work.send(x={1, 2})
    assert app.stats()["default"].ready == 0


def test_message_size_limit_is_configurable() -> None:
    app = App("memory://", max_message_size=500)

    @app.job
    def work(x: str) -> None: ...

    with pytest.raises(conveyor.MessageTooLarge):
        work.send("x" * 600)
    work.send("x" * 100)


def test_batch_send_is_one_enqueue_and_emits_enqueued(app: App) -> None:
    @app.job
    def work(n: int) -> None: ...

    with capture_signals(app, ["job.enqueued"]) as events:
        ids = app.send_batch([work.message(i) for i in range(5)])
    assert len(ids) == 5 and app.stats()["default"].ready == 5
    assert [e.attrs["job_id"] for e in events] == ids


async def test_async_send(app: App) -> None:
    @app.job
    async def work(n: int) -> int:
        return n

    job_id = await work.send_async(1)
    await app.send_batch_async([work.message(2)])
    assert (await (await app.broker()).stats(["default"]))["default"].ready == 2
    assert job_id


def test_send_by_name_and_unknown_job(app: App) -> None:
    @app.job(name="known")
    def known() -> None: ...

    assert app.message("known").type == "known"
    with pytest.raises(UnknownJob, match="unknown job 'nope'; registered jobs: known"):
        app.message("nope")


def test_sync_send_works_inside_a_running_loop(app: App) -> None:
    @app.job
    def work() -> None: ...

    async def inside() -> str:
        return work.send()

    assert asyncio.run(inside())


def test_arguments_are_checked_against_the_handler_signature(app: App) -> None:
    @app.job(name="greet")
    def greet(name: str, *, loud: bool = False) -> None: ...

    with pytest.raises(PayloadError, match=r"job 'greet': .*unexpected keyword argument 'nope'"):
        greet.send("a", nope=1)
    with pytest.raises(PayloadError, match="missing a required argument"):
        app.message("greet")
    greet.send("a", loud=True)
    assert app.stats()["default"].ready == 1
