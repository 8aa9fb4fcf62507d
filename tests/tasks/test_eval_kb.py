"""The multi-document question set's shape, and `eval-kb` end to end on the tiny model (a smoke run)."""

from __future__ import annotations

import json


def test_question_set_has_enough_documents_questions_and_same_kind_wrong_answers():
    from tasks.eval_kb import question_set

    data = question_set()
    keys = {d["key"] for d in data["documents"]}
    assert len(keys) >= 20 and len(data["questions"]) >= 60
    assert sum(len(q["documents"]) == 2 for q in data["questions"]) >= 5
    for q in data["questions"]:
        assert len(q["wrong"]) == 3 and q["answer"] not in q["wrong"] and set(q["documents"]) <= keys


def test_eval_kb_reports_routing_and_every_strategy(tiny_model_dir, tmp_path):
    from tasks.eval_kb import STRATEGY_ORDER, EvalKBConfig, label, run_eval_kb
    from tasks.settings import Settings

    cfg = EvalKBConfig(
        sizes=[20, 24],
        generator="cd",
        steps=1,
        base_model=str(tiny_model_dir),
        limit=3,
        embed_max_size=24,
        max_new_tokens=2,
    )
    settings = Settings(home=tmp_path / "home")
    result = run_eval_kb(cfg, settings, tmp_path, log=lambda m: None)
    assert set(result["routing"]) == {"bm25", "embedding"} and set(result["routing"]["bm25"]) == {"20", "24"}
    cd_labels = {label(s, "cd") for s in STRATEGY_ORDER}
    assert set(result["answers"]["20"]) == cd_labels and "top1[cd]" in cd_labels and "rag" in cd_labels
    assert result["best_strategy"] in cd_labels - {"base"}
    assert json.loads((tmp_path / "eval-kb.json").read_text())["questions"] == 3
    assert (tmp_path / "eval-kb.png").stat().st_size > 1000

    # A routing-only run folds its figures into the report: earlier answers and the run list are kept.
    (tmp_path / "eval-kb.md").write_text("# old\n\n## Verdict\n\nHand-written.\n")
    cfg2 = EvalKBConfig(
        sizes=[20, 30], base_model=str(tiny_model_dir), limit=3, embed_max_size=30, strategies=(), merge=True
    )
    merged = run_eval_kb(cfg2, settings, tmp_path, log=lambda m: None)
    assert set(merged["routing"]["embedding"]) == {"20", "24", "30"}
    assert json.dumps(merged["answers"]) == json.dumps(result["answers"]) and len(merged["runs"]) == 2
    assert "--strategies 'none' --merge" in merged["runs"][1]["command"]
    text = (tmp_path / "eval-kb.md").read_text()
    assert "| embedding | 30 |" in text and "## Runs" in text and text.rstrip().endswith("Hand-written.")


def test_distractors_from_a_folder_of_text_files_and_too_few_is_an_error(tmp_path):
    import pytest

    from tasks.eval_kb import distractor_texts
    from tasks.settings import Settings

    for name in ("a.rst.txt", "sub/b.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(" ".join(f"{name}-{i}" for i in range(500)))
    texts, source = distractor_texts(6, Settings(home=tmp_path / "h"), tmp_path, 150)
    assert source == str(tmp_path) and len(texts) == 6
    assert all(40 <= len(t.split()) <= 150 for t in texts)
    assert any(t.startswith("sub/b.txt-") for t in texts) and texts[0].startswith("a.rst.txt-0 ")
    with pytest.raises(ValueError, match="holds 8 usable distractor documents; 9 are needed"):
        distractor_texts(9, Settings(home=tmp_path / "h"), tmp_path, 150)


def test_an_embedding_budget_measures_the_router_up_to_the_size_reached(
    tiny_model_dir, tmp_path, monkeypatch
):
    import tasks.eval_kb as eval_kb
    from tasks.settings import Settings

    monkeypatch.setattr(eval_kb, "EMBED_CHUNK", 120)  # one chunk, then the (tiny) budget is spent
    cfg = eval_kb.EvalKBConfig(
        sizes=[20, 240],
        base_model=str(tiny_model_dir),
        limit=3,
        embed_max_size=240,
        embed_budget_minutes=1e-4,
        strategies=(),
    )
    settings = Settings(home=tmp_path / "home")
    result = eval_kb.run_eval_kb(cfg, settings, tmp_path / "out", log=lambda m: None)
    assert set(result["routing"]["embedding"]) == {"20", "100"}
    assert set(result["routing"]["bm25"]) == {"20", "100", "240"}
    assert "--embed-budget-minutes 0.0001" in result["runs"][0]["command"]
    # The 120 embedded documents are cached: a second run with no budget embeds only the rest.
    cached = list((tmp_path / "home" / "eval-kb").glob("emb-*.npy"))
    assert len(cached) == 1 and len(__import__("numpy").load(cached[0])) == 120
    cfg.embed_budget_minutes = None
    again = eval_kb.run_eval_kb(cfg, settings, tmp_path / "out", log=lambda m: None)
    assert set(again["routing"]["embedding"]) == {"20", "240"}
    assert again["routing"]["embedding"]["20"] == result["routing"]["embedding"]["20"]
