"""Before/after for a Text-to-LoRA adapter: greedy answers of the base model without and with it (PEFT).

    python examples/t2l_before_after.py ADAPTER_DIR "question one" "question two" ...

Loads the base model from the instill model cache (``.instill/models`` or ``$INSTILL_MODEL_CACHE``),
offline, and the adapter folder written by ``instill text-to-lora`` with ``peft.PeftModel``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402

from hypernet.base_model import DEFAULT_BASE_MODEL, chat_ids, load_base_model  # noqa: E402


def answer(model, tok, question: str) -> str:
    ids = torch.tensor([chat_ids(tok, question)[0]])
    out = model.generate(input_ids=ids, max_new_tokens=40, do_sample=False, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    torch.set_num_threads(1)
    adapter, questions = Path(sys.argv[1]), sys.argv[2:]
    cache = Path(os.environ.get("INSTILL_MODEL_CACHE", ".instill/models"))
    base = load_base_model(DEFAULT_BASE_MODEL, cache, device="cpu")
    before = [answer(base.model, base.tokenizer, q) for q in questions]
    peft = PeftModel.from_pretrained(base.model, adapter).eval()
    after = [answer(peft, base.tokenizer, q) for q in questions]
    for q, b, a in zip(questions, before, after, strict=True):
        print(f"Q: {q}\n  base:         {b}\n  with adapter: {a}")


if __name__ == "__main__":
    main()
