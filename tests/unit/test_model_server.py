"""The model server's pieces without Kafka: naming, loading checkpoints, generation; the vLLM command
line; online GRPO's reward adapters; the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from agentstream.cli import app
from agentstream.schemas import ResourceVersion
from agentstream.serving.model_server import (
    CheckpointError,
    ModelRef,
    Sampling,
    checkpoint_path,
    create_app,
    generate,
    load_checkpoint,
    parse_model,
    served_name,
    server_token,
    token_file,
)
from agentstream.serving.vllm import VLLMServer
from agentstream.settings import Settings
from agentstream.trainers.grpo import load_callable, reward_function

PROMPT = "Q: What is 2 + 3? A:"


def version(
    uri: str | None, number: int = 1, kind: str = "model_checkpoint", **config: str
) -> ResourceVersion:
    return ResourceVersion(
        resource_name="tiny",
        version=number,
        kind=kind,
        uri=uri,
        config=config,
        created_at=0,
        template="Q: {{q}}" if kind == "prompt_template" else None,
    )


def test_model_names() -> None:
    assert parse_model("tiny") == ModelRef("tiny", "production")
    assert parse_model("tiny", default_label="stable") == ModelRef("tiny", "stable")
    assert parse_model("tiny:v3") == parse_model("tiny:3") == ModelRef("tiny", 3)
    assert parse_model("support-llm.v2@candidate") == ModelRef("support-llm.v2", "candidate")
    for bad in ("", "tiny:x", "tiny@", "a b", "tiny:v1@production"):
        with pytest.raises(ValueError):
            parse_model(bad)
    assert served_name(version("/x", 7)) == "tiny:v7"


def test_only_local_checkpoint_folders_are_servable(tmp_path: Path) -> None:
    assert checkpoint_path(version(str(tmp_path))) == tmp_path
    assert checkpoint_path(version(f"file://{tmp_path}")) == tmp_path
    for unservable in (
        version("http://127.0.0.1:8080/v1", kind="llm"),
        version(str(tmp_path / "missing")),
        version(None, kind="prompt_template"),
    ):
        with pytest.raises(CheckpointError, match="no local checkpoint folder"):
            checkpoint_path(unservable)


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> Any:
    return load_checkpoint(version(str(tiny_model)))


def test_generation_reports_each_sampled_token_and_its_logprob(loaded: Any) -> None:
    import torch

    prompt = loaded.tokenizer(PROMPT).input_ids
    greedy = Sampling(max_tokens=6, temperature=0.0, top_p=1.0, n=1, stop=[], seed=None, top_logprobs=3)
    [first] = generate(loaded, prompt, greedy)
    [again] = generate(loaded, prompt, greedy)
    assert (
        first.token_ids == again.token_ids and len(first.token_ids) == 6 and first.finish_reason == "length"
    )
    assert first.text == loaded.tokenizer.decode(first.token_ids, skip_special_tokens=True)
    # the reported logprobs are the model's own: score prompt + completion in one forward pass
    with torch.no_grad():
        logits = loaded.model(torch.tensor([prompt + first.token_ids])).logits[0].log_softmax(-1)
    expected = [float(logits[len(prompt) - 1 + i, t]) for i, t in enumerate(first.token_ids)]
    assert first.logprobs == pytest.approx(expected, abs=1e-4)
    # greedy: each sampled token is the top one
    assert all(
        top[0][0] == token and len(top) == 3 for top, token in zip(first.top_logprobs, first.token_ids)
    )

    twice = generate(loaded, prompt, Sampling(**{**greedy.__dict__, "n": 2}))
    assert [c.token_ids for c in twice] == [first.token_ids] * 2

    sampled = Sampling(max_tokens=5, temperature=1.0, top_p=1.0, n=3, stop=[], seed=7, top_logprobs=None)
    choices = generate(loaded, prompt, sampled)
    assert len(choices) == 3 and all(c.top_logprobs == [] for c in choices)
    assert [c.token_ids for c in generate(loaded, prompt, sampled)] == [
        c.token_ids for c in choices
    ]  # seeded


def test_stop_strings_cut_the_text_but_keep_the_sampled_tokens(loaded: Any) -> None:
    prompt = loaded.tokenizer(PROMPT).input_ids
    free = Sampling(max_tokens=12, temperature=1.0, top_p=1.0, n=1, stop=[], seed=3, top_logprobs=None)
    [unstopped] = generate(loaded, prompt, free)
    stop = next(ch for ch in unstopped.text[1:] if not ch.isspace())  # a character it will produce
    [stopped] = generate(loaded, prompt, Sampling(**{**free.__dict__, "stop": [stop]}))
    assert stopped.finish_reason == "stop" and stop not in stopped.text
    assert unstopped.text.startswith(stopped.text)
    assert stop in loaded.tokenizer.decode(stopped.token_ids)  # the tokens that made the stop string
    assert unstopped.token_ids[: len(stopped.token_ids)] == stopped.token_ids
    assert len(stopped.logprobs) == len(stopped.token_ids)
    # the criteria is made once per model and stop strings (making it scans the whole vocabulary)
    made = loaded.stop_criteria((stop,))
    [again] = generate(loaded, prompt, Sampling(**{**free.__dict__, "stop": [stop]}))
    assert again.token_ids == stopped.token_ids and loaded.stop_criteria((stop,)) is made


def test_an_adapter_version_is_served_merged_into_its_base(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    adapter.save_pretrained(tmp_path / "adapter")
    served = load_checkpoint(version(str(tmp_path / "adapter"), 2, base_model=str(tiny_model)))
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "adapter"
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = torch.tensor([served.tokenizer(PROMPT).input_ids])
    with torch.no_grad():
        merged, unmerged, plain = served.model(ids).logits, reference(ids).logits, base(ids).logits
    assert torch.allclose(merged, unmerged, atol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-3)
    assert served.name == "tiny:v2"

    (tmp_path / "no-base").mkdir()
    (tmp_path / "no-base" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(CheckpointError, match="without a base model"):
        load_checkpoint(version(str(tmp_path / "no-base")))


def test_vllm_command_line(tmp_path: Path) -> None:
    server = VLLMServer(
        tmp_path,
        served_names=["tiny:v1", "tiny"],
        port=8123,
        max_lora_rank=16,
        extra_args=["--dtype", "bfloat16"],
        executable=["/opt/vllm/bin/vllm"],
    )
    assert server.command() == [
        "/opt/vllm/bin/vllm",
        "serve",
        str(tmp_path),
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--gpu-memory-utilization",
        "0.85",
        "--served-model-name",
        "tiny:v1",
        "tiny",
        "--enable-lora",
        "--max-lora-rank",
        "16",
        "--max-loras",
        "4",
        "--dtype",
        "bfloat16",
    ]
    assert server.environment()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert server.base_url == "http://127.0.0.1:8123/v1"


def test_reward_functions_in_both_shapes() -> None:
    def per_completion(completion: str, answer: str, **_: Any) -> float | None:
        return None if completion == "skip" else float(answer in completion)

    batch = reward_function(per_completion)
    completions = ["it is 5", [{"role": "assistant", "content": "5!"}], "no", "skip"]
    rewards = batch(
        prompts=["p"] * 4, completions=completions, answer=["5", "5", "5", "5"], trainer_state=None
    )
    assert rewards == [1.0, 1.0, 0.0, None]

    def trl_style(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [0.5] * len(completions)

    assert reward_function(trl_style) is trl_style
    assert load_callable("json:dumps") is json.dumps
    for bad in ("json", "json:nope", "no_such_module_here:f", "json:__doc__"):
        with pytest.raises(ValueError):
            load_callable(bad)


class ListingService:
    """What the routes ask of a ModelService, for the routes' own behaviour: a listing, no models."""

    requests = 0
    cache = SimpleNamespace(loaded=lambda: [])

    def models(self) -> list[dict[str, Any]]:
        return [{"id": "tiny:v1", "object": "model"}]

    def complete(self, request: Any) -> dict[str, Any]:
        raise AssertionError("an unauthorised request must not reach generation")

    chat = complete


