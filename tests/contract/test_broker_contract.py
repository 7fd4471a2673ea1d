"""The one conformance suite every broker passes (see conftest for how brokers plug in)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import ModuleType

from conveyor.brokers import (
    LEASE_EXPIRED,
    MANUAL_RETRY,
    MAX_REFUNDED_INTERRUPTIONS,
    WORKER_SHUTDOWN,
    Broker,
    Delivery,
    Failure,
    Message,
    Selector,
    position,
)
from conveyor.job import new_id

Q = "contract"
VT = 30.0


def msg(queue: str = Q, priority: int = 0, eta: float = 0.0, body: bytes = b"{}", type_: str = "t") -> Message:
    return Message(new_id(), queue, type_, body, priority, eta, time.time())


async def test_enqueue_then_lease_returns_the_message_with_attempt_one(broker: Broker) -> None:
    m = msg(body=b'{"id":"x","args":[1,2]}', type_="email")
    await broker.enqueue([m])
    [d] = await broker.lease([Q], 10, VT)
    assert (d.id, d.queue, d.type, d.body, d.attempts, d.redelivery) == (m.id, Q, "email", m.body, 1, "")
    assert d.lease_token


async def test_body_bytes_are_kept_exactly(broker: Broker) -> None:
    body = b"\xff\x00not json\x80"
    await broker.enqueue([msg(body=body)])
    [d] = await broker.lease([Q], 1, VT)
    assert d.body == body


async def test_batch_enqueue_stores_all(broker: Broker) -> None:
    await broker.enqueue([msg() for _ in range(50)])
    assert (await broker.stats([Q]))[Q].ready == 50


async def test_enqueue_is_idempotent_by_id(broker: Broker) -> None:
    m = msg()
    await broker.enqueue([m])
    await broker.enqueue([m])
    assert (await broker.stats([Q]))[Q].ready == 1


async def test_lease_respects_limit_and_never_hands_out_twice(broker: Broker) -> None:
    await broker.enqueue([msg() for _ in range(10)])
    first = await broker.lease([Q], 4, VT)
    second = await broker.lease([Q], 100, VT)
    assert len(first) == 4 and len(second) == 6
    assert not {d.id for d in first} & {d.id for d in second}
    assert await broker.lease([Q], 10, VT) == []


async def test_concurrent_leases_are_disjoint(broker: Broker) -> None:
    await broker.enqueue([msg() for _ in range(60)])
    batches = await asyncio.gather(*(broker.lease([Q], 7, VT) for _ in range(12)))
    ids = [d.id for b in batches for d in b]
    assert len(ids) == 60 and len(set(ids)) == 60


async def test_higher_priority_first_then_fifo(broker: Broker) -> None:
    low1, low2 = msg(priority=0), msg(priority=0)
    high = msg(priority=5)
    mid = msg(priority=1)
    for m in (low1, low2, high, mid):
        await broker.enqueue([m])
    got = [d.id for d in await broker.lease([Q], 10, VT)]
    assert got == [high.id, mid.id, low1.id, low2.id]


async def test_lease_takes_only_the_named_queues(broker: Broker) -> None:
    a, b = msg(queue="qa"), msg(queue="qb")
    await broker.enqueue([a, b])
    got = await broker.lease(["qb"], 10, VT)
    assert [d.id for d in got] == [b.id]
    got = await broker.lease(["qa", "qb"], 10, VT)
    assert [d.id for d in got] == [a.id]


async def test_delayed_message_is_held_until_due(broker: Broker) -> None:
    m = msg(eta=time.time() + 0.6)
    await broker.enqueue([m])
    s = (await broker.stats([Q]))[Q]
    assert (s.ready, s.delayed) == (0, 1)
    assert await broker.lease([Q], 10, VT) == []
    await asyncio.sleep(0.8)
    assert (await broker.stats([Q]))[Q].ready == 1
    [d] = await broker.lease([Q], 10, VT)
    assert d.id == m.id


async def test_ack_deletes(broker: Broker) -> None:
    await broker.enqueue([msg(), msg()])
    ds = await broker.lease([Q], 10, VT)
    assert (await broker.stats([Q]))[Q].in_flight == 2
    await broker.ack(ds)
    s = (await broker.stats([Q]))[Q]
    assert (s.ready, s.delayed, s.in_flight, s.dead) == (0, 0, 0, 0)


async def test_nack_delays_and_keeps_attempts(broker: Broker) -> None:
    await broker.enqueue([msg()])
    [d] = await broker.lease([Q], 1, VT)
    await broker.nack(d, time.time() + 0.5, Failure("ValueError", "boom", "tb"))
    s = (await broker.stats([Q]))[Q]
    assert (s.delayed, s.in_flight) == (1, 0)
    assert await broker.lease([Q], 1, VT) == []
    await asyncio.sleep(0.7)
    [again] = await broker.lease([Q], 1, VT)
    assert again.id == d.id and again.attempts == 2


async def test_nack_due_now_is_ready_at_once(broker: Broker) -> None:
    await broker.enqueue([msg()])
    [d] = await broker.lease([Q], 1, VT)
    await broker.nack(d, time.time())
    [again] = await broker.lease([Q], 1, VT)
    assert again.attempts == 2


async def test_dead_letters_keep_reason_and_error(broker: Broker) -> None:
    m = msg(type_="report")
    await broker.enqueue([m])
    [d] = await broker.lease([Q], 1, VT)
    await broker.dead(d, "max_attempts_exceeded", Failure("KeyError", "'x'", "Traceback..."))
    [dl] = await broker.dlq_list(Q)
    assert (dl.id, dl.queue, dl.type, dl.reason, dl.attempts) == (m.id, Q, "report", "max_attempts_exceeded", 1)
    assert (dl.error_type, dl.error_message, dl.traceback) == ("KeyError", "'x'", "Traceback...")
    assert dl.body == m.body and dl.dead_at > 0
    s = (await broker.stats([Q]))[Q]
    assert (s.dead, s.in_flight, s.ready) == (1, 0, 0)
    assert await broker.lease([Q], 1, VT) == []


async def test_expired_lease_is_rescued_with_reason(broker: Broker) -> None:
    await broker.enqueue([msg()])
    [d] = await broker.lease([Q], 1, 0.3)
    assert await broker.rescue() == []
    await asyncio.sleep(0.5)
    assert await broker.rescue() == [d.id]
    [again] = await broker.lease([Q], 1, VT)
    assert again.id == d.id and again.attempts == 2 and again.redelivery == LEASE_EXPIRED


async def test_stale_lease_cannot_ack_or_nack(broker: Broker) -> None:
    await broker.enqueue([msg()])
    [old] = await broker.lease([Q], 1, 0.2)
    await asyncio.sleep(0.4)
    await broker.rescue()
    [new] = await broker.lease([Q], 1, VT)
    await broker.ack([old])
    await broker.nack(old, time.time())
    await broker.dead(old, "non_retryable")
    assert (await broker.stats([Q]))[Q].in_flight == 1
    await broker.ack([new])
    assert (await broker.stats([Q]))[Q].in_flight == 0


async def test_extend_keeps_a_lease_alive(broker: Broker) -> None:
    await broker.enqueue([msg()])
    [d] = await broker.lease([Q], 1, 0.4)
    await broker.extend([d], 5.0)
    await asyncio.sleep(0.6)
    assert await broker.rescue() == []
    assert (await broker.stats([Q]))[Q].in_flight == 1


async def test_release_gives_back_without_spending_an_attempt(broker: Broker) -> None:
    await broker.enqueue([msg()])
    [d] = await broker.lease([Q], 1, VT)
    await broker.release([d], WORKER_SHUTDOWN)
    [again] = await broker.lease([Q], 1, VT)
    assert again.attempts == 1 and again.redelivery == WORKER_SHUTDOWN


async def test_stats_counts_and_oldest_age(broker: Broker) -> None:
    await broker.enqueue([msg(eta=time.time() - 2.0), msg(), msg(eta=time.time() + 60)])
    await broker.lease([Q], 1, VT)  # takes the one that has waited longest
    await broker.enqueue([msg(eta=time.time() - 5.0)])
    s = (await broker.stats([Q]))[Q]
    assert (s.ready, s.delayed, s.in_flight, s.dead) == (2, 1, 1, 0)
    assert 4.5 <= s.oldest_age_s <= 30


async def test_stats_of_unknown_queue_is_zero(broker: Broker) -> None:
    s = (await broker.stats(["never-used"]))["never-used"]
    assert (s.ready, s.delayed, s.in_flight, s.dead, s.oldest_age_s) == (0, 0, 0, 0, 0.0)


async def test_stats_without_queues_lists_known_queues(broker: Broker) -> None:
    await broker.enqueue([msg(queue="s1"), msg(queue="s2")])
    found = await broker.stats()
    assert {"s1", "s2"} <= set(found)


async def _bury(broker: Broker, queue: str, n: int) -> list[str]:
    await broker.enqueue([msg(queue=queue) for _ in range(n)])
    ds = await broker.lease([queue], n, VT)
    for d in ds:
        await broker.dead(d, "non_retryable", Failure("E", "m"))
    return [d.id for d in ds]


async def test_dlq_retry_by_id_requeues_with_fresh_attempts(broker: Broker) -> None:
    ids = await _bury(broker, Q, 3)
    assert await broker.dlq_retry(Selector(ids=[ids[0], "no-such-id"])) == [ids[0]]
    [d] = await broker.lease([Q], 10, VT)
    assert d.id == ids[0] and d.attempts == 1 and d.redelivery == MANUAL_RETRY
    assert len(await broker.dlq_list(Q)) == 2


async def test_dlq_retry_all_of_one_queue(broker: Broker) -> None:
    d1 = await _bury(broker, "d1", 2)
    await _bury(broker, "d2", 2)
    assert sorted(await broker.dlq_retry(Selector(all=True, queue="d1"))) == sorted(d1)
    assert (await broker.stats(["d1"]))["d1"].ready == 2
    assert (await broker.stats(["d2"]))["d2"].dead == 2


async def test_dlq_purge_by_id_and_all(broker: Broker) -> None:
    ids = await _bury(broker, Q, 3)
    assert await broker.dlq_purge(Selector(ids=[ids[1]])) == [ids[1]]
    assert [d.id for d in await broker.dlq_list(Q)] == [ids[0], ids[2]]
    assert sorted(await broker.dlq_purge(Selector(all=True))) == sorted([ids[0], ids[2]])
    assert await broker.dlq_list() == []
    assert (await broker.stats([Q]))[Q].dead == 0


async def test_dlq_ops_ignore_live_messages(broker: Broker) -> None:
    m = msg()
    await broker.enqueue([m])
    assert await broker.dlq_purge(Selector(ids=[m.id])) == []
    assert await broker.dlq_retry(Selector(ids=[m.id])) == []
    assert (await broker.stats([Q]))[Q].ready == 1


async def test_wait_returns_within_its_timeout(broker: Broker) -> None:
    start = time.monotonic()
    await broker.wait([Q], 0.2)
    assert time.monotonic() - start < 2.0


async def test_a_second_instance_shares_the_store(peer_factory: ModuleType, tmp_path: Path) -> None:
    async with peer_factory.make(tmp_path) as broker, peer_factory.make_peer(tmp_path) as peer:
        await broker.enqueue([msg() for _ in range(20)])
        mine, theirs = await asyncio.gather(broker.lease([Q], 15, VT), peer.lease([Q], 15, VT))
        assert len(mine) + len(theirs) == 20
        assert not {d.id for d in mine} & {d.id for d in theirs}
        await peer.ack(theirs)
        assert (await broker.stats([Q]))[Q].in_flight == len(mine)


async def test_lock_is_exclusive_renewable_and_expires(broker: Broker) -> None:
    assert await broker.acquire_lock("leader", "a", 0.4)
    assert not await broker.acquire_lock("leader", "b", 0.4)
    assert await broker.acquire_lock("leader", "a", 0.4)  # renew
    assert await broker.acquire_lock("other", "b", 0.4)  # locks are independent
    await asyncio.sleep(0.6)
    assert await broker.acquire_lock("leader", "b", 5)  # expired: b takes over
    assert not await broker.acquire_lock("leader", "a", 5)


async def test_release_lock_only_by_its_owner(broker: Broker) -> None:
    assert await broker.acquire_lock("leader", "a", 30)
    await broker.release_lock("leader", "b")
    assert not await broker.acquire_lock("leader", "b", 30)
    await broker.release_lock("leader", "a")
    assert await broker.acquire_lock("leader", "b", 30)


async def test_concurrent_lock_attempts_elect_one_owner(broker: Broker) -> None:
    won = await asyncio.gather(*(broker.acquire_lock("race", f"w{i}", 30) for i in range(8)))
    assert sum(won) == 1


async def test_rescue_forgets_expired_locks(broker: Broker) -> None:
    assert await broker.acquire_lock("gone", "a", 0.2)
    await asyncio.sleep(0.4)
    await broker.rescue()
    assert await broker.acquire_lock("gone", "b", 30)  # free, whether pruned or merely expired


# -- releasing interrupted jobs at shutdown ----------------------------------------------


async def _lease_one(broker: Broker) -> Delivery:
    [d] = await broker.lease([Q], 1, VT)
    return d


async def test_releasing_unstarted_jobs_always_refunds_the_attempt(broker: Broker) -> None:
    await broker.enqueue([msg()])
    for _ in range(MAX_REFUNDED_INTERRUPTIONS + 3):
        d = await _lease_one(broker)
        assert d.attempts == 1
        await broker.release([d], WORKER_SHUTDOWN, interrupted=False)
    again = await _lease_one(broker)
    assert again.attempts == 1 and again.redelivery == WORKER_SHUTDOWN


async def test_interrupted_releases_refund_the_attempt_only_up_to_the_limit(broker: Broker) -> None:
    await broker.enqueue([msg()])
    seen = []
    for _ in range(MAX_REFUNDED_INTERRUPTIONS + 3):
        d = await _lease_one(broker)
        seen.append(d.attempts)
        await broker.release([d], WORKER_SHUTDOWN, interrupted=True)
    seen.append((await _lease_one(broker)).attempts)
    # The first MAX_REFUNDED_INTERRUPTIONS interruptions are free, every later one counts.
    assert seen == [1] * (MAX_REFUNDED_INTERRUPTIONS + 1) + [2, 3, 4]


async def test_unstarted_release_after_the_limit_still_refunds(broker: Broker) -> None:
    await broker.enqueue([msg()])
    for _ in range(MAX_REFUNDED_INTERRUPTIONS + 1):
        await broker.release([await _lease_one(broker)], WORKER_SHUTDOWN, interrupted=True)
    d = await _lease_one(broker)
    assert d.attempts == 2
    await broker.release([d], WORKER_SHUTDOWN)
    assert (await _lease_one(broker)).attempts == 2


async def test_dlq_retry_forgets_past_interruptions(broker: Broker) -> None:
    m = msg()
    await broker.enqueue([m])
    for _ in range(MAX_REFUNDED_INTERRUPTIONS):
        await broker.release([await _lease_one(broker)], WORKER_SHUTDOWN, interrupted=True)
    await broker.dead(await _lease_one(broker), "max_attempts_exceeded")
    assert await broker.dlq_retry(Selector(ids=[m.id])) == [m.id]
    for _ in range(MAX_REFUNDED_INTERRUPTIONS):
        d = await _lease_one(broker)
        assert d.attempts == 1
        await broker.release([d], WORKER_SHUTDOWN, interrupted=True)
    assert (await _lease_one(broker)).attempts == 1


async def test_interrupted_release_with_a_lost_lease_changes_nothing(broker: Broker) -> None:
    await broker.enqueue([msg()])
    d = await _lease_one(broker)
    await broker.release([d], WORKER_SHUTDOWN)
    fresh = await _lease_one(broker)
    for _ in range(MAX_REFUNDED_INTERRUPTIONS + 2):
        await broker.release([d], WORKER_SHUTDOWN, interrupted=True)  # stale token: ignored
    await broker.release([fresh], WORKER_SHUTDOWN, interrupted=True)
    assert (await _lease_one(broker)).attempts == 1


# -- dead letters: lookup by id and prefix, keyset paging, ids touched, retention --


async def _bury_ids(broker: Broker, ids: list[str], queue: str = Q) -> None:
    """Dead-letter messages with these ids, one at a time (so their dead_at grow)."""
    for job_id in ids:
        await broker.enqueue([Message(job_id, queue, "t", b"{}", 0, 0.0, time.time())])
        [d] = await broker.lease([queue], 1, VT)
        await broker.dead(d, "non_retryable", Failure("E", "m"))


async def test_dlq_get_returns_the_dead_letters_among_the_ids(broker: Broker) -> None:
    ids = await _bury(broker, Q, 3)
    live = msg()
    await broker.enqueue([live])
    found = await broker.dlq_get([ids[2], "no-such-id", live.id, ids[0], ids[2]])
    assert [d.id for d in found] == [ids[0], ids[2]]
    assert found[0].reason == "non_retryable" and found[0].error_type == "E"
    assert await broker.dlq_get([]) == []


async def test_dlq_match_finds_dead_letters_by_id_prefix(broker: Broker) -> None:
    await _bury_ids(broker, ["pfx-aa1", "pfx-aa2", "pfx-b", "x*y", "xzy"])
    await broker.enqueue([Message("pfx-aa3", Q, "t", b"{}")])  # live: never a match
    assert [d.id for d in await broker.dlq_match("pfx-aa")] == ["pfx-aa1", "pfx-aa2"]
    assert [d.id for d in await broker.dlq_match("pfx-", limit=2)] == ["pfx-aa1", "pfx-aa2"]
    assert [d.id for d in await broker.dlq_match("pfx-b")] == ["pfx-b"]
    assert [d.id for d in await broker.dlq_match("x*")] == ["x*y"]  # no glob or LIKE wildcards
    assert await broker.dlq_match("nope") == []


async def test_dlq_page_walks_oldest_first_with_a_stable_cursor(broker: Broker) -> None:
    ids = await _bury(broker, "p1", 3) + await _bury(broker, "p2", 2) + await _bury(broker, "p1", 2)
    everything = await broker.dlq_page(limit=100)
    order = sorted(everything, key=lambda d: (d.dead_at, d.id))
    assert everything == order and sorted(d.id for d in everything) == sorted(ids)
    first = await broker.dlq_page(limit=3)
    assert first == everything[:3]
    # Letters before the cursor go away and new ones die: the next page neither skips nor repeats.
    await broker.dlq_purge(Selector(ids=[first[0].id, first[1].id]))
    late = await _bury(broker, "p2", 1)
    second = await broker.dlq_page(limit=3, after=position(first[-1]))
    assert [d.id for d in second] == [d.id for d in everything[3:6]]
    rest = await broker.dlq_page(limit=100, after=position(second[-1]))
    assert [d.id for d in rest] == [d.id for d in everything[6:]] + late
    p1 = await broker.dlq_page("p1", limit=100)
    assert [d.queue for d in p1] == ["p1"] * 3  # 5 buried, 2 purged
    assert await broker.dlq_page(limit=100, after=position(rest[-1])) == []
    assert [d.id for d in await broker.dlq_page("p1", 2, after=position(p1[0]))] == [p1[1].id, p1[2].id]


async def test_dlq_prune_deletes_by_age(broker: Broker) -> None:
    old = await _bury(broker, "a1", 2) + await _bury(broker, "a2", 1)
    await asyncio.sleep(0.05)
    cutoff = time.time()
    await asyncio.sleep(0.05)
    young = await _bury(broker, "a1", 2)
    assert await broker.dlq_prune(dead_before=cutoff) == len(old)
    assert [d.id for d in await broker.dlq_page(limit=100)] == young
    assert await broker.dlq_prune(dead_before=cutoff) == 0  # idempotent


async def test_dlq_prune_keeps_the_newest_per_queue(broker: Broker) -> None:
    c1 = await _bury(broker, "c1", 4)
    c2 = await _bury(broker, "c2", 1)
    live = msg(queue="c1")
    await broker.enqueue([live])
    assert await broker.dlq_prune(keep=2) == 2
    kept = await broker.dlq_page(limit=100)
    assert sorted(d.id for d in kept) == sorted(c1[2:] + c2)
    assert await broker.dlq_prune(keep=2) == 0
    assert (await broker.stats(["c1"]))["c1"].ready == 1  # live messages are never pruned
    assert await broker.dlq_prune() == 0


# -- lease safety: refused acks, failed renewals, idempotent leases ------------------------


async def _taken_over(broker: Broker) -> tuple[Delivery, Delivery]:
    """A delivery whose lease expired and went to someone else, and that someone's delivery."""
    await broker.enqueue([msg()])
    [old] = await broker.lease([Q], 1, 0.2)
    await asyncio.sleep(0.4)
    assert await broker.rescue() == [old.id]
    [new] = await broker.lease([Q], 1, VT)
    return old, new


