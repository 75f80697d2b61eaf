"""Build a tiny random-weight Llama with its own BPE tokenizer, offline.

vLLM needs a real Hugging Face model folder to start; no model hub is reachable from CI, so the
quick start and the integration tests build one here. It is a few MB, loads in seconds on the CPU,
and its latency still depends on prompt length, so prefix caching has a measurable effect.

Example:
    >>> from tuner.demo_model import build_tiny_model  # doctest: +SKIP
    >>> build_tiny_model(Path("studies/models/tiny-llama"))  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

__all__ = ["build_tiny_model"]

# ChatML, so the OpenAI chat endpoint works without a template argument.
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus(limit: int) -> Iterator[str]:
    """Up to ``limit`` lines of text for the tokenizer's BPE merges: the standard library's
    sources, always present."""
    # The standard library is always present and gives an English/code mix for BPE merges.
    pattern = os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py")
    for name in sorted(glob.glob(pattern, recursive=True))[:limit]:
        try:
            yield Path(name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def build_tiny_model(
    out: Path,
    *,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 4096,
    max_positions: int = 8192,
    seed: int = 0,
) -> Path:
    """Write a random-weight Llama and tokenizer to ``out`` (skipped if already complete);
    ``seed`` draws the weights (another seed: the same tokenizer, other answers)."""
    marker = out / "tuner-model.json"
    spec = {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "kv_heads": kv_heads,
        "vocab": vocab,
        "max_positions": max_positions,
        **({"seed": seed} if seed else {}),  # a model built before seeds keeps its marker
    }
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return out
    # Heavy imports stay local: only the demo and the integration tests need them.
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(300), trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=_CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(out))
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)  # type: ignore[no-untyped-call]
    model.save_pretrained(str(out), safe_serialization=True)
    marker.write_text(json.dumps(spec))
    return out
