"""``easel``, the command line: every click command of the runtime (:mod:`serve.cli.main` is the group).

Only this package imports click: the settings it spells (:mod:`serve.settings`) and the code it drives know nothing
of a command line. The tooling's command groups are here too (:mod:`serve.cli.bench`: benchmarks;
:mod:`serve.cli.tools`: load tests, chaos, soak; :mod:`serve.cli.text_to_image` and :mod:`serve.cli.vectorize`:
training and evaluation), over the code they drive.
"""
