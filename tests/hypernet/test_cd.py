"""Per-document context distillation and the sentence probes it trains on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import AutoModelForCausalLM

from hypernet.adapter import save_adapter
from hypernet.base_model import chat_ids
from hypernet.batching import pad_id, right_pad
from hypernet.cd import CDError, build_targets, distill, distill_loss
from hypernet.config import CDConfig
from hypernet.lora import applied
from hypernet.probes import QUESTION_PREFIX, Probe, held_out_split, sentence_probes

DOC = (
    "The Zorblat protocol was ratified in 1987 in the coastal town of Vennholm. Its chief engineer was "
    "Mara Quill, who had worked on radio relays for the navy. The protocol defines how lighthouse beacons "
    "exchange weather reports every seven minutes. In 1994 a second version added error correction and a "
    "checksum of sixteen bits. Today about four hundred stations use it, most of them along the coast."
)
FAST = CDConfig(steps=15, lr=1e-2)


def test_probes_split_each_sentence_into_question_and_answer() -> None:
    probes = sentence_probes(DOC, max_probes=8)
    assert len(probes) == 5
    first = probes[0]
    assert first.question == QUESTION_PREFIX + "The Zorblat protocol was ratified in"
    assert first.answer == "1987 in the coastal town of Vennholm."
    assert all(p.answer.strip() for p in probes)


def test_probes_are_deterministic_and_spread_over_the_document() -> None:
    text = " ".join(f"Sentence number {i} of this long document has several words." for i in range(40))
    probes = sentence_probes(text, max_probes=4, seed=3)
    assert probes == sentence_probes(text, max_probes=4, seed=3)
    numbers = [int(p.question.split("number ")[1].split()[0]) for p in probes]
    assert [n // 10 for n in numbers] == [0, 1, 2, 3]  # one probe from each quarter
    assert numbers != [
        int(p.question.split("number ")[1].split()[0]) for p in sentence_probes(text, max_probes=4, seed=4)
    ]


def test_probes_skip_short_sentences_and_fall_back_to_word_windows() -> None:
    assert sentence_probes("Too short. Also short! Tiny?") == []
    table = "| name | year | city | role | count | notes | more | cells | here | and | there | too |"
    probes = sentence_probes(table.replace(".", ""))
    assert len(probes) == 1 and probes[0].answer


def test_held_out_split_keeps_every_probe_once() -> None:
    probes = [Probe(f"q{i}", "a") for i in range(10)]
    kept, held = held_out_split(probes, 0.25)
    assert len(held) == 2 and sorted(kept + held, key=lambda p: int(p.question[1:])) == probes
    assert held_out_split(probes[:1], 0.5) == (probes[:1], [])


def test_shared_prefix_teacher_matches_full_sequences(tiny_base) -> None:
    probes = sentence_probes(DOC)
    targets = build_targets(tiny_base, DOC, probes)
    seqs = [chat_ids(tiny_base.tokenizer, f"{DOC}\n\n{p.question}", p.answer) for p in probes]
    ids, mask, predict = right_pad(seqs, pad_id(tiny_base.tokenizer))
    with torch.no_grad():
        full = F.log_softmax(tiny_base.model(input_ids=ids, attention_mask=mask).logits[predict], -1)
    assert targets.teacher_logp.shape == full.shape == (targets.num_answer_tokens, len(tiny_base.tokenizer))
    torch.testing.assert_close(targets.teacher_logp, full, atol=1e-4, rtol=0)


def test_distillation_lowers_kl_from_the_base_models_value(tiny_base) -> None:
    result = distill(tiny_base, DOC, FAST)
    base_kl = distill_loss(tiny_base.model, None, build_targets(tiny_base, DOC, result.probes)).item()
    assert result.losses[0] == pytest.approx(base_kl, rel=1e-5)  # B = 0: step 0 is the base model
    assert result.final_loss < 0.8 * result.losses[0]
    assert len(result.losses) == FAST.steps and result.seconds > 0


def test_blank_probes_are_distilled_beside_the_continuation_probes(tiny_base) -> None:
    plain = distill(tiny_base, DOC, CDConfig(steps=2, lr=1e-2))
    mixed = distill(tiny_base, DOC, CDConfig(steps=2, lr=1e-2, blank_probes=3))
    assert mixed.probes[: len(plain.probes)] == plain.probes
    blanks = mixed.probes[len(plain.probes) :]
    assert len(blanks) == 3 and all("___" in p.question for p in blanks)
    assert mixed.final_loss < mixed.losses[0]


def test_distilled_adapter_changes_the_logits(tiny_base) -> None:
    weights = distill(tiny_base, DOC, FAST).weights
    ids, _ = chat_ids(tiny_base.tokenizer, "Who was the chief engineer?")
    with torch.no_grad():
        plain = tiny_base.model(input_ids=torch.tensor([ids])).logits
        with applied(tiny_base.model, weights):
            adapted = tiny_base.model(input_ids=torch.tensor([ids])).logits
    assert (adapted - plain).abs().max() > 1e-3
    assert weights.rank == 8 and weights.scaling == 2.0 and weights.target_names == ["down_proj"]
    assert all(not t.requires_grad and t.device.type == "cpu" for t in weights.A.values())


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tiny_base) -> None:
    cfg = CDConfig(steps=5)
    a, b = distill(tiny_base, DOC, cfg).weights, distill(tiny_base, DOC, cfg).weights
    c = distill(tiny_base, DOC, CDConfig(steps=5, seed=1)).weights
    assert all(torch.equal(a.A[p], b.A[p]) and torch.equal(a.B[p], b.B[p]) for p in a.modules)
    assert not all(torch.equal(a.A[p], c.A[p]) for p in a.modules)


def test_init_adapter_is_the_starting_point(tiny_base) -> None:
    first = distill(tiny_base, DOC, FAST)
    again = distill(tiny_base, DOC, CDConfig(steps=0), init=first.weights)
    assert again.losses == [] and again.final_loss == pytest.approx(first.final_loss, rel=1e-5)
    refined = distill(tiny_base, DOC, CDConfig(steps=3, lr=1e-2), init=first.weights)
    assert refined.losses[0] == pytest.approx(first.final_loss, rel=1e-5)


def test_top_k_teacher_also_lowers_kl(tiny_base) -> None:
    result = distill(tiny_base, DOC, CDConfig(steps=15, lr=1e-2, top_k=16))
    assert result.final_loss < 0.8 * result.losses[0]


def test_progress_is_reported_after_every_step(tiny_base) -> None:
    seen: list[tuple[int, float]] = []
    result = distill(tiny_base, DOC, CDConfig(steps=3), progress=lambda s, loss: seen.append((s, loss)))
    assert seen == list(enumerate(result.losses, start=1))


def test_long_document_is_truncated_with_a_note(tiny_base) -> None:
    result = distill(tiny_base, DOC * 12, CDConfig(steps=1, max_doc_tokens=64))
    assert result.doc_tokens == 64
    assert result.notes and "truncated to its first 64" in result.notes[0]


def test_document_without_words_is_refused(tiny_base) -> None:
    with pytest.raises(CDError, match="nothing to distil"):
        distill(tiny_base, "Hello there.", FAST)


@pytest.mark.slow
def test_smollm2_distillation_lowers_kl_and_exports_to_peft(
    smollm2_base, smollm2_dir, tmp_path: Path
) -> None:
    start = time.perf_counter()
    result = distill(smollm2_base, DOC, CDConfig(steps=10))
    print(f"CD on SmolLM2, 10 steps: {time.perf_counter() - start:.1f} s")
    assert result.final_loss < 0.5 * result.losses[0]
    save_adapter(result.weights, tmp_path / "a", "HuggingFaceTB/SmolLM2-135M-Instruct", {})
    ids = torch.tensor([chat_ids(smollm2_base.tokenizer, "Who was the chief engineer?")[0]])
    with torch.no_grad(), applied(smollm2_base.model, result.weights):
        ours = smollm2_base.model(input_ids=ids).logits
    fresh = AutoModelForCausalLM.from_pretrained(smollm2_dir, local_files_only=True).eval()
    peft = PeftModel.from_pretrained(fresh, tmp_path / "a").eval()
    with torch.no_grad():
        theirs = peft(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-3, rtol=0)
