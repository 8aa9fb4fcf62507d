"""The embedding router's vectors: the decoder's last hidden state, mean-pooled, equal to the causal LM's own
``hidden_states[-1]`` (the router skips the vocabulary projection)."""

from __future__ import annotations

import numpy as np


def test_embeddings_equal_the_causal_lms_last_hidden_state(tiny_base):
    import torch

    from tasks.route import EmbeddingRouter, rank

    base = tiny_base
    texts = ["The Alpha station opened in 1987.", "Gamma tea is grown on the Sorrel hills at 900 metres."]
    router = EmbeddingRouter(texts, base)
    expected = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([base.tokenizer(text, add_special_tokens=False)["input_ids"]])
            hidden = base.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            expected.append(torch.nn.functional.normalize(hidden.mean(0), dim=-1).numpy())
    np.testing.assert_allclose(router.matrix, np.stack(expected), atol=1e-5)
    assert [i for i, _ in rank(router, texts[1], 2)][0] == 1
