"""Job webhooks without a server: the signature (checked by Standard Webhooks' own library and by its spec; a key's
own, two during a rotation), the sender over an in-process transport (delivered, retried under the same id, a receiver
that never answers, one whose answer is endless, a host no longer allowed, a key without a secret, keys in turn), the
retry times and the hosts and ports a webhook may name."""

import asyncio
import base64
import hashlib
import hmac
import time

import httpx
import pytest
from standardwebhooks import Webhook

from serve.access.keys import KeyLimits
from serve.errors import InvalidInput
from serve.routes import Scope
from serve.webhooks import secret_text
from serve.webhooks.sender import MAX_ANSWER_BYTES, WebhookSender
from serve.webhooks.settings import RetryTimes, WebhookSettings
from serve.webhooks.signing import Signer, signed_headers
from serve.webhooks.sqlite import SqliteKeySecrets, SqliteOutbox
from serve.webhooks.store import DeliveryStatus, new_delivery

SECRET = b"s" * 32
ALLOWED = WebhookSettings(webhook_hosts=("127.0.0.1:8080", "hooks.example.org"))
QUICK = RetryTimes(attempts=3, first_s=0.0, factor=1.0)  # a failed attempt is due again at once


@pytest.fixture
def outbox(tmp_path):
    opened = SqliteOutbox(f"sqlite:///{tmp_path / 'easel.db'}")
    yield opened
    opened.close()


@pytest.fixture
def key_secrets(tmp_path):
    opened = SqliteKeySecrets(f"sqlite:///{tmp_path / 'easel.db'}")
    yield opened
    opened.close()


def test_the_signature_is_standard_webhooks_and_a_receiver_library_verifies_it():
    body = '{"id": "job_1", "status": "succeeded"}'
    headers = signed_headers([SECRET], "msg_1", body, time.time())
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
        ("http://127.0.0.1/hook", "127.0.0.1:80 is not allowed"),  # issue 76: a host named with a port allows that one
        ("http://127.0.0.1:6379/", "127.0.0.1:6379 is not allowed"),  # ... not every loopback service
        ("https://hooks.example.org:8443/easel", "hooks.example.org:8443 is not allowed"),  # a host alone: 80, 443
        ("http://127.0.0.1:99999/hook", "no valid port"),
    ],
)
def test_a_webhook_on_a_host_or_port_not_allowed_is_a_400_naming_webhook(url, said):
    with pytest.raises(InvalidInput, match=said) as refused:
        ALLOWED.check(url)
    assert refused.value.field == "webhook"


def test_a_host_alone_allows_ports_80_and_443_and_host_port_its_port():
    for url in (
        "https://HOOKS.example.org/easel?x=1",  # hosts compare without case; https: 443
        "http://hooks.example.org/easel",  # http: 80
        "http://hooks.example.org:443/easel",
        "http://127.0.0.1:8080/hook",
    ):
        ALLOWED.check(url)
    WebhookSettings(webhook_hosts=("[::1]:9000",)).check("http://[::1]:9000/hook")
    with pytest.raises(InvalidInput, match="none"):
        WebhookSettings().check("http://127.0.0.1/hook")  # none allowed by default
    for entry in ("127.0.0.1:http", "hooks.example.org/path", "::1", "user@host"):
        with pytest.raises(ValueError, match="host:port"):
            WebhookSettings(webhook_hosts=(entry,))


def _sender(outbox, handler, key_secrets=None, **options) -> WebhookSender:
    signer = Signer(SECRET, key_secrets)
    return WebhookSender(outbox, signer, ALLOWED, QUICK, transport=httpx.MockTransport(handler), **options)


async def _deliver_all(sender: WebhookSender, rounds: int = 10) -> None:
    """Claim and send until nothing is due (bounded)."""
    for _ in range(rounds):
        started = await sender.claim_due()
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


def test_a_key_s_delivery_is_signed_with_its_own_secret_and_another_key_s_cannot_forge_it(outbox, key_secrets):
    seen: list[httpx.Request] = []
    alice, bob = key_secrets.rotate("alice"), key_secrets.rotate("bob")
    delivery = new_delivery(
        "http://127.0.0.1:8080/bob", '{"id": "job_b", "webhook_url": "http://127.0.0.1:8080/bob"}', "job_b", "bob"
    )
    outbox.add(delivery)
    asyncio.run(_deliver_all(_sender(outbox, lambda r: seen.append(r) or httpx.Response(204), key_secrets)))
    [request] = seen
    body, headers = request.content, dict(request.headers)
    assert Webhook(secret_text(bob)).verify(body, headers)["webhook_url"] == "http://127.0.0.1:8080/bob"
    for other in (alice, SECRET):  # another key's secret, or the stack's: not bob's deliveries
        with pytest.raises(Exception, match="signature"):
            Webhook(secret_text(other)).verify(body, headers)
    forged = signed_headers([alice], "msg_forged", body.decode(), time.time())  # alice signs a call to bob's URL
    with pytest.raises(Exception, match="signature"):
        Webhook(secret_text(bob)).verify(body, forged)


