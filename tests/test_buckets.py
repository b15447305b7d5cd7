"""Token buckets with debt (server/kernel/buckets.py), the flow-resource accounting built
on them (server/kernel/resources.py) with an injected clock, and one real-time check of
debt and recovery through a real server."""

from __future__ import annotations

import math
import time

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_runtime import EcologyError
from server import config as config_mod
from server.errors import KernelError, Reason
from server.kernel import resources
from server.kernel.buckets import EPSILON, INFINITE, TokenBucket
from server.kernel.kernel import Kernel
from server.storage import db
from tests.conftest import check_ledger, new_store


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t


# ---------------------------------------------------------------- TokenBucket alone


def test_design_example_debt_and_recovery():
    """DESIGN.md: rate 10/s, capacity 100, balance 100, spend 150 -> -50, usable after 5 s."""
    t0 = 1_000.0
    b = TokenBucket.full(rate=10.0, capacity=100.0, now=t0)
    assert b.balance == 100.0

    assert b.spend(150.0, t0) == 0.0  # allowed once, into debt
    assert b.balance == -50.0
    assert b.level(t0) == -50.0
    assert b.seconds_until_usable(t0) == pytest.approx(5.0, abs=1e-12)

    # At 4.9 s: still in debt; refused, nothing spent, told the remaining 0.1 s.
    wait = b.spend(10.0, t0 + 4.9)
    assert wait == pytest.approx(0.1, abs=1e-9)
    assert b.level(t0 + 4.9) == pytest.approx(-1.0, abs=1e-9)
    assert b.seconds_until_usable(t0 + 4.9) == pytest.approx(0.1, abs=1e-9)

    # At exactly 5.0 s: back at zero, usable again (and may go into debt again).
    assert b.seconds_until_usable(t0 + 5.0) == 0.0
    assert b.level(t0 + 5.0) == 0.0
    assert b.spend(30.0, t0 + 5.0) == 0.0
    assert b.balance == -30.0
    assert b.seconds_until_usable(t0 + 5.0) == pytest.approx(3.0, abs=1e-12)


def test_spend_at_zero_is_allowed_and_refusal_spends_nothing():
    b = TokenBucket(rate=2.0, capacity=10.0, balance=0.0, updated_at=0.0)
    assert b.spend(4.0, 0.0) == 0.0
    assert b.balance == -4.0
    for t in (0.0, 0.5, 1.0, 1.99):
        assert b.spend(1.0, t) == pytest.approx((4.0 - 2.0 * t) / 2.0)
    # Refusals did not deepen the debt: only time moved the balance.
    assert b.level(1.99) == pytest.approx(-4.0 + 2 * 1.99)
    assert b.spend(1.0, 2.0) == 0.0
    assert b.balance == pytest.approx(-1.0)


def test_force_spend_charges_even_in_debt():
    """What was already consumed (CPU time) is charged even while in debt, unlike spend."""
    b = TokenBucket(rate=10.0, capacity=100.0, balance=-5.0, updated_at=0.0)
    assert b.spend(1.0, 0.0) > 0 and b.balance == -5.0
    b.force_spend(20.0, 0.0)
    assert b.balance == -25.0
    assert b.seconds_until_usable(0.0) == pytest.approx(2.5)
    b.force_spend(1.0, 1.0)  # refills first: -25 + 10 - 1
    assert b.balance == pytest.approx(-16.0)


def test_refill_is_capped_at_capacity():
    b = TokenBucket(rate=10.0, capacity=100.0, balance=20.0, updated_at=0.0)
    assert b.level(5.0) == 70.0
    assert b.level(1e9) == 100.0  # no matter how long unused
    b.refill(3600.0)
    assert b.balance == 100.0
    assert b.updated_at == 3600.0
    # A clock going backwards neither refills nor drains.
    b.refill(10.0)
    assert b.balance == 100.0 and b.updated_at == 3600.0
    assert b.level(10.0) == 100.0


def test_level_does_not_mutate():
    b = TokenBucket(rate=1.0, capacity=5.0, balance=-3.0, updated_at=0.0)
    assert b.level(2.0) == -1.0
    assert (b.balance, b.updated_at) == (-3.0, 0.0)


def test_try_take_all_or_nothing_with_wait():
    b = TokenBucket.full(rate=4.0, capacity=8.0, now=0.0)
    assert b.try_take(5.0, 0.0) == 0.0
    assert b.balance == 3.0
    # Not enough: nothing taken, told how long until 5 fit (2 missing / 4 per s).
    assert b.try_take(5.0, 0.0) == pytest.approx(0.5)
    assert b.balance == 3.0
    assert b.try_take(5.0, 0.25) == pytest.approx(0.25)
    assert b.balance == pytest.approx(4.0)  # refilled, still nothing taken
    assert b.try_take(5.0, 0.5) == 0.0
    assert b.balance == pytest.approx(0.0)
    # try_take never goes into debt.
    assert b.try_take(0.1, 0.5) > 0
    assert b.balance >= 0