async def test_ack_returns_the_ids_its_token_check_refused(broker: Broker) -> None:
    old, new = await _taken_over(broker)
    await broker.enqueue([m := msg()])
    [live] = await broker.lease([Q], 1, VT)
    assert live.id == m.id
    assert await broker.ack([old, live]) == [old.id]
    assert await broker.ack([new]) == []
    assert (await broker.stats([Q]))[Q].in_flight == 0


async def test_extend_returns_the_ids_it_could_not_renew(broker: Broker) -> None:
    old, new = await _taken_over(broker)
    await broker.enqueue([msg(), msg()])
    live, finished = await broker.lease([Q], 2, VT)
    await broker.ack([finished])
    assert await broker.extend([old, live, finished, new], VT) == [old.id, finished.id]
    assert await broker.extend([live, new], VT) == []


async def test_lease_repeated_with_its_claim_returns_what_the_claim_holds(broker: Broker) -> None:
    await broker.enqueue([msg() for _ in range(3)])
    first = await broker.lease([Q], 2, VT, claim="claim-1")
    again = await broker.lease([Q], 2, VT, claim="claim-1")
    assert len(first) == 2
    assert sorted((d.id, d.attempts, d.lease_token) for d in again) == sorted(
        (d.id, 1, d.lease_token) for d in first
    )
    s = (await broker.stats([Q]))[Q]
    assert (s.ready, s.in_flight) == (1, 2)
    assert await broker.ack(again) == []
    [last] = await broker.lease([Q], 5, VT, claim="claim-2")
    assert last.attempts == 1 and last.id not in {d.id for d in first}


