"""The runtime: one set of handles per config and process; server catalogs must be migrated explicitly."""

from __future__ import annotations

import pytest

from tasks.catalog.db import current_revision, head_revision
from tasks.runtime import CatalogNotReady, forget_runtimes, prepare_catalog, runtime


def test_runtime_is_built_once_per_config_and_migrates_an_embedded_catalog(kb):
    rt = runtime(kb)
    assert runtime(str(kb)) is rt and rt.kb.name == "testkb"
    assert rt.source_config("docs").kind == "local"
    assert current_revision(rt.settings.catalog) == head_revision()
    forget_runtimes()
    assert runtime(kb) is not rt


@pytest.mark.postgres
def test_a_server_catalog_behind_the_migrations_is_refused(postgres_databases):
    url = postgres_databases()
    with pytest.raises(CatalogNotReady, match="instill db upgrade"):
        prepare_catalog(url)