def test_try_take_impossible_amounts_wait_forever():
    b = TokenBucket.full(rate=1.0, capacity=10.0, now=0.0)
    assert b.try_take(11.0, 0.0) == INFINITE  # more than the bucket can ever hold
    assert b.balance == 10.0
    frozen = TokenBucket(rate=0.0, capacity=10.0, balance=1.0, updated_at=0.0)
    assert frozen.try_take(2.0, 100.0) == INFINITE  # never refills
    assert frozen.balance == 1.0


def test_seconds_until_usable_zero_rate_debt_is_infinite():
    b = TokenBucket(rate=0.0, capacity=10.0, balance=-1.0, updated_at=0.0)
    assert math.isinf(b.seconds_until_usable(50.0))
    assert b.spend(1.0, 50.0) == INFINITE
    assert b.balance == -1.0


_ops = st.lists(
    st.tuples(
        st.sampled_from(["spend", "take", "refill"]),
        st.floats(min_value=0.0, max_value=50.0, allow_nan=False),  # time step
        st.floats(min_value=0.0, max_value=500.0, allow_nan=False),  # amount
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.01, max_value=1000.0, allow_nan=False),
    capacity=st.floats(min_value=0.0, max_value=1000.0, allow_nan=False),
    ops=_ops,
)
def test_property_balance_capped_and_wait_is_debt_over_rate(rate, capacity, ops):
    now = 0.0
    b = TokenBucket.full(rate, capacity, now)
    for kind, dt, amount in ops:
        now += dt
        before = b.level(now)
        if kind == "spend":
            wait = b.spend(amount, now)
            if before >= -EPSILON:  # a float hair below zero is not debt
                assert wait == 0.0
                assert b.balance == pytest.approx(before - amount, abs=1e-9)
            else:
                assert wait > 0
                assert b.balance == pytest.approx(before, abs=1e-9)  # nothing spent
        elif kind == "take":
            wait = b.try_take(amount, now)
            if wait == 0.0:
                assert b.balance == pytest.approx(before - amount, abs=1e-9)
                assert b.balance >= -1e-9
            else:
                assert b.balance == pytest.approx(before, abs=1e-9)
        else:
            b.refill(now)
        for t in (now, now + dt / 2, now + dt):
            level = b.level(t)
            assert level <= capacity
            assert b.balance <= capacity
            assert b.seconds_until_usable(t) == pytest.approx(max(0.0, -level / rate), rel=1e-9, abs=1e-9)
            if level >= 0:
                assert b.seconds_until_usable(t) == 0.0


# ---------------------------------------------- resources.charge / require_usable, in process


@pytest.fixture
def world(tmp_path):
    """A kernel on a real (in-process) SQLite database with a hand-moved clock, and an
    agent `alice` with compute rate 10/s, capacity 100."""
    clock = Clock()
    conn = new_store(tmp_path / db.DB_FILE)
    cfg = config_mod.build({"agents": {"compute_rate": 10.0, "compute_capacity": 100.0},
                            "costs": {"read": 1.0, "write": 2.0}})
    kernel = Kernel(cfg, clock=clock)
    kernel.bootstrap(conn)
    kernel.op_create_agent(conn, "alice", "{}")
    yield kernel, conn, clock
    conn.close()


def _bucket(conn, pid="alice"):
    return resources.load_bucket(conn, pid, "compute")


def test_charge_into_debt_then_exact_retry_after(world):
    kernel, conn, clock = world
    resources.require_usable(conn, "alice", "compute", clock())  # full: fine
    resources.charge(conn, "alice", "compute", 150.0, clock())
    assert _bucket(conn).balance == -50.0

    for dt, remaining in ((0.0, 5.0), (2.0, 3.0), (2.9, 0.1)):
        clock.advance(dt)
        with pytest.raises(KernelError) as e:
            resources.require_usable(conn, "alice", "compute", clock())
        assert e.value.reason is Reason.INSUFFICIENT_RESOURCES
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert e.value.retry_after == pytest.approx(remaining, abs=1e-9)
        # charge refuses the same way and stores nothing.
        with pytest.raises(KernelError) as e2:
            resources.charge(conn, "alice", "compute", 1.0, clock())
        assert e2.value.reason is Reason.INSUFFICIENT_RESOURCES
        assert e2.value.retry_after == pytest.approx(remaining, abs=1e-9)
        assert _bucket(conn).balance == -50.0

    clock.advance(0.1)  # exactly 5 s after the spend
    resources.require_usable(conn, "alice", "compute", clock())
    resources.charge(conn, "alice", "compute", 1.0, clock())
    b = _bucket(conn)
    assert b.level(clock()) == pytest.approx(-1.0, abs=1e-9)
    assert b.updated_at == clock()


