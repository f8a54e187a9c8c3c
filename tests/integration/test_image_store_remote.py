"""The image store's contract on Redis rows and an S3 bucket: moto's S3 server (an emulator) on a loopback port."""

import boto3
import pytest
import redis

from serve.results.blobs import open_blobs
from serve.results.redis import RedisImageRecords
from tests.image_store_contract import *  # noqa: F403 - the contract's tests

pytestmark = pytest.mark.integration

BUCKET = "easel-images"


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server (``moto[server]``, an emulator of the S3 API) in a thread on a free loopback port."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e .[test])")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def records(redis_url):
    redis.Redis.from_url(redis_url).flushdb()  # each test starts from an empty store
    return RedisImageRecords(redis_url)


@pytest.fixture
def blobs(s3_endpoint, monkeypatch, request):
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)  # the emulator takes any
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    prefix = request.node.name[:40]  # each test its own objects
    return open_blobs(f"s3://{BUCKET}/{prefix}?endpoint={s3_endpoint}")


def test_a_bucket_object_is_the_image_with_its_media_type(blobs, s3_endpoint):
    blobs.put("img_x", b"\x89PNG data", "image/png")
    head = boto3.client("s3", endpoint_url=s3_endpoint).head_object(Bucket=BUCKET, Key=f"{blobs.prefix}/img_x")
    assert head["ContentType"] == "image/png" and blobs.get("img_x") == b"\x89PNG data" and blobs.get("img_y") is None