def test_every_route_but_health_needs_the_token(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    token = server_token(settings)
    assert token and token_file(settings) == tmp_path / "secrets" / "model-server.token"
    assert token_file(settings).stat().st_mode & 0o777 == 0o600 and server_token(settings) == token
    client = TestClient(create_app(cast(Any, ListingService()), token))
    assert client.get("/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
        refused = client.get("/v1/models", headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["type"] == "invalid_request_error"
        assert token not in refused.text
        body = {"model": "tiny", "prompt": "x"}
        assert client.post("/v1/completions", json=body, headers=headers).status_code == 401
        assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 401
    listed = client.get("/v1/models", headers={"Authorization": f"bearer {token}"})
    assert listed.status_code == 200 and listed.json()["data"][0]["id"] == "tiny:v1"
    # without require_token nothing is asked, and no token is made
    open_settings = Settings(data_dir=tmp_path / "open", model_server={"require_token": False})
    assert server_token(open_settings) is None and not token_file(open_settings).exists()
    assert TestClient(create_app(cast(Any, ListingService()))).get("/v1/models").status_code == 200


def test_cli_and_settings() -> None:
    runner = CliRunner()
    assert "NAME:vN" in runner.invoke(app, ["serve-model", "--help"]).output
    assert "--reward" in runner.invoke(app, ["train", "grpo-online", "--help"]).output
    settings = Settings(model_server={"port": 0, "cache_size": 3})
    assert settings.model_server.cache_size == 3
    assert Settings(**{}).model_server.default_label == "production"