async def test_lease_with_a_claim_that_holds_nothing_leases_new_messages(broker: Broker) -> None:
    assert await broker.lease([Q], 5, VT, claim="empty") == []
    await broker.enqueue([msg()])
    [d] = await broker.lease([Q], 5, VT, claim="empty")
    assert d.attempts == 1
    await broker.enqueue([msg()])
    [short] = await broker.lease([Q], 1, 0.2, claim="short")
    await asyncio.sleep(0.4)
    assert await broker.rescue() == [short.id]
    [taken] = await broker.lease([Q], 1, VT)
    await broker.enqueue([m := msg()])
    # the claim's message went to someone else: the claim holds nothing and leases anew
    [fresh] = await broker.lease([Q], 5, VT, claim="short")
    assert (fresh.id, fresh.attempts) == (m.id, 1) and taken.id == short.id


async def test_an_ack_repeated_after_it_was_taken_reports_no_refusal(broker: Broker) -> None:
    await broker.enqueue([msg()])
    [d] = await broker.lease([Q], 1, VT)
    assert await broker.ack([d]) == []
    assert await broker.ack([d]) == []  # as when the first reply was lost and the ack is sent again


# -- rescue ---------------------------------------------------------------------------------


async def test_a_rescued_message_keeps_its_eta_and_its_place_in_line(broker: Broker) -> None:
    now = time.time()
    oldest, older = msg(eta=now - 20), msg(eta=now - 10)
    await broker.enqueue([oldest, older])
    [d] = await broker.lease([Q], 1, 0.2)
    assert d.id == oldest.id
    await asyncio.sleep(0.4)
    assert await broker.rescue() == [oldest.id]
    await broker.enqueue([msg()])
    assert (await broker.stats([Q]))[Q].oldest_age_s >= 19
    got = await broker.lease([Q], 3, VT)
    assert [g.id for g in got[:2]] == [oldest.id, older.id]
    assert abs(got[0].eta - oldest.eta) < 1e-3 and got[0].redelivery == LEASE_EXPIRED


