"""A tiny causal LM built offline: own byte-level BPE tokenizer and a 2-layer Llama (about 100k parameters).

Trainers, the model server and their tests need a real Hugging Face checkpoint that loads with
``AutoModelForCausalLM``/``AutoTokenizer``, trains a step in milliseconds on CPU and is never downloaded.
``build_tiny_model(out_dir)`` writes one into ``out_dir`` in about two seconds.
"""

from __future__ import annotations

import random
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]

# `{% generation %}` marks the assistant's tokens, so trl's assistant_only_loss can mask everything else.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

QUEUES = ("shipping", "billing", "returns", "technical")
TICKETS = {
    "shipping": ["my parcel is late", "where is my order", "the box never arrived", "tracking shows nothing"],
    "billing": ["I was charged twice", "refund the fee", "my invoice is wrong", "card declined at checkout"],
    "returns": ["I want to return shoes", "the size is wrong", "send back the lamp", "exchange this jacket"],
    "technical": ["the app crashes", "cannot log in", "password reset fails", "page shows an error"],
}


def synthetic_corpus(seed: int = 0) -> list[str]:
    """Arithmetic Q/A and ticket-routing lines: the shapes the tests train on."""
    rng = random.Random(seed)
    lines: list[str] = []
    for a in range(10):
        for b in range(10):
            lines.append(f"Q: What is {a} + {b}? A: {a + b}")
    for queue, texts in TICKETS.items():
        for text in texts:
            lines.append(f"Ticket: {text}. Call: create_ticket(queue='{queue}')")
    words = "the agent reads a task and calls a tool then the reward says how well it did".split()
    for _ in range(60):
        lines.append(" ".join(rng.choice(words) for _ in range(8)) + ".")
    return lines


def build_tiny_model(out_dir: Path, arch: str = "llama") -> Path:
    """Train a tokenizer, build a 2-layer ``arch`` ("llama" or "qwen2") model and save both to ``out_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        synthetic_corpus(),
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
        model_max_length=256,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    shape = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        config = LlamaConfig(**shape)
    elif arch == "qwen2":
        from transformers import Qwen2Config

        config = Qwen2Config(**shape)
    else:
        raise ValueError(f"unknown arch {arch!r}: use 'llama' or 'qwen2'")

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    import sys

    print(build_tiny_model(Path(sys.argv[1]), *(sys.argv[2:3] or [])))
