"""Config parsing and strict loading: a wrong model directory fails at start-up, naming file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cosyvoice.model.loader import find_config, load_model
from cosyvoice.model.weights import CheckpointError, fold_weight_norm
from cosyvoice.model.yaml import ConfigError, Tagged, load_config


def test_yaml_tags_refs_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "seed: !apply:torch.manual_seed [1986]\n"
        "chunk_size: 25\nratio: 2\nroot: ''\n"
        "flow: !new:pkg.Flow\n  size: !ref <chunk_size> * <ratio>\n  path: !ref <root>\n  sub: !new:pkg.Sub {a: 1}\n"
        "fn: !name:pkg.fn\n  top_p: 0.8\n",
        encoding="utf-8",
    )
    config = load_config(path, overrides={"root": "/models/x"})
    flow = config["flow"]
    assert isinstance(flow, Tagged) and flow.kind == "new" and flow.class_name == "Flow"
    assert flow.kwargs["size"] == 50
    assert flow.kwargs["path"] == "/models/x"
    assert flow.kwargs["sub"].kwargs == {"a": 1}
    assert config["fn"].kind == "name" and config["fn"].kwargs == {"top_p": 0.8}
    assert config["seed"].kind == "apply" and config["seed"].args == [1986]


def test_yaml_missing_ref(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: !ref <nope>\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="nope"):
        load_config(path)


def test_newest_yaml_wins_over_a_stale_one(model_dirs, tmp_path):
    target = tmp_path / "v2"
    shutil.copytree(model_dirs[2], target)
    shutil.copy(model_dirs[1] / "cosyvoice.yaml", target / "cosyvoice.yaml")
    assert find_config(target)[0].name == "cosyvoice2.yaml"


@pytest.mark.parametrize("generation", [1, 2, 3])
def test_official_key_forms_load(model_dirs, generation):
    hift_keys = torch.load(model_dirs[generation] / "hift.pt", weights_only=True)
    form = ".weight_g" if generation < 3 else ".parametrizations.weight.original0"
    assert any(k.endswith(form) for k in hift_keys)
    if generation > 1:
        assert "llm.model.lm_head.weight" in torch.load(model_dirs[generation] / "llm.pt", weights_only=True)
    assert load_model(model_dirs[generation]).generation == generation


def test_weight_norm_fold():
    v = torch.randn(4, 3, 5)
    g = torch.rand(4, 1, 1) + 0.5
    for g_key, v_key in (("c.weight_g", "c.weight_v"), ("c.parametrizations.weight.original0", "c.parametrizations.weight.original1")):
        folded = fold_weight_norm({g_key: g, v_key: v}, Path("x.pt"))["c.weight"]
        assert torch.allclose(folded.norm(dim=(1, 2)), g.view(-1), atol=1e-6)


def _broken(model_dirs, tmp_path, generation, file, edit):
    target = tmp_path / f"broken_v{generation}"
    shutil.copytree(model_dirs[generation], target)
    state = torch.load(target / file, weights_only=True)
    edit(state)
    torch.save(state, target / file)
    return target


def test_missing_key_named(model_dirs, tmp_path):
    target = _broken(model_dirs, tmp_path, 2, "flow.pt", lambda s: s.pop("encoder_proj.bias"))
    with pytest.raises(CheckpointError, match=r"flow\.pt: missing key 'encoder_proj\.bias'"):
        load_model(target)


def test_mismatched_shape_named(model_dirs, tmp_path):
    def edit(state):
        state["speech_embedding.weight"] = state["speech_embedding.weight"][:-1]

    target = _broken(model_dirs, tmp_path, 2, "llm.pt", edit)
    with pytest.raises(CheckpointError, match=r"llm\.pt: key 'speech_embedding\.weight' has shape"):
        load_model(target)


def test_unexpected_key_named(model_dirs, tmp_path):
    target = _broken(model_dirs, tmp_path, 1, "hift.pt", lambda s: s.update({"extra.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match=r"hift\.pt: unexpected key 'extra\.weight'"):
        load_model(target)


def test_unused_lm_head_is_checked(model_dirs, tmp_path):
    target = _broken(model_dirs, tmp_path, 2, "llm.pt", lambda s: s.pop("llm.model.lm_head.weight"))
    with pytest.raises(CheckpointError, match="lm_head"):
        load_model(target)


@pytest.mark.parametrize("name", ["flow.pt", "campplus.onnx", "speech_tokenizer_v2.onnx", "CosyVoice-BlankEN/config.json"])
def test_missing_file_named(model_dirs, tmp_path, name):
    target = tmp_path / "v2"
    shutil.copytree(model_dirs[2], target)
    (target / name).unlink()
    with pytest.raises((CheckpointError, FileNotFoundError, OSError), match=Path(name).name.replace(".", r"\.")):
        load_model(target)


def test_tokenizers(models):
    qwen = models[2].tokenizer
    end = qwen.token_id("<|endofprompt|>")
    assert end == qwen.vocab_size - 17  # the first CosyVoice special, right after BlankEN's three
    assert qwen.encode("hi<|endofprompt|>")[-1] == end
    whisper = models[1].tokenizer
    assert whisper.vocab_size < models[1].llm.text_embedding.num_embeddings
    assert whisper.encode("<|en|>hello")[0] == whisper.token_id("<|en|>")


def test_text_normalization_switch():
    from cosyvoice.model.frontend import TextNormalizer

    off = TextNormalizer(enabled=False)
    assert not off.active and off("It costs $5.") == "It costs $5."
    on = TextNormalizer(enabled=True)  # wetext when installed, else a pass-through
    assert on("<|en|>keep $5 as written") == "<|en|>keep $5 as written"
    if not on.active:
        assert on("It costs $5.") == "It costs $5."
