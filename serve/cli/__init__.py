"""``easel``, the command line: every click command of the runtime (:mod:`serve.cli.main` is the group).

Only this package imports click: the settings it spells (:mod:`serve.settings`) and the code it drives know nothing
of a command line. Kept light: the tooling's own command groups (``loadtests/cli.py``, ``build_engines/*/cli.py``)
import :mod:`serve.cli.options` from here.
"""
