"""A tiny causal LM with a ChatML tokenizer, built offline in well under a second, standing in for the policy."""

from __future__ import annotations

from pathlib import Path

# Minimal ChatML: the same shape as the templates of real instruct models (Qwen2, SmolLM2).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

_WORDS = [
    "the",
    "a",
    "an",
    "essay",
    "is",
    "was",
    "be",
    "write",
    "about",
    "of",
    "and",
    "to",
    "in",
    "for",
    "on",
    "with",
    "that",
    "this",
    "it",
    "as",
    "by",
    "from",
    "at",
    "or",
    "are",
    "poem",
    "story",
    "short",
    "long",
    "good",
    "bad",
    "clear",
    "argument",
    "evidence",
    "reader",
    "score",
    "rubric",
    "judge",
    "policy",
    "model",
    "learn",
    "reward",
    "user",
    "assistant",
    "system",
    "hello",
    "world",
    "answer",
    "question",
    "why",
    "how",
    "what",
    "when",
    "where",
    "which",
    "who",
    "cat",
    "dog",
    "river",
    "city",
]


def _corpus() -> list[str]:
    """Deterministic training text: enough variety for a few hundred BPE merges."""
    lines = []
    for i, word in enumerate(_WORDS):
        following = _WORDS[(i * 7 + 3) % len(_WORDS)]
        lines.append(f"{word} {following} {word.capitalize()}, {i} times: {following}!")
        lines.append(
            f"<|im_start|>user\nWrite about {word}.<|im_end|>\n<|im_start|>assistant\n{following}<|im_end|>"
        )
    return lines


def build_tiny_tokenizer():  # -> PreTrainedTokenizerFast (imported lazily)
    """A ByteLevel BPE tokenizer trained in-process, wrapped as a fast HF tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Save a ~100K-parameter Qwen2 causal LM and its tokenizer to `directory`; returns the directory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
