"""Document sources: each lists what changed since a cursor and fetches document bytes."""

from __future__ import annotations

from tasks.settings import GitSourceConfig, LocalSourceConfig, Settings, SourceConfig
from tasks.sources.base import Source


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
    raise ValueError(f"source {cfg.name!r}: unsupported kind {cfg.kind!r}")


def source_uri(cfg: SourceConfig) -> str:
    """Where a source reads from, for the catalog (never with credentials)."""
    if isinstance(cfg, LocalSourceConfig):
        return cfg.path.as_uri()

    return _strip_userinfo(cfg.url)


def _strip_userinfo(url: str) -> str:
    if "://" not in url or "@" not in url.split("://", 1)[1].split("/", 1)[0]:
        return url
    scheme, rest = url.split("://", 1)
    host_and_path = rest.split("@", 1)[1]
    return f"{scheme}://{host_and_path}"
