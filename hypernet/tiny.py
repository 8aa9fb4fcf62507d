"""A tiny randomly initialised Llama with its own offline tokenizer: "any HF causal LM by path" for tests.

The tokenizer is a byte-level BPE trained in well under a second on a built-in English text, with
ChatML special tokens and a ChatML chat template, so every code path that formats chat prompts,
tokenizes documents or exports PEFT adapters runs against it exactly as against a real model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = """\
The river town of Alder Bay was founded in 1821 by fishermen who came from the northern coast. Its harbour
freezes every winter, so the boats are pulled onto the shore in November and launched again in March.
The town council meets on the first Monday of each month in the old stone hall near the market square.
In 1907 a railway line connected the town with the capital, and the journey took nine hours by steam train.
Today the trip takes less than two hours, and many people commute to work in the city every day.
The local school teaches mathematics, history, music and three languages to about four hundred children.
A small museum near the lighthouse shows maps, tools, photographs and letters written by the first settlers.
Engineers built a new bridge across the river in 1998; it is 240 metres long and carries two lanes of traffic.
The annual summer festival brings bands, dancers and food stalls to the harbour for a whole weekend.
Scientists from the university study the birds that nest on the cliffs north of the town each spring.
What is the capital of the country? The capital is a large city with a famous library and a cathedral.
Who wrote the letters? Most of them were written by Mara Quill, a teacher who kept a diary for fifty years.
When was the company founded? The company was founded in 1954 and employs more than 300 people.
Where does she live now? She lives in a small house by the sea with two cats and a garden full of roses.
How many patents does he hold? He holds twelve patents for pumps, valves and water filters.
Complete this sentence from the document: the answer is short, clear and easy to remember.
"""


def make_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Write a 2-layer Llama (hidden 64) and its tokenizer to ``out_dir``; deterministic given ``seed``."""
    out_dir = Path(out_dir)
    tokenizer = make_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        # a wider init than 0.02 makes the random model's predictions depend on context
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_tiny_tokenizer(vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the built-in text, with ChatML special tokens and template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
    )
