"""One stack with a small engine memory budget (1.25 GiB) for the modules here: what must never fall over.

``test_reliability`` leaves it as it found it (what it kills comes back); ``test_soak_and_chaos`` runs last (pytest
takes a package's modules in name order) and its last test stops the stack.
"""
