"""``easel bench start``'s arithmetic: steps named alike across rounds, medians and the time each step added."""

from loadtests.benchmarks.start import Mark, _step_name, summarize


def test_a_step_is_named_without_what_changes_from_run_to_run():
    assert _step_name("stack 3f2a: starting triton") == "phase starting triton"
    assert _step_name("tritonserver pid 4242 starting (log /tmp/run/triton.log)") == "tritonserver pid N starting"
    assert _step_name("tritonserver ready: HTTP http://127.0.0.1:8000, gRPC 127.0.0.1:8001") == "tritonserver ready"


def test_each_step_is_the_median_of_the_rounds_and_takes_the_time_since_the_step_before():
    rounds = [
        [Mark("phase building", 1.0), Mark("tritonserver ready", 11.0), Mark("phase ready", 60.0), Mark("stopped", 70)],
        [Mark("phase building", 3.0), Mark("tritonserver ready", 9.0), Mark("phase ready", 80.0), Mark("stopped", 95)],
        [Mark("phase building", 2.0), Mark("tritonserver ready", 10.0), Mark("phase ready", 70.0), Mark("stopped", 79)],
    ]
    assert summarize(rounds) == [
        ("phase building", 2.0, 2.0),
        ("tritonserver ready", 10.0, 8.0),
        ("phase ready", 70.0, 60.0),
        ("stopped", 79, 9.0),
    ]
