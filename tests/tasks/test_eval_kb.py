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
    from tasks.eval_kb import STRATEGY_ORDER, EvalKBConfig, run_eval_kb
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
    result = run_eval_kb(cfg, Settings(home=tmp_path / "home"), tmp_path, log=lambda m: None)
    assert set(result["routing"]) == {"bm25", "embedding"} and set(result["routing"]["bm25"]) == {"20", "24"}
    assert set(result["answers"]["20"]) == set(STRATEGY_ORDER)
    assert result["best_strategy"] in STRATEGY_ORDER[1:]
    assert json.loads((tmp_path / "eval-kb.json").read_text())["questions"] == 3
    assert (tmp_path / "eval-kb.png").stat().st_size > 1000