# -- reclaiming a claim, and how long a claim is honoured ----------------------------------


async def _untouched(broker: Broker, ids: set[str]) -> None:
    """Every message of ``ids`` is ready and was never delivered (first delivery, attempt 1)."""
    s = (await broker.stats([Q]))[Q]
    assert (s.ready, s.in_flight) == (len(ids), 0)
    got = await broker.lease([Q], len(ids) + 1, VT)
    assert {(d.id, d.attempts, d.redelivery) for d in got} == {(i, 1, "") for i in ids}


async def test_reclaiming_a_claim_that_holds_nothing_returns_nothing_and_leases_nothing(broker: Broker) -> None:
    assert await broker.lease([Q], 5, VT, claim="came-before") == []  # seen, committed nothing
    waiting = [msg() for _ in range(3)]
    await broker.enqueue(waiting)
    assert await broker.reclaim("never-sent") == []
    assert await broker.reclaim("came-before") == []
    await _untouched(broker, {m.id for m in waiting})


async def test_reclaiming_a_committed_claim_returns_its_deliveries_without_spending_attempts(
    broker: Broker,
) -> None:
    await broker.enqueue([msg() for _ in range(3)])
    first = await broker.lease([Q], 2, VT, claim="committed")
    again = await broker.reclaim("committed")
    assert sorted((d.id, d.attempts, d.lease_token, d.redelivery) for d in again) == sorted(
        (d.id, 1, "committed", "") for d in first
    )
    assert await broker.reclaim("committed") == again  # as often as asked, in lease order
    s = (await broker.stats([Q]))[Q]
    assert (s.ready, s.in_flight) == (1, 2)
    await broker.release(again)
    assert sorted(d.attempts for d in await broker.lease([Q], 5, VT)) == [1, 1, 1]  # none was spent


