"""`easel up --tls-cert/--tls-key` without servers: the pair checked, what Ray Serve and the clients here are told."""

import ssl

import pytest
from click.testing import CliRunner

from serve.cli.main import main
from serve.paths import SERVE_CONFIG
from serve.processes.tls import CERT_ENV, KEY_ENV, client_verify, grpc_credentials
from serve.settings import StackOptions
from serve.stack import app_settings, load_serve_config
from tests.certificates import self_signed


@pytest.fixture
def pair(tmp_path):
    return self_signed(tmp_path)


def test_a_certificate_needs_its_key_and_the_reverse(pair):
    cert, key = pair
    with pytest.raises(ValueError, match="--tls-cert needs --tls-key too"):
        StackOptions(tls_cert=cert)
    with pytest.raises(ValueError, match="--tls-key needs --tls-cert too"):
        StackOptions(tls_key=key)
    result = CliRunner().invoke(main, ["up", "--tls-cert", str(cert)])
    assert result.exit_code == 1 and "--tls-cert needs --tls-key too (both or neither)" in result.output


def test_the_files_must_exist(pair, tmp_path):
    cert, _ = pair
    result = CliRunner().invoke(main, ["up", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.pem")])
    assert result.exit_code == 2 and "--tls-key" in result.output and "does not exist" in result.output
    with pytest.raises(ValueError, match="tls_key"):
        StackOptions(tls_cert=cert, tls_key=tmp_path / "missing.pem")


def test_with_a_certificate_the_http_proxy_serves_https_and_urls_say_so(pair):
    cert, key = pair
    options = StackOptions(tls_cert=cert, tls_key=key)
    assert options.api_scheme == "https" and app_settings(options, 1, 8443)["public_url"] == "https://127.0.0.1:8443"
    config = load_serve_config(SERVE_CONFIG, "127.0.0.1", 8443, 9443, https=options.http_options())
    assert (config.http_options.ssl_certfile, config.http_options.ssl_keyfile) == (str(cert), str(key))
    assert options.tls_env() == {CERT_ENV: str(cert), KEY_ENV: str(key)}


def test_without_one_everything_stays_plain():
    options = StackOptions()
    assert options.api_scheme == "http" and options.http_options() == {} and options.tls_env() == {}
    assert load_serve_config(SERVE_CONFIG, "127.0.0.1", 8000, 9000, https={}).http_options.ssl_certfile is None
    assert client_verify(None) is True


def test_clients_here_trust_exactly_the_stack_s_certificate(pair):
    cert, _ = pair
    context = client_verify(cert)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] == 1 and not context.check_hostname
    assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN


def test_the_grpc_proxy_gets_server_credentials_only_when_the_stack_set_them(pair, monkeypatch):
    import grpc

    cert, key = pair
    monkeypatch.delenv(CERT_ENV, raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert grpc_credentials() is None
    monkeypatch.setenv(CERT_ENV, str(cert))
    monkeypatch.setenv(KEY_ENV, str(key))
    assert isinstance(grpc_credentials(), grpc.ServerCredentials)
