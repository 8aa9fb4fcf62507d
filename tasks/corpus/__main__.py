"""Command line: ``python -m tasks.corpus build [--out DIR] [--packages a,b] [--root /] [--no-cache]``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# One thread: the build shares a 2-core machine with training, and tokenizing gains nothing from more.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tasks.corpus.build import DEFAULT_OUT, MANIFEST, BuildConfig, build_corpus  # noqa: E402
from tasks.corpus.sources import DEFAULT_PACKAGES, CorpusError, apt_install_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.corpus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build documents.jsonl and manifest.json")
    build.add_argument("--out", type=Path, default=DEFAULT_OUT)
    build.add_argument("--root", type=Path, default=Path("/"))
    build.add_argument(
        "--packages", help="comma-separated subset of: " + ", ".join(p.name for p in DEFAULT_PACKAGES)
    )
    build.add_argument("--no-cache", action="store_true", help="re-parse every file")
    sub.add_parser("apt", help="print the apt-get line that installs the source packages")
    args = parser.parse_args(argv)
    if args.command == "apt":
        print(apt_install_line())
        return 0
    packages = DEFAULT_PACKAGES
    if args.packages:
        wanted = set(args.packages.split(","))
        unknown = wanted - {p.name for p in DEFAULT_PACKAGES}
        if unknown:
            parser.error(f"unknown package(s): {', '.join(sorted(unknown))}")
        packages = tuple(p for p in DEFAULT_PACKAGES if p.name in wanted)
    start = time.monotonic()
    try:
        manifest = build_corpus(args.out, packages, args.root, config=BuildConfig(cache=not args.no_cache))
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = manifest["counts"]
    print(
        f"{args.out / MANIFEST}: {counts['train']} train + {counts['heldout']} held-out documents in "
        f"{time.monotonic() - start:.0f} s, documents_sha256 {manifest['documents_sha256']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
