"""Document sources: the connector for each ``kind`` of source, built from its configuration.

Each connector class builds itself (``from_config``), names its documents for the parser
(``document_filename``) and declares its typed cursor (``cursor_type``); this module only maps a kind to
its class, imported on first use (boto3 and requests load only for sources that need them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.settings import Settings, SourceConfig
    from tasks.sources.base import Source

# kind -> (module, class); a new connector is one line here plus its module.
CONNECTORS = {
    "local": ("tasks.sources.local", "LocalFolderSource"),
    "git": ("tasks.sources.git", "GitSource"),
    "s3": ("tasks.sources.s3", "S3Source"),
    "mediawiki": ("tasks.sources.mediawiki", "MediaWikiSource"),
}


def connector_class(kind: str) -> type[Source]:
    if kind not in CONNECTORS:
        raise ValueError(f"unsupported source kind {kind!r}; known: {', '.join(CONNECTORS)}")
    module, name = CONNECTORS[kind]
    return getattr(importlib.import_module(module), name)


def build_source(cfg: SourceConfig, settings: Settings) -> Source:
    """The connector for one configured source."""
    return connector_class(cfg.kind).from_config(cfg, settings)
