"""The scripted operator's mistakes are real, recovered from, labelled and kept as ground truth."""

from __future__ import annotations

import dataclasses

import pytest

from grrl_sim.operator import OperatorConfig, ScriptedOperator
from grrl_sim.task import InsertionTask, TaskConfig


@pytest.fixture(scope="module")
def task() -> InsertionTask:
    return InsertionTask(TaskConfig())


def _episode(task, seed, **rates):
    config = dataclasses.replace(OperatorConfig.noisy(), **rates)
    operator = ScriptedOperator(task, config)
    task.reset(seed)
    operator.reset(seed)
    trace = []
    for _ in range(task.config.episode_limit_steps):
        out = operator.act()
        result = task.step(out.command)
        trace.append((out.retry, result.stages))
        if result.done:
            break
    return operator, trace, result


@pytest.mark.parametrize(
    "kind, rates",
    [
        ("missed_insertion", {"missed_insertion_rate": 1.0, "dropped_peg_rate": 0.0,
                              "wrong_approach_rate": 0.0}),
        ("dropped_peg", {"missed_insertion_rate": 0.0, "dropped_peg_rate": 1.0,
                         "wrong_approach_rate": 0.0}),
        ("wrong_approach", {"missed_insertion_rate": 0.0, "dropped_peg_rate": 0.0,
                            "wrong_approach_rate": 1.0}),
    ],
)  # fmt: skip
def test_mistake_is_recovered_labelled_and_spanned(task, kind, rates):
    recovered = 0
    for seed in range(8):
        operator, trace, result = _episode(task, seed, **rates)
        recovered += result.success
        _check_span(task, kind, operator, trace)
    # measured over 20 seeds with each mistake forced: 75 % (dropped peg) to 95 % succeed
    assert recovered >= 5, f"the operator recovered from {kind} in {recovered}/8 episodes"


def _check_span(task, kind, operator, trace):
    (mistake,) = operator.mistakes
    assert mistake.kind == kind
    assert 0 <= mistake.start_step < mistake.retry_step <= mistake.end_step < len(trace)
    dt = task.control_dt
    presses = [step for step, (retry, _) in enumerate(trace) if retry]
    assert presses == [mistake.retry_step]
    # the span really contains the mistake
    during = [stages for _, stages in trace[mistake.start_step : mistake.retry_step + 1]]
    if kind == "missed_insertion":
        assert not any(s.inserted for s in during)
    if kind == "dropped_peg":
        after = [stages for _, stages in trace[mistake.retry_step : mistake.end_step]]
        assert any(not s.peg_grasped for s in after)
        assert trace[mistake.end_step][1].peg_grasped
    assert (mistake.end_step - mistake.start_step) * dt > 0.2


def test_clean_operator_makes_no_mistakes(task):
    operator, trace, result = _episode(
        task, 8, missed_insertion_rate=0.0, dropped_peg_rate=0.0, wrong_approach_rate=0.0,
        jitter_m=0.0, hesitation_probability=0.0,
    )  # fmt: skip
    assert result.success and operator.mistakes == []
    assert not any(retry for retry, _ in trace)
