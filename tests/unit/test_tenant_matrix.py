"""The hostile-tenant matrix covers every door that names a stored thing: a new one cannot join without its row."""

from serve.experiments.feedback import FeedbackRequest
from serve.grpc_api import easel_pb2
from serve.routes import ROUTES, rpc_route
from tests.tenant_matrix import ROWS, SHARED, STORED_FIELDS, UNKNOWN

RPCS = easel_pb2.DESCRIPTOR.services_by_name["Easel"].methods
HTTP_ROWS = {(row.method, row.path, row.field.split(".")[0]) for row in ROWS if row.where != "rpc"}


def test_every_route_with_a_path_parameter_has_its_row_or_is_a_shared_catalog():
    declared = {(route.method, route.path) for route in ROUTES}
    rows = {(row.method, row.path) for row in ROWS if row.where == "path"}
    parameterised = {(route.method, route.path) for route in ROUTES if "{" in route.path}
    assert parameterised - rows - set(SHARED) == set(), "a route naming a thing by id needs its row (or SHARED)"
    assert rows & set(SHARED) == set()
    assert rows | set(SHARED) <= declared, "a row names a route that is not in ROUTES"
    for row in ROWS:
        if row.where == "path":
            assert f"{{{row.field}}}" in row.path, row
        elif row.where in ("body", "query"):
            assert (row.method, row.path) in declared, row


def test_every_body_field_naming_a_stored_thing_has_its_row_on_its_route():
    bodies = [(route.method, route.path, route.body) for route in ROUTES if route.body is not None]
    bodies.append(("post", "/v1/feedback", FeedbackRequest))  # read by its handler, not its admission
    by_model = {}
    for method, path, model in bodies:
        by_model.setdefault(model, []).append((method, path))
    for model, doors in by_model.items():
        for field in set(model.model_fields) & set(STORED_FIELDS):
            # Routes sharing a body model (generations and edits) share its one resolver: one row among them.
            assert any((method, path, field) in HTTP_ROWS for method, path in doors), (model.__name__, field, doors)


def test_every_rpc_whose_message_names_a_stored_thing_has_its_row_or_its_http_twin_s():
    rpc_rows = {(row.path, row.field) for row in ROWS if row.where == "rpc"}
    for method in RPCS:
        for field in {f.name for f in method.input_type.fields} & set(STORED_FIELDS):
            twin = rpc_route(method.name)
            twin_row = (twin.method, twin.path, field) in HTTP_ROWS
            own_door = field.endswith("_id")  # an id in the message is the RPC's own door: its own row
            assert (method.name, field) in rpc_rows if own_door else twin_row, (method.name, field)
    assert {row.path for row in ROWS if row.where == "rpc"} <= {m.name for m in RPCS}


def test_each_row_s_thing_has_an_unknown_id_and_its_field_names_that_thing():
    for row in ROWS:
        assert row.thing in UNKNOWN, row
        assert STORED_FIELDS.get(row.field.split(".")[0], row.thing) == row.thing, row