def test_during_a_rotation_s_grace_a_delivery_carries_both_signatures_and_either_secret_verifies(outbox, key_secrets):
    seen: list[httpx.Request] = []
    old = key_secrets.rotate("bob")
    new = key_secrets.rotate("bob", grace_s=3600)
    outbox.add(new_delivery("http://127.0.0.1:8080/bob", '{"id": "job_b"}', "job_b", "bob"))
    asyncio.run(_deliver_all(_sender(outbox, lambda r: seen.append(r) or httpx.Response(204), key_secrets)))
    [request] = seen
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret_text(secret)).verify(request.content, dict(request.headers)) == {"id": "job_b"}


def test_a_key_without_a_webhook_secret_is_a_400_at_submission_and_its_delivery_fails_without_a_call(
    outbox, key_secrets
):
    with pytest.raises(InvalidInput, match="easel keys webhook-secret carol") as refused:
        Signer(SECRET, key_secrets).secrets_of("carol")
    assert refused.value.field == "webhook"
    assert Signer(SECRET, key_secrets).secrets_of(None) == [SECRET]  # an open API's job: the stack's secret
    seen: list[httpx.Request] = []
    delivery = new_delivery("http://127.0.0.1:8080/hook", "{}", "job_c", "carol")
    outbox.add(delivery)
    asyncio.run(_deliver_all(_sender(outbox, lambda r: seen.append(r) or httpx.Response(204), key_secrets)))
    failed = outbox.get(delivery.id)
    assert seen == [] and failed.status is DeliveryStatus.FAILED and "no webhook secret" in failed.outcome


class _Endless(httpx.AsyncByteStream):
    """An answer body that never ends (issue 76: a 40 MB one was read whole); counts the bytes it gave."""

    def __init__(self) -> None:
        self.given = 0

    async def __aiter__(self):
        while True:
            self.given += 1024
            yield b"x" * 1024


def test_a_receiver_s_answer_is_read_no_further_than_a_few_kb(outbox):
    answer = _Endless()
    delivery = new_delivery("http://127.0.0.1:8080/hook", "{}", "job_1")
    outbox.add(delivery)
    asyncio.run(_deliver_all(_sender(outbox, lambda request: httpx.Response(200, stream=answer))))
    assert outbox.get(delivery.id).status is DeliveryStatus.DELIVERED
    assert MAX_ANSWER_BYTES <= answer.given <= MAX_ANSWER_BYTES + 1024


def test_a_key_s_receivers_that_never_answer_hold_its_share_of_slots_and_another_key_s_delivery_goes(
    outbox, key_secrets
):
    """Issue 76: 96 jobs of key A whose receiver answered past the timeout held every slot; key B's waited."""
    calls: list[str] = []
    key_secrets.rotate("a"), key_secrets.rotate("b")
    slow = [new_delivery("http://127.0.0.1:8080/a", "{}", f"job_a{i}", "a") for i in range(10)]
    quick = new_delivery("http://127.0.0.1:8080/b", "{}", "job_b", "b")
    for delivery in [*slow, quick]:  # a's all came first
        outbox.add(delivery)

    async def receivers(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/a":
            await release.wait()  # a's receiver holds every call
        return httpx.Response(204)

    async def scenario() -> None:
        sender = _sender(outbox, receivers, key_secrets, at_once=4, per_key=2)
        assert await sender.claim_due() == 3  # a's two slots, then b's; a's share is taken: no more of a's
        for _ in range(500):  # b's attempt ends while a's are held (bounded)
            if len(calls) == 3 and outbox.get(quick.id).status is DeliveryStatus.DELIVERED:
                break
            await asyncio.sleep(0.01)
        assert sorted(calls) == ["/a", "/a", "/b"] and outbox.get(quick.id).status is DeliveryStatus.DELIVERED
        release.set()
        await sender.wait_idle()
        await _deliver_all(sender, rounds=20)  # then a's others, two at a time

    release = asyncio.Event()
    asyncio.run(scenario())
    assert all(outbox.get(d.id).status is DeliveryStatus.DELIVERED for d in slow)


def test_easel_keys_webhook_secret_makes_and_rotates_a_key_s_secret_printed_once(tmp_path):
    from click.testing import CliRunner

    from serve.access.sqlite import SqliteKeyStore
    from serve.cli.main import main

    store = f"sqlite:///{tmp_path / 'easel.db'}"
    key_id = SqliteKeyStore(store).create("app", {Scope.JOBS}, KeyLimits())[0].id
    runner = CliRunner()
    made = runner.invoke(main, ["keys", "webhook-secret", key_id, "--store", store])
    rotated = runner.invoke(main, ["keys", "webhook-secret", key_id, "--grace-s", "600", "--store", store])
    assert made.exit_code == rotated.exit_code == 0, made.output + rotated.output
    first, second = (result.output.splitlines()[0] for result in (made, rotated))
    assert first.startswith("whsec_") and second.startswith("whsec_") and first != second
    assert "still signs for 600 s" in rotated.output
    signing = SqliteKeySecrets(store).signing(key_id)
    assert [secret_text(secret) for secret in signing] == [second, first]  # both sign during the grace
    missing = runner.invoke(main, ["keys", "webhook-secret", "nope", "--store", store])
    assert missing.exit_code == 1 and "no key nope" in missing.output
