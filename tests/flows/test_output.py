"""Output people can act on: piped tables keep whole names and hashes, precise lifecycle messages,
skipped files in the summary, and an exit status that reflects every document failed at the end."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.kb import instill, refresh
from tests.flows.reliability import REPO, env_for


def test_piped_tables_never_cut_names_or_hashes(prefect_server, kb, tmp_path):
    long_name = "a-very-long-document-name-that-would-never-fit-in-eighty-columns-of-a-terminal.md"
    (kb.parent / "docs" / long_name).write_text("# Long\n\nThe long document has a long name.\n")
    code, _, out = refresh(kb, tmp_path / "s.json")
    assert code == 0, out
    proc = subprocess.run(
        [sys.executable, "-c", "from flows.cli import app; app()", "status", "--config", str(kb)],
        cwd=REPO,
        env=env_for(kb.parent),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"docs:{long_name}" in proc.stdout, proc.stdout
    code, rows = instill("status", "--config", str(kb), "--json")
    for row in json.loads(rows):
        assert row["adapter_sha256"] in proc.stdout


def test_promote_on_a_deleted_document_says_so(prefect_server, kb, tmp_path):
    code, _, out = refresh(kb, tmp_path / "a.json")
    (kb.parent / "docs" / "gamma.html").unlink()
    code, _, out = refresh(kb, tmp_path / "b.json")
    assert code == 0, out
    code, out = instill("promote", "--config", str(kb), "docs:gamma.html")
    assert code == 2 and "docs:gamma.html was deleted from its source" in out, out


def test_unreadable_files_are_in_the_summary_and_old_failures_keep_the_exit_status(
    prefect_server, kb, tmp_path
):
    (kb.parent / "docs" / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    code, first, out = refresh(kb, tmp_path / "a.json")
    assert code == 1
    code, second, out = refresh(kb, tmp_path / "b.json")
    assert code == 1, "broken.pdf is still failed: the exit status says so"
    assert [f["document"] for f in second["still_failed"]] == ["docs:broken.pdf"]
    assert "still failed docs:broken.pdf" in out


def test_skipped_files_are_listed_with_their_reason(prefect_server, kb, tmp_path, monkeypatch):
    import tasks.sources.local as local

    real = local.sha256_file

    def unreadable(path):
        if path.name == "beta.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(local, "sha256_file", unreadable)
    code, result, out = refresh(kb, tmp_path / "s.json")
    assert result["skipped"] == [
        {"source": "docs", "reason": "local source 'docs': cannot read 'beta.txt'; left as it was"}
    ], out
    assert "skipped local source 'docs': cannot read 'beta.txt'" in out


def test_progress_bars_on_a_terminal_and_nothing_when_piped():
    import io

    from rich.console import Console

    from flows.console import RichStepProgress

    terminal = io.StringIO()
    with RichStepProgress(Console(file=terminal, force_terminal=True)) as progress:
        assert progress.each("docs: generate", [1, 2, 3], lambda x: 2 * x) == [2, 4, 6]
    assert "docs: generate" in terminal.getvalue() and "3/3" in terminal.getvalue()
    piped = io.StringIO()
    with RichStepProgress(Console(file=piped)) as progress:
        assert progress.each("docs: generate", [1], lambda x: x) == [1]
    assert piped.getvalue() == ""
