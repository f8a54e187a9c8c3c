"""What a newcomer meets when a start cannot go ahead: one line that names what is wrong and the fix; no server."""

import json
import socket
import sys

import pytest
from click.testing import CliRunner

from serve.cli.main import main
from serve.processes.ports import PortInUse, check_free, port_holder
from serve.stack.status import NOT_RUNNING
from serve.stores import StoreUnreachable, check_store
from serve.triton.memory import MemoryBudgetTooSmall, MemoryModel, activation_pool
from serve.triton.start_failure import StartLog, failed_models, start_failure

TRITON_LOG = """\
I1126 15:42:55.585 13368 server.cc:606] "Started"
E1126 15:42:55.586109 13368 server.cc:241] "CudaDriverHelper has not been initialized."
E1126 15:42:55.586315 13368 model_repository_manager.cc:1415] "failed to poll model 'small.text_encoder': model not \
found in any model repository."
E1126 15:42:55.586353 13368 model_repository_manager.cc:1415] "failed to poll model 'small.unet': model not found in \
any model repository."
E1126 15:43:01.100 13368 model_lifecycle.cc:654] "failed to load 'unet' version 1: Internal: RuntimeError: \
[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from model.onnx failed:Protobuf parsing failed.

At:
  /repo/serve/triton/python_model.py(88): initialize
"
E1126 15:43:03.290371 13368 ensemble_scheduler.cc:1468] "unable to create stream for vectorize: CUDA driver version \
is insufficient for CUDA runtime version"
E1126 15:43:03.291889 13368 tritonserver.cc:2607] "Internal: failed to load all models"
"""


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_a_triton_start_that_fails_is_named_by_its_models_and_triton_s_reasons():
    failed = failed_models(TRITON_LOG)
    assert list(failed) == ["small.text_encoder", "small.unet", "unet"]
    assert failed["small.unet"] == "model not found in any model repository"
    assert failed["unet"].startswith("Internal: RuntimeError: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF")
    said = _one_line(start_failure(TRITON_LOG, "/run/triton.log"))
    assert said.startswith("Triton could not load model 'small.text_encoder': model not found in any model repository")
    assert "2 more: small.unet, unet" in said and "/run/triton.log" in said


def test_a_triton_that_exited_with_no_model_named_says_its_last_real_error():
    log = 'E1126 10:00:00.1 7 server.cc:241] "CudaDriverHelper has not been initialized."\n'
    log += 'E1126 10:00:00.2 7 grpc_server.cc:2500] "failed to start GRPC service: Address already in use"\n'
    assert start_failure(log) == "Triton did not start: failed to start GRPC service: Address already in use"
    assert start_failure('E1126 10:00:00.1 7 server.cc:241] "CudaDriverHelper has not been initialized."\n') is None


def test_a_start_log_reads_only_its_own_start_and_fails_fast_only_for_a_model_the_stack_needs(tmp_path):
    path = tmp_path / "triton.log"
    path.write_text(TRITON_LOG)  # an earlier start's lines
    log = StartLog(path)
    log.begin()
    assert log.failure(["small.unet"], exited=False) is None  # nothing said by this start yet
    with path.open("a") as more:
        more.write(TRITON_LOG.split("\n", 4)[3] + "\n" + TRITON_LOG.split("\n", 4)[4].split("\n", 1)[0] + "\n")
    assert log.failure(["vectorize"], exited=False) is None  # another model's failure: not this stack's
    assert "'small.unet': model not found" in log.failure(["small.unet"], exited=False)


def test_a_start_the_python_backend_aborted_is_told_apart_from_one_that_failed(tmp_path):
    log = tmp_path / "triton.log"
    log.write_text("terminate called after throwing an instance of 'boost::interprocess::lock_exception'\n")
    start = StartLog(log)
    start.begin()  # the abort was an earlier start's
    assert not start.python_backend_aborted()
    with log.open("a") as f:
        f.write('E1128 15:52:27.754475 16728 server.cc:241] "CudaDriverHelper has not been initialized."\n')
        f.write("terminate called after throwing an instance of 'boost::interprocess::lock_exception'\n")
        f.write("  what():  boost::interprocess::lock_exception\n")
    assert start.python_backend_aborted()
    start.begin()
    with log.open("a") as f:
        f.write("E1128 10:00:00.000000 1 model_lifecycle.cc:1] \"failed to load 'unet' version 1: bad file\"\n")
    assert not start.python_backend_aborted() and "unet" in start.failure(["unet"], exited=True)


def test_a_port_in_use_names_the_process_holding_it_and_the_option_that_moves_it():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        holder = port_holder(port)
        assert holder is not None and (str(sys.argv[0])[:20] in holder or "pid" in holder), holder
        with pytest.raises(PortInUse) as refused:
            check_free([("--grpc-port", "127.0.0.1", 0), ("--port", "127.0.0.1", port)])
    said = _one_line(str(refused.value))
    assert f"port {port} (--port) is in use by pid " in said and "give --port another port (0: a free one)" in said
    assert port_holder(port) is None  # released: free again


def test_a_port_whose_server_died_with_connections_open_is_free_as_a_server_binds_it():
    """A killed server's connections linger in TIME_WAIT; the next server binds with SO_REUSEADDR, and so does the
    check (without it, ``easel up`` after ``kill -9`` of a stack refused its own port)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's and Ray's proxies do
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: its port's connection waits in TIME_WAIT
        client.close()
    assert port_holder(port) is None


def test_a_redis_store_that_does_not_answer_is_one_line_naming_how_to_start_one():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(StoreUnreachable) as refused:
            check_store(f"redis://127.0.0.1:{port}/0")
    said = _one_line(str(refused.value))
    assert f"redis://127.0.0.1:{port}/0 does not answer" in said and "apt-get install redis-server" in said
    check_store("sqlite:////tmp/x.db")  # the embedded store needs nothing running


def test_a_memory_budget_too_small_names_both_numbers():
    model = MemoryModel(weights_bytes=3 << 30, coefficients=(1 << 20, 0, 0))
    spec = type("Spec", (), {"instance_count": 1})()
    with pytest.raises(MemoryBudgetTooSmall) as refused:
        activation_pool({"text_encoder": model}, {"text_encoder": spec}, 2 << 30)
    said = _one_line(str(refused.value))
    assert "the memory budget 2.00 GiB" in said and "(3.00 GiB)" in said


def test_an_unknown_flag_is_refused_with_the_nearest_ones():
    result = CliRunner().invoke(main, ["up", "--modle", "x"])
    assert result.exit_code == 2
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "--modle" in error[0], result.output
    assert "Did you mean" in error[0] and "'--model'" in error[0], error  # click's nearest options


def test_a_folder_that_is_not_a_diffusers_model_is_one_line_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    result = CliRunner().invoke(main, ["up", "--model", str(tmp_path), "--port", "0"])
    assert result.exit_code == 1
    said = _one_line(result.output)
    assert said.startswith("Error: ") and "KandinskyPipeline" in said and "StableDiffusionPipeline" in said


def test_easel_status_with_no_stack_says_none_runs_and_exits_3(tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == NOT_RUNNING == 3
    assert _one_line(result.output) == f"no Easel stack runs (run folder {tmp_path / 'run'}); `easel up` starts one"
