"""Document sources: each lists what changed since a cursor and fetches document bytes."""

from __future__ import annotations

import os

from tasks.settings import (
    GitSourceConfig,
    LocalSourceConfig,
    MediaWikiSourceConfig,
    S3SourceConfig,
    Settings,
    SourceConfig,
)
from tasks.sources.base import Change, Source, SourceError, redact


def build_source(cfg: SourceConfig, settings: Settings) -> Source:
    """The connector for one configured source."""
    if isinstance(cfg, LocalSourceConfig):
        from tasks.sources.local import LocalFolderSource

        return LocalFolderSource(cfg.name, cfg.path, include=cfg.include)
    if isinstance(cfg, GitSourceConfig):
        from tasks.sources.git import GitSource

        return GitSource(
            cfg.name,
            cfg.url,
            branch=cfg.branch,
            subdir=cfg.subdir,
            include=cfg.include,
            workdir=settings.git_dir,
        )
    if isinstance(cfg, S3SourceConfig):
        from tasks.sources.s3 import S3Source

        return S3Source(
            cfg.name,
            cfg.bucket,
            prefix=cfg.prefix,
            include=cfg.include,
            endpoint_url=cfg.endpoint_url,
            region=cfg.region,
            access_key_id=_secret(cfg, cfg.access_key_id_env),
            secret_access_key=_secret(cfg, cfg.secret_access_key_env),
            max_bytes=cfg.max_bytes,
            page_size=cfg.page_size,
            retries=cfg.retries,
        )
    if isinstance(cfg, MediaWikiSourceConfig):
        from tasks.sources.mediawiki import MediaWikiSource

        return MediaWikiSource(
            cfg.name,
            cfg.api_url,
            username=cfg.username,
            password=_secret(cfg, cfg.password_env),
            namespaces=tuple(cfg.namespaces),
            maxlag=cfg.maxlag,
            retries=cfg.retries,
            backoff_s=cfg.backoff_s,
            max_backoff_s=cfg.max_backoff_s,
            rc_max_age_days=cfg.rc_max_age_days,
        )
    raise ValueError(f"source {cfg.name!r}: unsupported kind {cfg.kind!r}")


def source_uri(cfg: SourceConfig) -> str:
    """Where a source reads from, for the catalog (never with credentials)."""
    if isinstance(cfg, LocalSourceConfig):
        return cfg.path.as_uri()
    if isinstance(cfg, S3SourceConfig):
        where = f"s3://{cfg.bucket}/{cfg.prefix}"
        return (
            f"{redact(cfg.endpoint_url).rstrip('/')}/{cfg.bucket}/{cfg.prefix}" if cfg.endpoint_url else where
        )
    if isinstance(cfg, MediaWikiSourceConfig):
        return redact(cfg.api_url)
    return redact(cfg.url)


def document_filename(cfg: SourceConfig, change: Change) -> str:
    """The name the parser picks a format by: the key, except for wiki pages, whose wikitext is plain text."""
    if isinstance(cfg, MediaWikiSourceConfig):
        return f"{change.title or change.key}.txt"
    return change.key


def _secret(cfg: SourceConfig, env_name: str | None) -> str | None:
    """The value of the environment variable a config names for a secret; the value is never logged."""
    if env_name is None:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise SourceError(f"{cfg.kind} source {cfg.name!r}: environment variable {env_name} is not set")
    return value
