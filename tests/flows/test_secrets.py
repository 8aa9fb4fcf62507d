"""Credentials written into a URL never reach the catalog (config copies, errors), MLflow, Prefect, the
logs or the output: plant them, refresh, grep every file of the home (WAL files too) and the output."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.flows.reliability import env_for, make_kb, run

SECRETS = ("S3cr3tPlant", "GitPlant42", "WikiPlant77")


def _plant(config: Path) -> None:
    body = yaml.safe_load(config.read_text())
    body["sources"] += [
        {
            "kind": "s3",
            "name": "bucket",
            "bucket": "kb-docs",
            "retries": 0,
            "endpoint_url": "http://AKIAPLANT:S3cr3tPlant@127.0.0.1:9/",
        },
        {"kind": "git", "name": "repo", "url": "http://bob:GitPlant42@127.0.0.1:9/docs.git"},
        {
            "kind": "mediawiki",
            "name": "wiki",
            "api_url": "http://bot:WikiPlant77@127.0.0.1:9/w/api.php",
            "retries": 0,
        },
    ]
    config.write_text(yaml.safe_dump(body))


def _leaks(folder: Path) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {s}" for s in SECRETS if s.encode() in data]
    return found


def test_planted_credentials_appear_nowhere(prefect_server, tmp_path, tiny_model_dir):
    config = make_kb(tmp_path, tiny_model_dir)
    _plant(config)
    code, out = run(config, env=env_for(tmp_path))  # documents to generate: the Prefect flow runs too
    assert code == 1, out  # the three unreachable sources fail, each in one line
    assert not [s for s in SECRETS if s in out], out
    code, out = run(config, env=env_for(tmp_path), command="status")
    assert not [s for s in SECRETS if s in out], out
    assert _leaks(tmp_path / ".instill") == []


def test_planted_credentials_stay_out_of_a_postgres_catalog(tmp_path, tiny_model_dir, postgres_databases):
    import psycopg
    from sqlalchemy.engine import make_url

    from tasks.catalog.db import upgrade

    url = postgres_databases()
    upgrade(url)
    config = make_kb(tmp_path, tiny_model_dir)
    (tmp_path / "docs").rename(tmp_path / "elsewhere")  # nothing to generate: only the sources fail
    body = yaml.safe_load(config.read_text())
    body["sources"] = []
    config.write_text(yaml.safe_dump(body))
    _plant(config)
    code, out = run(config, env=env_for(tmp_path, INSTILL_CATALOG_URL=url))
    assert code == 1 and not [s for s in SECRETS if s in out], out
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False)) as conn:
        text = " ".join(
            str(row)
            for table in ("sources", "refresh_runs")
            for row in conn.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608
        )
    assert "127.0.0.1:9" in text and not [s for s in SECRETS if s in text]
