"""Load scenarios: stages derive a run's peak, rate and length; the ramp shape and the ramp's merged record."""

import pytest
from pydantic import ValidationError

from loadtests.benchmarks.ramp import RampPoint, format_table, merge
from loadtests.scenario import Scenario, users_at


def test_stages_give_the_peak_users_the_fastest_rate_and_the_run_time():
    ramp = Scenario.load("ramp")
    assert ramp.users == max(s.users for s in ramp.stages) and ramp.run_time_s == sum(s.duration_s for s in ramp.stages)
    shaped = Scenario.model_validate({"user_classes": ["X"], "stages": [{"duration_s": 10, "users": 40}]})
    assert (shaped.users, shaped.spawn_rate, shaped.run_time_s) == (40, 4.0, 10)
    with pytest.raises(ValidationError, match="users follow from stages"):
        Scenario.model_validate({"user_classes": ["X"], "users": 3, "stages": [{"duration_s": 3, "users": 2}]})
    with pytest.raises(ValidationError):
        Scenario.model_validate({"user_classes": ["X"], "stages": [{"duration_s": 0, "users": 2}]})


def test_users_follow_each_stage_linearly_then_the_run_ends():
    stages = [(10, 20), (10, 20), (5, 0)]
    at = {t: users_at(stages, t) for t in (0, 5, 15, 22.5, 25)}
    assert [at[t][0] if at[t] else None for t in at] == [0, 10, 20, 10, None]
    assert at[5][1] >= 2.0  # spawns at least as fast as the line rises


def test_merge_puts_every_source_on_one_clock_and_the_table_keeps_a_row_per_window():
    replicas = [(100.0, 1), (130.0, 2)]
    metrics = {"in_flight": [(101.0, 5.0), (131.0, 40.0)], "desired_replicas": [(131.0, 2.0)]}
    history = [(102.0, 10, 3.0, 200.0, 400.0), (132.0, 70, 6.0, 900.0, 1500.0)]
    points = merge(100.0, 140.0, replicas, metrics, history)
    assert points[0] == RampPoint(0.0, None, 1, None, None, None, None, None)
    last = points[-1]
    assert (last.t_s, last.users, last.replicas, last.desired_replicas, last.in_flight) == (40.0, 70, 2, 2.0, 40.0)
    rows = format_table(points).splitlines()[2:]
    assert len(rows) == 3 and rows[-1].startswith("| 40 | 70 | 2 | 2 | 40 | 6.00 | 900 | 1500 |")
