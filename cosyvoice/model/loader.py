"""Load an official CosyVoice model directory (v1, v2 or v3) into this package's modules.

The YAML is read as data (:mod:`cosyvoice.model.yaml`); the generation is
told by the classes it names, and only ``llm``, ``flow``, ``hift``,
``feat_extractor`` and ``sample_rate`` are mapped onto our own modules. Every
checkpoint is loaded strictly, so a missing or mismatched file fails at
start-up with a message that names the file and the key.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cosyvoice.model.conformer import Encoder, PreLookaheadLayer, UpsampleEncoder
from cosyvoice.model.dit import DiT
from cosyvoice.model.features import MelConfig
from cosyvoice.model.flow import (
    CausalMaskedDiffWithDiT,
    CausalMaskedDiffWithXvec,
    ConditionalCFM,
    InterpolateRegulator,
    MaskedDiffWithXvec,
    fixed_noise,
)
from cosyvoice.model.frontend import SpeakerEncoder, SpeechTokenizer
from cosyvoice.model.hift import HiFTGenerator
from cosyvoice.model.llm import CosyVoice3LM, Qwen2LM, SpeechLM, TransformerLM
from cosyvoice.model.qwen2 import Qwen2Config
from cosyvoice.model.sampling import SamplingOptions
from cosyvoice.model.tokenizer import (
    QWEN_SPECIALS_V2,
    QWEN_SPECIALS_V3,
    QwenTokenizer,
    TextTokenizer,
    WhisperTokenizer,
    whisper_ranks,
)
from cosyvoice.model.unet import ConditionalDecoder
from cosyvoice.model.weights import CheckpointError, load_strict
from cosyvoice.model.yaml import ConfigError, Tagged, load_config

log = logging.getLogger(__name__)

YAML_FILES = {3: "cosyvoice3.yaml", 2: "cosyvoice2.yaml", 1: "cosyvoice.yaml"}
GENERATIONS = {
    ("TransformerLM", "MaskedDiffWithXvec", "HiFTGenerator"): 1,
    ("Qwen2LM", "CausalMaskedDiffWithXvec", "HiFTGenerator"): 2,
    ("CosyVoice3LM", "CausalMaskedDiffWithDiT", "CausalHiFTGenerator"): 3,
}
BLANK_EN = "CosyVoice-BlankEN"


@dataclass
class Components:
    """Everything one loaded model directory provides; shared read-only by all requests."""

    generation: int
    directory: Path
    config: dict[str, Any]
    llm: SpeechLM
    flow: torch.nn.Module
    hift: HiFTGenerator
    mel: MelConfig
    sample_rate: int
    tokenizer: TextTokenizer
    speech_tokenizer: SpeechTokenizer
    speaker_encoder: SpeakerEncoder
    spk2info: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    noise: Tensor | None = None  # v2/v3: the flow's fixed noise table

    @property
    def name(self) -> str:
        return self.directory.name


def find_config(model_dir: Path) -> tuple[Path, int]:
    """The model's YAML; the newest generation's name wins (a stale cosyvoice.yaml in a v2 dir is ignored)."""
    for generation, name in YAML_FILES.items():
        path = model_dir / name
        if path.is_file():
            return path, generation
    raise ConfigError(f"{model_dir}: no {', '.join(YAML_FILES.values())} found; is this a CosyVoice model directory?")


def detect_generation(config: dict[str, Any], path: Path) -> int:
    names = []
    for key in ("llm", "flow", "hift"):
        node = config.get(key)
        if not isinstance(node, Tagged):
            raise ConfigError(f"{path}: '{key}' must be a !new: entry")
        names.append(node.class_name)
    generation = GENERATIONS.get(tuple(names))
    if generation is None:
        raise ConfigError(f"{path}: unknown combination llm={names[0]}, flow={names[1]}, hift={names[2]}")
    return generation


def _kwargs(node: Any, path: Path, what: str, expected: str | tuple[str, ...]) -> dict[str, Any]:
    expected = (expected,) if isinstance(expected, str) else expected
    if not isinstance(node, Tagged) or node.class_name not in expected:
        found = node.class_name if isinstance(node, Tagged) else type(node).__name__
        raise ConfigError(f"{path}: '{what}' must be one of {', '.join(expected)}, found {found}")
    return node.kwargs


def _encoder(node: Any, path: Path, what: str) -> Encoder:
    kw = _kwargs(node, path, what, ("ConformerEncoder", "TransformerEncoder"))
    conformer = node.class_name == "ConformerEncoder"
    if kw.get("pos_enc_layer_type") != "rel_pos_espnet" or kw.get("selfattention_layer_type") != "rel_selfattn":
        raise ConfigError(f"{path}: '{what}' must use rel_pos_espnet positions and rel_selfattn attention")
    if conformer and (kw.get("use_cnn_module", True) or kw.get("macaron_style", True)):
        raise ConfigError(f"{path}: '{what}': conformer conv modules and macaron feed-forward are not supported")
    return Encoder(
        kw["input_size"],
        kw.get("output_size", 256),
        kw.get("attention_heads", 4),
        kw.get("linear_units", 2048),
        kw.get("num_blocks", 6),
        conformer=conformer,
        legacy_embed=kw.get("input_layer") == "linear_legacy",
        static_chunk_size=kw.get("static_chunk_size", 0),
    )


def _sampling(node: Any) -> SamplingOptions:
    kw = node.kwargs if isinstance(node, Tagged) else {}
    defaults = SamplingOptions()
    return SamplingOptions(
        top_p=kw.get("top_p", defaults.top_p),
        top_k=kw.get("top_k", defaults.top_k),
        win_size=kw.get("win_size", defaults.win_size),
        tau_r=kw.get("tau_r", defaults.tau_r),
    )


def build_llm(config: dict[str, Any], generation: int, path: Path, model_dir: Path) -> SpeechLM:
    node = config["llm"]
    kw = node.kwargs
    if generation == 1:
        return TransformerLM(
            text_encoder_input_size=kw["text_encoder_input_size"],
            llm_input_size=kw["llm_input_size"],
            llm_output_size=kw["llm_output_size"],
            text_token_size=kw["text_token_size"],
            speech_token_size=kw["speech_token_size"],
            spk_embed_dim=kw.get("spk_embed_dim", 192),
            text_encoder=_encoder(kw["text_encoder"], path, "llm.text_encoder"),
            llm=_encoder(kw["llm"], path, "llm.llm"),
            sampling=_sampling(kw.get("sampling")),
        )
    qwen = Qwen2Config.from_file(model_dir / BLANK_EN / "config.json")
    cls = Qwen2LM if generation == 2 else CosyVoice3LM
    return cls(
        llm_input_size=kw["llm_input_size"],
        llm_output_size=kw["llm_output_size"],
        speech_token_size=kw["speech_token_size"],
        config=qwen,
        sampling=_sampling(kw.get("sampling")),
    )


def _cfm(node: Any, path: Path, estimator: torch.nn.Module) -> ConditionalCFM:
    kw = _kwargs(node, path, "flow.decoder", ("ConditionalCFM", "CausalConditionalCFM"))
    params = kw.get("cfm_params")
    if isinstance(params, Tagged):  # !new:omegaconf.DictConfig {content: {...}}
        params = params.kwargs.get("content", params.kwargs)
    params = params or {}
    if params.get("solver", "euler") != "euler" or params.get("t_scheduler", "cosine") != "cosine":
        raise ConfigError(f"{path}: only the euler solver with the cosine schedule is supported")
    return ConditionalCFM(estimator, cfg_rate=float(params.get("inference_cfg_rate", 0.7)))


def build_flow(config: dict[str, Any], generation: int, path: Path) -> torch.nn.Module:
    kw = config["flow"].kwargs
    decoder = kw["decoder"]
    est = decoder.kwargs["estimator"]
    if generation in (1, 2):
        ekw = _kwargs(est, path, "flow.decoder.estimator", ("ConditionalDecoder", "CausalConditionalDecoder"))
        estimator = ConditionalDecoder(
            ekw["in_channels"],
            ekw["out_channels"],
            list(ekw.get("channels", (256, 256))),
            attention_head_dim=ekw.get("attention_head_dim", 64),
            n_blocks=ekw.get("n_blocks", 1),
            num_mid_blocks=ekw.get("num_mid_blocks", 2),
            num_heads=ekw.get("num_heads", 4),
            causal=generation == 2,
            static_chunk_size=ekw.get("static_chunk_size", 50) if generation == 2 else 0,
        )
    else:
        ekw = _kwargs(est, path, "flow.decoder.estimator", "DiT")
        estimator = DiT(
            dim=ekw["dim"],
            depth=ekw["depth"],
            heads=ekw["heads"],
            dim_head=ekw.get("dim_head", 64),
            ff_mult=ekw.get("ff_mult", 2),
            mel_dim=ekw.get("mel_dim", 80),
            mu_dim=ekw.get("mu_dim", 80),
            spk_dim=ekw.get("spk_dim", 80),
            out_channels=ekw.get("out_channels", 80),
            static_chunk_size=ekw.get("static_chunk_size", 50),
        )
    cfm = _cfm(decoder, path, estimator)
    common = dict(spk_embed_dim=kw.get("spk_embed_dim", 192), vocab_size=kw["vocab_size"])
    if generation == 1:
        rkw = _kwargs(kw["length_regulator"], path, "flow.length_regulator", "InterpolateRegulator")
        return MaskedDiffWithXvec(
            input_size=kw["input_size"],
            output_size=kw.get("output_size", 80),
            input_frame_rate=kw.get("input_frame_rate", 50),
            encoder=_encoder(kw["encoder"], path, "flow.encoder"),
            length_regulator=InterpolateRegulator(rkw["channels"], len(rkw.get("sampling_ratios", (1, 1, 1, 1)))),
            decoder=cfm,
            **common,
        )
    if generation == 2:
        ukw = _kwargs(kw["encoder"], path, "flow.encoder", "UpsampleConformerEncoder")
        encoder = UpsampleEncoder(
            ukw.get("output_size", 512),
            ukw.get("attention_heads", 8),
            ukw.get("linear_units", 2048),
            ukw.get("num_blocks", 6),
            static_chunk_size=ukw.get("static_chunk_size", 25),
        )
        return CausalMaskedDiffWithXvec(
            input_size=kw["input_size"],
            output_size=kw.get("output_size", 80),
            token_mel_ratio=kw.get("token_mel_ratio", 2),
            encoder=encoder,
            decoder=cfm,
            **common,
        )
    pkw = _kwargs(kw["pre_lookahead_layer"], path, "flow.pre_lookahead_layer", "PreLookaheadLayer")
    return CausalMaskedDiffWithDiT(
        output_size=kw.get("output_size", 80),
        token_mel_ratio=kw.get("token_mel_ratio", 2),
        pre_lookahead_layer=PreLookaheadLayer(pkw["in_channels"], pkw["channels"], pkw.get("pre_lookahead_len", 3)),
        decoder=cfm,
        **common,
    )


def build_hift(config: dict[str, Any], generation: int, path: Path) -> HiFTGenerator:
    kw = dict(config["hift"].kwargs)
    f0 = kw.pop("f0_predictor", None)
    f0_kw = _kwargs(f0, path, "hift.f0_predictor", ("ConvRNNF0Predictor", "CausalConvRNNF0Predictor"))
    allowed = set(inspect.signature(HiFTGenerator).parameters) - {"f0_channels", "causal"}
    unknown = sorted(set(kw) - allowed)
    if unknown:  # inference does not depend on them; the strict weight load still checks every shape
        log.warning("%s: hift: ignoring arguments %s", path, ", ".join(unknown))
    known = {k: v for k, v in kw.items() if k in allowed}
    return HiFTGenerator(**known, f0_channels=f0_kw.get("cond_channels", 512), causal=generation == 3)


def build_mel(config: dict[str, Any], path: Path) -> MelConfig:
    node = config.get("feat_extractor")
    kw = _kwargs(node, path, "feat_extractor", "mel_spectrogram")
    fields = {k: kw[k] for k in MelConfig.__dataclass_fields__ if k in kw}
    return MelConfig(**fields)


def load_spk2info(path: Path) -> dict[str, dict[str, Tensor]]:
    if not path.is_file():
        return {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot be read: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of speakers")
    return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}


def load_model(model_dir: str | Path, device: str = "cpu", *, onnx_threads: int = 1) -> Components:
    """Build and load everything in ``model_dir``; raise naming the file (and key) that is wrong."""
    directory = Path(model_dir).expanduser().resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: model directory not found")
    path, _ = find_config(directory)
    config = load_config(path, overrides={"qwen_pretrain_path": str(directory / BLANK_EN)})
    generation = detect_generation(config, path)
    log.info("loading CosyVoice v%d model from %s", generation, directory)

    llm = build_llm(config, generation, path, directory)
    flow = build_flow(config, generation, path)
    hift = build_hift(config, generation, path)
    unused = {}
    if generation > 1:
        decoder = llm.llm.decoder
        unused = {"llm.model.lm_head.weight": tuple(decoder.embed_tokens.weight.shape)}
    load_strict(llm, directory / "llm.pt", unused=unused)
    load_strict(flow, directory / "flow.pt")
    load_strict(hift, directory / "hift.pt", strip="generator.")

    if generation == 1:
        tokenizer: TextTokenizer = WhisperTokenizer(whisper_ranks(directory))
    else:
        specials = QWEN_SPECIALS_V2 if generation == 2 else QWEN_SPECIALS_V3
        tokenizer = QwenTokenizer(directory / BLANK_EN, specials)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
    speech_tokenizer = SpeechTokenizer(
        directory / f"speech_tokenizer_v{generation}.onnx", threads=onnx_threads, providers=providers
    )
    speaker_encoder = SpeakerEncoder(directory / "campplus.onnx", threads=onnx_threads)

    for module in (llm, flow, hift):
        module.to(device).eval()
    return Components(
        generation=generation,
        directory=directory,
        config=config,
        llm=llm,
        flow=flow,
        hift=hift,
        mel=build_mel(config, path),
        sample_rate=int(config.get("sample_rate", hift.sampling_rate)),
        tokenizer=tokenizer,
        speech_tokenizer=speech_tokenizer,
        speaker_encoder=speaker_encoder,
        spk2info=load_spk2info(directory / "spk2info.pt"),
        noise=fixed_noise().to(device) if generation > 1 else None,
    )
