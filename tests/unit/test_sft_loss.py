"""SFT's learned-positions loss equals the model's own cross-entropy over the same labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentstream.trainers.sft import _learned_positions_trainer


def test_learned_positions_loss_is_the_models_loss(tiny_model: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    input_ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2], [1, 50, 51, 52, 53, 2, 0, 0]])
    attention_mask = (input_ids != 0).long()
    labels = input_ids.clone()
    labels[:, :4] = -100  # the prompt: not learned
    labels[attention_mask == 0] = -100  # padding
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    ours = _learned_positions_trainer(object)().compute_loss(model, dict(inputs))
    reference = model(**inputs).loss
    assert torch.allclose(ours, reference, atol=1e-5), (float(ours), float(reference))
    ours.backward()  # and it trains: gradients reach the weights
    assert model.get_input_embeddings().weight.grad is not None
