"""Settings: the knowledge-base file validated into one typed object, paths relative to the file."""

from __future__ import annotations

import pytest
import yaml

from tasks.settings import ConfigError, DocumentKind, Settings, load_knowledge_base


def test_relative_paths_resolve_against_the_file_and_uris_hold_no_credentials(tmp_path):
    config = tmp_path / "kb" / "instill.yaml"
    config.parent.mkdir()
    sources = [
        {"kind": "local", "name": "docs", "path": "docs"},
        {"kind": "git", "name": "repo", "url": "https://bot:s3cret@git.example/docs.git"},
        {
            "kind": "s3",
            "name": "b",
            "bucket": "bkt",
            "prefix": "p/",
            "endpoint_url": "http://u:pw@minio:9000",
        },
    ]
    config.write_text(yaml.safe_dump({"name": "kb", "sources": sources}))
    kb = load_knowledge_base(config)
    local, git, s3 = kb.sources
    assert local.path == (tmp_path / "kb" / "docs").resolve()
    assert git.uri == "https://git.example/docs.git" and s3.uri == "http://minio:9000/bkt/p/"
    assert kb.generator.name == "hypernet" and kb.gates.enabled and kb.promotion.auto_promote


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a list", "expected a mapping"),
        ("name: kb\nsources: []", "sources"),
        ("name: kb\nsources: [{kind: local, name: d, path: x, colour: red}]", "sources.0.colour"),
    ],
)
def test_config_problems_name_the_key(tmp_path, text, message):
    config = tmp_path / "instill.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_knowledge_base(config)


def test_state_lives_under_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTILL_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("INSTILL_CATALOG_URL", raising=False)
    settings = Settings()
    assert settings.catalog == f"sqlite:///{tmp_path / 'h' / 'catalog.db'}"
    assert settings.store_root == tmp_path / "h" / "store"


def test_store_is_local_by_default_and_s3_when_configured(tmp_path):
    config = tmp_path / "kb" / "instill.yaml"
    config.parent.mkdir()
    base = {"name": "kb", "sources": [{"kind": "local", "name": "docs", "path": "docs"}]}
    config.write_text(yaml.safe_dump(base))
    assert load_knowledge_base(config).store.kind == "local"
    store = {"kind": "s3", "bucket": "team-bkt", "prefix": "instill/store", "cache_dir": "cache",
             "endpoint_url": "http://u:pw@s3.internal:9000", "region": "eu-west-1",
             "access_key_id_env": "KEY_ID", "secret_access_key_env": "KEY_SECRET"}  # fmt: skip
    config.write_text(yaml.safe_dump(base | {"store": store}))
    s3 = load_knowledge_base(config).store
    assert (s3.bucket, s3.prefix, s3.region) == ("team-bkt", "instill/store", "eu-west-1")
    assert s3.cache_dir == (tmp_path / "kb" / "cache").resolve()
    assert s3.uri == "s3://team-bkt/instill/store at http://s3.internal:9000"


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ({"kind": "s3", "bucket": "bkt", "access_key_id_env": "K"}, "go together"),
        ({"kind": "s3", "bucket": "bkt", "prefix": "/abs/"}, "store.prefix"),
        ({"kind": "s3", "bucket": "bkt", "secret_access_key": "inline"}, "store.secret_access_key"),
        ({"kind": "gcs", "bucket": "bkt"}, "store"),
    ],
)
def test_bad_store_config_names_the_key(tmp_path, store, message):
    config = tmp_path / "instill.yaml"
    base = {"name": "kb", "sources": [{"kind": "local", "name": "docs", "path": "docs"}]}
    config.write_text(yaml.safe_dump(base | {"store": store}))
    with pytest.raises(ConfigError, match=message):
        load_knowledge_base(config)


def test_instruction_settings_source_content_gate_and_a_relative_checkpoint(tmp_path):
    (tmp_path / "t2l").mkdir()
    config = tmp_path / "instill.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "kb",
                "sources": [
                    {"kind": "local", "name": "docs", "path": "docs"},
                    {"kind": "local", "name": "style", "path": "style", "content": "instruction"},
                ],
                "instructions": {"options": {"checkpoint": "t2l"}, "gate": {"max_nll_increase": 0.5}},
                "serving": {"apply_instruction": False},
            }
        )
    )
    kb = load_knowledge_base(config)
    assert [s.content for s in kb.sources] == [DocumentKind.KNOWLEDGE, DocumentKind.INSTRUCTION]
    gen = kb.instructions.generator(kb.generator.base_model)
    assert gen.name == "t2l" and gen.options["checkpoint"] == str((tmp_path / "t2l").resolve())
    assert kb.instructions.gate.max_nll_increase == 0.5 and kb.instructions.gate.min_compliance == 0.5
    assert kb.serving.apply_instruction is False
    config.write_text(config.read_text().replace("content: instruction", "content: recipe"))
    with pytest.raises(ConfigError, match="content"):
        load_knowledge_base(config)
