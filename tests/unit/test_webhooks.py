"""Job webhooks without a server: the signature (checked by Standard Webhooks' own library and by its spec), the
sender over an in-process transport (delivered, retried under the same id, a receiver that never answers, a host no
longer allowed), the retry times and the hosts a webhook may name."""

import asyncio
import base64
import hashlib
import hmac
import time

import httpx
import pytest
from standardwebhooks import Webhook

from serve.errors import InvalidInput
from serve.webhooks import secret_text
from serve.webhooks.sender import WebhookSender
from serve.webhooks.settings import RetryTimes, WebhookSettings
from serve.webhooks.signing import signed_headers
from serve.webhooks.sqlite import SqliteOutbox
from serve.webhooks.store import DeliveryStatus, new_delivery

SECRET = b"s" * 32
ALLOWED = WebhookSettings(webhook_hosts=("127.0.0.1", "hooks.example.org"))
QUICK = RetryTimes(attempts=3, first_s=0.0, factor=1.0)  # a failed attempt is due again at once


@pytest.fixture
def outbox(tmp_path):
    opened = SqliteOutbox(f"sqlite:///{tmp_path / 'easel.db'}")
    yield opened
    opened.close()


def test_the_signature_is_standard_webhooks_and_a_receiver_library_verifies_it():
    body = '{"id": "job_1", "status": "succeeded"}'
    headers = signed_headers(SECRET, "msg_1", body, time.time())
    assert Webhook(secret_text(SECRET)).verify(body, headers) == {"id": "job_1", "status": "succeeded"}
    signed = f"msg_1.{headers['webhook-timestamp']}.{body}".encode()  # the spec, by hand
    expected = base64.b64encode(hmac.new(SECRET, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}" and headers["webhook-id"] == "msg_1"
    with pytest.raises(Exception, match="signature"):
        Webhook(secret_text(b"t" * 32)).verify(body, headers)  # another stack's secret
    with pytest.raises(Exception, match="signature"):
        Webhook(secret_text(SECRET)).verify(body.replace("succeeded", "failed"), headers)  # a changed body


def test_retry_times_grow_fourfold_to_an_hour_and_stop_after_the_attempts():
    times = RetryTimes()
    assert [times.retry_at(n, 0.0) for n in range(1, 9)] == [5, 20, 80, 320, 1280, 3600, 3600, None]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://evil.example.com/hook", "not allowed"),
        ("ftp://127.0.0.1/hook", "http"),
        ("not a url", "http"),
    ],
)
def test_a_webhook_on_a_host_not_allowed_is_a_400_naming_webhook(url, said):
    with pytest.raises(InvalidInput, match=said) as refused:
        ALLOWED.check(url)
    assert refused.value.field == "webhook"
    ALLOWED.check("https://HOOKS.example.org:8443/easel?x=1")  # hosts compare without case; any port and path
    with pytest.raises(InvalidInput, match="none"):
        WebhookSettings().check("http://127.0.0.1/hook")  # none allowed by default


def _sender(outbox, handler, **options) -> WebhookSender:
    return WebhookSender(outbox, SECRET, ALLOWED, QUICK, transport=httpx.MockTransport(handler), **options)


async def _deliver_all(sender: WebhookSender, rounds: int = 10) -> None:
    """Claim and send until nothing is due (bounded)."""
    for _ in range(rounds):
        started = await sender.send_due()
        await sender.wait_idle()
        if not started:
            return


def test_a_delivery_goes_once_signed_and_is_recorded_delivered(outbox):
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    delivery = new_delivery("http://127.0.0.1:8080/hook", '{"id": "job_1"}', "job_1")
    outbox.add(delivery)
    asyncio.run(_deliver_all(_sender(outbox, receiver)))
    [request] = seen
    assert request.method == "POST" and request.content == b'{"id": "job_1"}'
    assert Webhook(secret_text(SECRET)).verify(request.content, dict(request.headers)) == {"id": "job_1"}
    done = outbox.get(delivery.id)
    assert done.status is DeliveryStatus.DELIVERED and done.attempts == 1 and done.outcome == "HTTP 204"


def test_a_failed_attempt_goes_again_under_the_same_id_and_a_redirect_is_not_followed(outbox):
    answers = iter([httpx.Response(500), httpx.Response(302, headers={"location": "http://evil.example.com/"})])
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers, httpx.Response(200))

    delivery = new_delivery("http://127.0.0.1:8080/hook", "{}", "job_1")
    outbox.add(delivery)
    asyncio.run(_deliver_all(_sender(outbox, receiver)))
    assert [r.url.host for r in seen] == ["127.0.0.1"] * 3
    assert {r.headers["webhook-id"] for r in seen} == {delivery.id}
    done = outbox.get(delivery.id)
    assert done.status is DeliveryStatus.DELIVERED and done.attempts == 3


def test_a_receiver_that_never_answers_costs_its_bounded_attempts_and_fails(outbox):
    asked = 0

    async def silent(request: httpx.Request) -> httpx.Response:
        nonlocal asked
        asked += 1
        await asyncio.sleep(3600)  # never answers
        return httpx.Response(200)

    delivery = new_delivery("http://127.0.0.1:8080/hook", "{}", "job_1")
    outbox.add(delivery)
    asyncio.run(asyncio.wait_for(_deliver_all(_sender(outbox, silent, timeout_s=0.05)), 30))
    failed = outbox.get(delivery.id)
    assert asked == QUICK.attempts and failed.status is DeliveryStatus.FAILED
    assert failed.outcome == "no answer within 0.05 s" and failed.attempts == QUICK.attempts


def test_a_delivery_to_a_host_no_longer_allowed_fails_without_a_call(outbox):
    seen: list[httpx.Request] = []
    delivery = new_delivery("http://old.example.org/hook", "{}", "job_1")
    outbox.add(delivery)
    asyncio.run(_deliver_all(_sender(outbox, lambda request: seen.append(request) or httpx.Response(200))))
    failed = outbox.get(delivery.id)
    assert seen == [] and failed.status is DeliveryStatus.FAILED and "not allowed" in failed.outcome
