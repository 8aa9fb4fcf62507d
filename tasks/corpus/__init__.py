"""The Doc-to-LoRA hypernetwork's real-prose training corpus, built offline from Debian doc packages.

``build_corpus`` (tasks.corpus.build) writes ``documents.jsonl`` and ``manifest.json``; the sources and
their licences are in tasks.corpus.sources, the page-to-documents splitting in tasks.corpus.chunk.
Run it with ``python -m tasks.corpus build [--out DIR]``.
"""

from tasks.corpus.build import DEFAULT_OUT, BuildConfig, build_corpus, smollm2_token_counter
from tasks.corpus.chunk import ChunkConfig
from tasks.corpus.sources import DEFAULT_PACKAGES, CorpusError, PackageSpec, apt_install_line

__all__ = [
    "DEFAULT_OUT",
    "DEFAULT_PACKAGES",
    "BuildConfig",
    "ChunkConfig",
    "CorpusError",
    "PackageSpec",
    "apt_install_line",
    "build_corpus",
    "smollm2_token_counter",
]