async def test_another_instance_reclaims_a_claim_it_never_saw(peer_factory: ModuleType, tmp_path: Path) -> None:
    async with peer_factory.make(tmp_path) as broker, peer_factory.make_peer(tmp_path) as peer:
        await broker.enqueue([msg()])
        [d] = await broker.lease([Q], 1, VT, claim="elsewhere")
        assert [(r.id, r.attempts) for r in await peer.reclaim("elsewhere")] == [(d.id, 1)]


async def test_reclaim_rejects_a_claim_that_is_not_a_non_empty_string(broker: Broker) -> None:
    for bad in ("", None, 7):
        try:
            await broker.reclaim(bad)  # type: ignore[arg-type]
        except ValueError as exc:
            assert "claim" in str(exc)
        else:
            raise AssertionError(f"reclaim({bad!r}) was accepted")


async def test_a_claim_is_honoured_for_exactly_its_live_leases(broker: Broker) -> None:
    await broker.enqueue([msg() for _ in range(2)])
    kept, done = await broker.lease([Q], 2, 0.3, claim="batch")
    assert await broker.extend([kept], VT) == []
    await broker.ack([done])  # the claim still holds the other one
    await asyncio.sleep(1.6)  # past the first deadline plus any grace a broker might add
    assert [(d.id, d.attempts) for d in await broker.lease([Q], 5, VT, claim="batch")] == [(kept.id, 1)]
    assert [(d.id, d.attempts) for d in await broker.reclaim("batch")] == [(kept.id, 1)]
    await broker.enqueue([late := msg()])
    [expiring] = await broker.lease([Q], 1, 0.3, claim="expires")
    await asyncio.sleep(0.5)  # expired, not yet rescued: no longer the claim's
    await broker.enqueue([fresh := msg()])
    [new] = await broker.lease([Q], 5, VT, claim="expires")
    assert (new.id, new.attempts) == (fresh.id, 1) and expiring.id == late.id
    assert [d.id for d in await broker.reclaim("expires")] == [fresh.id]


