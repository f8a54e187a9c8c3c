"""`easel chaos`'s choice of faults (no servers: the refusal comes before any stack is touched)."""

import pytest

from loadtests.chaos import FAULTS, Chaos


def test_a_fault_chaos_does_not_know_is_refused_naming_those_it_does():
    with pytest.raises(ValueError, match=FAULTS[0]):
        Chaos(stack=None, faults=("SIGKILL everything",))