def test_charge_zero_or_negative_is_free(world):
    kernel, conn, clock = world
    resources.charge(conn, "alice", "compute", 0.0, clock())
    resources.charge(conn, "alice", "compute", -5.0, clock())
    assert _bucket(conn).balance == 100.0


def test_unknown_principal_has_no_resource(world):
    kernel, conn, clock = world
    with pytest.raises(KernelError) as e:
        resources.require_usable(conn, "nobody", "compute", clock())
    assert e.value.reason is Reason.INSUFFICIENT_RESOURCES
    assert e.value.retry_after is None
    with pytest.raises(KernelError):
        resources.charge(conn, "nobody", "compute", 1.0, clock())


def test_snapshot_reports_debt_and_usable_at(world):
    kernel, conn, clock = world
    resources.charge(conn, "alice", "compute", 130.0, clock())
    clock.advance(1.0)
    state = kernel.get_state(conn, "alice")
    (compute,) = [f for f in state["flow"] if f["name"] == "compute"]
    assert compute["balance"] == pytest.approx(-20.0)
    assert compute["seconds_until_usable"] == pytest.approx(2.0)
    assert compute["usable_at"] == pytest.approx(clock() + 2.0)
    clock.advance(5.0)
    (compute,) = kernel.get_state(conn, "alice")["flow"]
    assert compute["balance"] == pytest.approx(30.0)
    assert compute["seconds_until_usable"] == 0.0 and compute["usable_at"] is None


def test_kernel_verbs_charge_and_refuse_while_in_debt(world):
    """The verbs pay their configured cost; in debt they fail with the exact wait and
    change nothing (the artifact is not created, nothing is charged)."""
    kernel, conn, clock = world
    kernel.op_write(conn, "alice", {"artifact_id": "note", "content": "hi"})
    assert _bucket(conn).balance == 98.0  # costs.write = 2
    kernel.op_read(conn, "alice", "note")
    assert _bucket(conn).balance == 97.0  # costs.read = 1

    resources.charge(conn, "alice", "compute", 117.0, clock())  # -> -20: usable in 2 s
    clock.advance(0.5)
    events_before = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    with pytest.raises(KernelError) as e:
        kernel.op_write(conn, "alice", {"artifact_id": "note2", "content": "x"})
    assert e.value.reason is Reason.INSUFFICIENT_RESOURCES
    assert e.value.retry_after == pytest.approx(1.5, abs=1e-9)
    with pytest.raises(KernelError) as e:
        kernel.op_read(conn, "alice", "note")
    assert e.value.retry_after == pytest.approx(1.5, abs=1e-9)
    with pytest.raises(KernelError) as e:
        kernel.op_invoke(conn, "alice", "genesis_ledger", "balance", {})
    assert e.value.retry_after == pytest.approx(1.5, abs=1e-9)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == events_before
    assert conn.execute("SELECT 1 FROM artifacts WHERE id='note2'").fetchone() is None
    assert _bucket(conn).balance == -20.0

    clock.advance(1.5)
    out = kernel.op_write(conn, "alice", {"artifact_id": "note2", "content": "x"})
    assert out["created"] is True
    assert _bucket(conn).level(clock()) == pytest.approx(-2.0, abs=1e-9)


# ----------------------------------------------------------------- real time, real server


def test_real_server_debt_and_recovery(make_server):
    srv = make_server("[agents]\ncompute_rate = 2.0\ncompute_capacity = 2.0\n[costs]\nwrite = 3.0\n")
    alice = srv.agent("alice")
    alice.write("doc", "hello")  # balance 2 -> -1: usable again after 0.5 s

    state = alice.get_state()  # GetState is free of compute
    (compute,) = [f for f in state.flow if f.name == "compute"]
    assert -1.0 <= compute.balance < -0.5
    assert 0.2 < compute.seconds_until_usable <= 0.5
    assert compute.HasField("usable_at")

    with pytest.raises(EcologyError) as e:
        alice.read("doc")
    err = e.value
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.reason == "INSUFFICIENT_RESOURCES"
    assert err.retry_after is not None and 0.2 < err.retry_after <= 0.5

    time.sleep(err.retry_after)
    assert alice.read("doc").content == "hello"
    check_ledger(srv)