# -- nack and dead report whether the lease-token check let them through --------------------


async def test_nack_and_dead_with_a_stale_token_return_false_and_change_nothing(broker: Broker) -> None:
    old, new = await _taken_over(broker)
    assert await broker.nack(old, time.time(), Failure("E", "m")) is False
    assert await broker.dead(old, "non_retryable", Failure("E", "m")) is False
    s = (await broker.stats([Q]))[Q]
    assert (s.ready, s.delayed, s.in_flight, s.dead) == (0, 0, 1, 0)
    assert await broker.dlq_list(Q) == []
    assert await broker.extend([new], VT) == []  # the holder's lease is intact
    assert await broker.ack([new]) == []


async def test_nack_and_dead_with_the_live_token_return_true(broker: Broker) -> None:
    await broker.enqueue([m := msg()])
    d = await _lease_one(broker)
    assert await broker.nack(d, time.time(), Failure("E", "m")) is True
    again = await _lease_one(broker)
    assert (again.id, again.attempts) == (m.id, 2)
    assert await broker.dead(again, "non_retryable", Failure("E", "m")) is True
    [letter] = await broker.dlq_list(Q)
    assert (letter.id, letter.reason) == (m.id, "non_retryable")
    s = (await broker.stats([Q]))[Q]
    assert (s.ready, s.in_flight, s.dead) == (0, 0, 1)
