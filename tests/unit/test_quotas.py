"""Quotas per key (serve/stores.py's table): one declaration, the stack's defaults, a key's own over them. No server."""

from click.testing import CliRunner

from serve.access import open_key_store
from serve.access.keys import KeyLimits
from serve.cli.main import main
from serve.results import ImageQuota
from serve.serving.results import key_quotas
from serve.settings import StackOptions
from serve.stores import QUOTA_KINDS, Quotas, quota, quota_bound, stack_quotas


def test_each_kind_is_a_key_s_limit_a_stack_setting_and_a_flag_of_both_commands():
    from serve.cli.keys import keys_create, keys_update
    from serve.cli.stack import up

    for kind in QUOTA_KINDS:
        flag = f"--quota-{kind.name.replace('_', '-')}"
        assert kind.name in Quotas.model_fields and kind.name in KeyLimits.model_fields
        assert StackOptions.model_fields[f"quota_{kind.name}"].default == kind.default
        for command in (up, keys_create, keys_update):
            assert any(flag in param.opts for param in command.params), (command.name, flag)
    assert stack_quotas(StackOptions(quota_loras=3)) == Quotas(
        **{kind.name: kind.default for kind in QUOTA_KINDS} | {"loras": 3}
    )


def test_a_key_s_own_quota_overrides_the_stack_s_and_0_is_no_bound():
    defaults = Quotas(images=100, loras=0)
    assert quota(KeyLimits(images=5), defaults, "images") == 5
    assert quota(KeyLimits(), defaults, "images") == 100
    assert quota(KeyLimits(), defaults, "loras") is None and quota(KeyLimits(images=0), defaults, "images") is None
    assert quota(None, defaults, "images") is None  # no key: an open API
    assert quota_bound(None, None, "concurrent_jobs") == 100  # no stack's quotas given: the table's defaults


def test_keys_create_and_update_set_quotas_and_keep_what_is_not_given(tmp_path):
    store = f"sqlite:///{tmp_path / 'easel.db'}"
    runner = CliRunner()
    flags = ["--quota-loras", "3", "--concurrent-jobs", "2", "--quota-image-bytes", "1MiB"]  # an old spelling too
    created = runner.invoke(main, ["keys", "create", "--name", "ci", "--rpm", "5", *flags, "--store", store])
    assert created.exit_code == 0, created.output
    key_id = next(line for line in created.output.splitlines() if line.startswith("easel-")).split("-")[1]
    updated = runner.invoke(
        main, ["keys", "update", key_id, "--quota-images", "7", "--quota-loras", "4", "--store", store]
    )
    assert updated.exit_code == 0, updated.output
    limits = open_key_store(store).get(key_id).limits
    assert limits == KeyLimits(requests_per_minute=5, loras=4, concurrent_jobs=2, image_bytes=1 << 20, images=7)
    assert "images=7" in runner.invoke(main, ["keys", "list", "--store", store]).output
    missing = runner.invoke(main, ["keys", "update", "nope", "--quota-images", "1", "--store", store])
    assert missing.exit_code == 1 and "no key nope" in missing.output
    bad = runner.invoke(main, ["keys", "update", key_id, "--quota-images", "-1", "--store", store])
    assert bad.exit_code == 2 and "--quota-images" in bad.output


def test_the_image_quota_of_a_key_is_its_own_else_the_stack_s_and_none_without_a_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'easel.db'}"
    keys = open_key_store(url)
    own, _ = keys.create("own", set(), KeyLimits(images=3))
    plain, _ = keys.create("plain", set(), KeyLimits())
    quota_of = key_quotas(url, Quotas(images=50, image_bytes=4096))
    assert quota_of(own.id) == ImageQuota(3, 4096) and quota_of(plain.id) == ImageQuota(50, 4096)
    assert quota_of("") is None and quota_of("unknown") is None


def test_the_guide_s_table_is_the_code_s():
    from serve.cli.options import SIZE
    from serve.paths import PROJECT_ROOT

    guide = (PROJECT_ROOT / "docs" / "guides" / "keys-and-limits.md").read_text()
    section = guide.split("### Quotas on what a key keeps", 1)[1].split("\n### ", 1)[0]
    rows = [line.split("|")[1:4] for line in section.splitlines() if line.startswith("| `")]
    table = {name.strip().strip("`"): default.split()[0] for name, _, default in rows}
    assert table == {kind.name: SIZE.show(kind.default) if kind.size else str(kind.default) for kind in QUOTA_KINDS}
