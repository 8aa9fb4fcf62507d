"""The T2L hypernetwork on the tiny Llama: shapes, identity start, PEFT export, checkpoints, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from hypernet.adapter import load_adapter, save_adapter
from hypernet.lora import applied
from hypernet.t2l import (
    T2LConfig,
    T2LError,
    T2LHypernet,
    describe_to_lora,
    embed_descriptions,
    load_t2l,
    save_t2l,
)
from hypernet.t2l_tasks import behaviour
from hypernet.t2l_train import T2LTrainConfig, T2LTrainError, example, sft_loss, train_oracle, train_t2l

DESC = "Always answer in all capital letters."


def _net(tiny_base, seed: int = 0) -> T2LHypernet:
    torch.manual_seed(seed)
    return T2LHypernet(T2LConfig.from_base_model(tiny_base.model, latent=32, rank=4))


def test_generated_factors_have_peft_shapes_for_every_layer_and_target(tiny_base) -> None:
    net = _net(tiny_base)
    A, B = net(torch.randn(3, net.cfg.d_embed))
    q, v = tiny_base.model.model.layers[0].self_attn.q_proj, tiny_base.model.model.layers[0].self_attn.v_proj
    assert A["q_proj"].shape == (3, 2, 4, q.in_features) and B["q_proj"].shape == (3, 2, q.out_features, 4)
    assert A["v_proj"].shape == (3, 2, 4, v.in_features) and B["v_proj"].shape == (3, 2, v.out_features, 4)
    w = describe_to_lora(tiny_base, net, DESC)
    assert sorted(w.target_names) == ["q_proj", "v_proj"] and len(w.modules) == 4 and w.rank == 4


def test_untrained_network_is_the_identity_and_trained_one_depends_on_the_description(tiny_base) -> None:
    net = _net(tiny_base)
    ids = torch.tensor([tiny_base.tokenizer("Who wrote the letters?")["input_ids"]])
    with torch.no_grad():
        plain = tiny_base.model(input_ids=ids).logits
        with applied(tiny_base.model, describe_to_lora(tiny_base, net, DESC)):
            adapted = tiny_base.model(input_ids=ids).logits
    assert torch.equal(plain, adapted)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    one, two = describe_to_lora(tiny_base, net, DESC), describe_to_lora(tiny_base, net, "Reply as JSON.")
    path = one.modules[0]
    assert not torch.allclose(one.delta(path), two.delta(path))


def test_exported_adapter_loads_with_peft_and_matches_the_hook(tiny_base, tmp_path: Path) -> None:
    net = _net(tiny_base)
    with torch.no_grad():
        for head in net.heads:
            head.weight.normal_(0, 0.05)
    weights = describe_to_lora(tiny_base, net, DESC)
    save_adapter(weights, tmp_path / "a", "tiny", {"kind": "instruction"})
    assert sorted(load_adapter(tmp_path / "a").modules) == sorted(weights.modules)
    ids = torch.tensor([tiny_base.tokenizer("Where does she live now?")["input_ids"]])
    with torch.no_grad(), applied(tiny_base.model, weights):
        ours = tiny_base.model(input_ids=ids).logits
    peft = PeftModel.from_pretrained(tiny_base.model, tmp_path / "a").eval()
    with torch.no_grad():
        theirs = peft(input_ids=ids).logits
    peft.unload()
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_checkpoint_round_trip_and_wrong_base_is_refused(tiny_base, tmp_path: Path) -> None:
    net = _net(tiny_base)
    save_t2l(net, tmp_path / "ck", training={"steps": 0})
    again = load_t2l(tmp_path / "ck")
    assert all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True)
    )
    assert json.loads((tmp_path / "ck" / "t2l.json").read_text())["training"] == {"steps": 0}
    net.cfg.base_weights_sha256 = "0" * 64
    save_t2l(net, tmp_path / "other")
    with pytest.raises(T2LError, match="trained for base model"):
        load_t2l(tmp_path / "other", base=tiny_base)
    with pytest.raises(T2LError, match="missing"):
        load_t2l(tmp_path / "nowhere")


def test_embeddings_are_pooled_per_text(tiny_base) -> None:
    emb = embed_descriptions(tiny_base, [DESC, "Reply as JSON.", DESC])
    assert emb.shape == (3, tiny_base.model.config.hidden_size)
    torch.testing.assert_close(emb[0], emb[2])  # padding does not change a text's embedding
    with pytest.raises(ValueError, match="empty"):
        embed_descriptions(tiny_base, ["  "])


TINY = {
    "steps": 60,
    "batch_tasks": 4,
    "per_task": 1,
    "lr": 3e-2,
    "latent": 32,
    "rank": 4,
    "warmup": 2,
    "log_every": 10,
    "eval_every": 30,
    "ckpt_every": 10,
    "max_target_tokens": 12,
}


def test_training_reduces_heldout_loss_and_resumes(tiny_base, tmp_path: Path) -> None:
    records: list[dict] = []
    train_t2l(T2LTrainConfig(**TINY | {"stop_at_step": 30}), tiny_base, tmp_path / "run", records.append)
    final = train_t2l(T2LTrainConfig(**TINY), tiny_base, tmp_path / "run", records.append)
    assert [r["step"] for r in records if r["kind"] == "resume"] == [30]
    last = [r for r in records if r["kind"] == "final"][-1]
    assert last["step"] == 60 and last["ce_unseen_desc"] < last["ce_unseen_desc_base"]
    trains = [r["ce"] for r in records if r["kind"] == "train"]
    assert trains[-1] < trains[0]
    summary = json.loads((final / "t2l.json").read_text())["training"]
    assert summary["steps"] == 60 and load_t2l(final).cfg.rank == 4
    with pytest.raises(T2LTrainError, match="differs in"):
        train_t2l(T2LTrainConfig(**TINY | {"lr": 0.5}), tiny_base, tmp_path / "run", records.append)


def test_oracle_lora_lowers_its_behaviours_loss(tiny_base) -> None:
    beh = behaviour("upper")
    batch = [example(tiny_base, beh, item, 0, 12) for item in beh.inputs("heldout")[:6]]
    oracle = train_oracle(tiny_base, beh, steps=15, batch=4, lr=1e-2, rank=4)
    with torch.no_grad():
        assert sft_loss(tiny_base, batch, oracle).item() < sft_loss(tiny_base, batch, None).item()


def test_t2l_generator_kind_builds_from_a_checkpoint_and_names_bad_options(tiny_base, tmp_path: Path) -> None:
    from hypernet.generators import GeneratorError, make_generator

    with pytest.raises(GeneratorError, match="no T2L checkpoint is shipped"):
        make_generator("t2l", tiny_base, {})
    with pytest.raises(GeneratorError, match="unknown option"):
        make_generator("t2l", tiny_base, {"rank": 8})
    net = _net(tiny_base)
    net.cfg.base_weights_sha256 = tiny_base.weights_sha256
    save_t2l(net, tmp_path / "ck")
    gen = make_generator("t2l", tiny_base, {"checkpoint": str(tmp_path / "ck")})
    result = gen.generate("  Answer   in one word. ")
    assert result.weights.rank == 4 and gen.describe()["kind"] == "t2l"
    assert (
        gen.fingerprint()
        == make_generator("t2l", tiny_base, {"checkpoint": str(tmp_path / "ck")}).fingerprint()
    )
    with pytest.raises(ValueError, match="empty"):
        gen.generate("   ")


def test_zscored_embeddings_keep_their_statistics_in_the_checkpoint(tiny_base, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = T2LHypernet(T2LConfig.from_base_model(tiny_base.model, latent=32, rank=4, zscore=True))
    emb = embed_descriptions(tiny_base, [DESC, "Reply as JSON.", "Be brief."])
    net.set_embedding_stats(emb)
    torch.testing.assert_close(net.emb_mean, emb.mean(0))
    save_t2l(net, tmp_path / "z")
    again = load_t2l(tmp_path / "z")
    assert again.cfg.zscore and torch.equal(again.emb_std, net.emb_std)
    assert not hasattr(_net(tiny_base), "emb_mean")  # the default reads a LayerNorm'd embedding


def test_partners_pick_another_behaviours_description() -> None:
    from hypernet.t2l_train import partners

    assert partners([4, 4, 7, 7, 2]) == [7, 7, 2, 2, 4]
    with pytest.raises(T2LTrainError, match="batch_tasks >= 2"):
        partners([3, 3])
    rules = [frozenset(r.split("+")) for r in ("upper", "one_word+upper", "lower", "upper")]
    assert partners([0, 1, 2], rules) == [2, 2, 0]  # upper's next, one_word+upper, shares a rule: skipped
    assert partners([0, 3], rules) == [3, 0]  # no behaviour without a shared rule: the next one


def test_margin_and_preservation_terms_train_and_warm_start(tiny_base, tmp_path: Path) -> None:
    extra = {"w_margin": 1.0, "margin": 0.5, "w_preserve": 1.0, "preserve_skip": 0, "preserve_tokens": 16}
    extra |= {"margin_disjoint": True, "extra_combos": 8}
    cfg = T2LTrainConfig(**TINY | extra | {"steps": 20, "eval_every": 0, "log_every": 1})
    records: list[dict] = []
    final = train_t2l(cfg, tiny_base, tmp_path / "run", records.append)
    trains = [r for r in records if r["kind"] == "train"]
    assert {"ce_other", "spec", "margin", "kl_general"} <= trains[0].keys()
    assert all(
        math.isfinite(r[k]) for r in trains for k in ("ce", "ce_other", "spec", "margin", "kl_general")
    )
    # step 1's adapter is the zero-initialised one (no change on general text); after it the preservation
    # term has a drift to measure. (Whether CE falls is the plain SFT test's claim: on this random tiny
    # model the preservation term holds CE flat over 20 steps, and a single batch's CE is noise.)
    assert trains[0]["kl_general"] == 0 and all(r["kl_general"] > 0 for r in trains[1:])
    warm = T2LTrainConfig(**TINY | {"steps": 1, "eval_every": 0, "init_from": str(final)})
    again = train_t2l(warm, tiny_base, tmp_path / "warm", records.append)
    assert load_t2l(again).cfg.rank == 4
    with pytest.raises(T2LTrainError, match="cannot warm-start"):
        bad = T2LTrainConfig(**TINY | {"rank": 2, "steps": 1, "init_from": str(final)})
        train_t2l(bad, tiny_base, tmp_path / "bad", records.append)
    with pytest.raises(ValueError, match="w_margin"):
        T2LTrainConfig(w_margin=-1.0)


def test_extra_combos_join_the_training_behaviours_with_their_owners(tiny_base) -> None:
    from hypernet.t2l_tasks import SPLITS
    from hypernet.t2l_train import build_data

    data = build_data(tiny_base, -1, None, extra_combos=5)
    names = [b.name for b, _ in data.train]
    assert len(names) == len(SPLITS["train"]) + 5 and all("+" in n for n in names[-5:])
    assert len(data.owner) == len(data.texts) == data.emb.shape[0]
    combo, first = data.train[-1][0], data.train[-1][1][0]
    assert data.rule_sets[first] == {r.name for r in combo.rules} and len(data.rule_sets[first]) == 2
    for beh, idx in data.train:
        assert all(data.owner[i] is beh for i in idx) and set(beh.descriptions("train")) == {
            data.texts[i] for i in idx
        }
