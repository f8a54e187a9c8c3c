import pickle

import grpc

from serve.errors import EaselError, InvalidInput, NotReady, Overloaded, PayloadTooLarge


def test_status_codes_and_bodies():
    assert InvalidInput("bad", field="size").body()["error"] == {
        "message": "bad",
        "type": "invalid_request_error",
        "param": "size",
        "code": 400,
    }
    assert PayloadTooLarge("big", field="file").status == 413
    assert NotReady("down").headers() == {"Retry-After": "5"}
    assert Overloaded("busy", retry_after_s=1).status == 429
    assert Overloaded("busy").grpc_code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert EaselError("x").headers() == {}


def test_errors_survive_pickling_across_ray_processes():
    error = pickle.loads(pickle.dumps(NotReady("Triton down", field=None, retry_after_s=7)))
    assert isinstance(error, NotReady) and error.retry_after_s == 7 and error.message == "Triton down"


def test_a_message_never_carries_a_python_object_s_repr():
    error = InvalidInput("image: truncated (cannot identify image file <_io.BytesIO object at 0x7efbe68b84f0>)", "x")
    assert error.message == "image: truncated (cannot identify image file)" == error.body()["error"]["message"]
