"""The models a stack serves: their table, their residency in Triton, and what a request to one needs and costs.

:mod:`serve.models.table` is the stack's state (which model is served at which version); :mod:`serve.models.served`
resolves a request's ``model`` to a served model and its engines; :mod:`serve.models.admission` prices and admits a
request against the memory budget; :mod:`serve.models.residency` is the deployable that loads and unloads models in
Triton and writes the table, :mod:`serve.models.text_to_image` the one whose replicas draw them with the loop of
:mod:`serve.text_to_image`, one floor down.
"""
