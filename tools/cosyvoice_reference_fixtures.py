"""Produce the parity fixtures in tests/fixtures/cosyvoice/ from the reference implementation.

The reference is the upstream v1/v2 code as packaged on PyPI
(``cosyvoice-minicpmo``). It runs only in an isolated virtualenv outside the
repository's packages (``.refvenv/`` in the checkout, which git ignores) and is
never imported by the gateway; tools/cosyvoice_reference_venv.sh makes it. This
script runs *in that venv*:

    .refvenv/bin/python tools/cosyvoice_reference_fixtures.py

It generates the tiny v1 and v2 model directories with this repository's
generator (run by the repository's own Python), loads their YAML with
hyperpyyaml into the upstream classes, loads our .pt files strictly into them
(so the key layout is checked too) and records, per stage, inputs and
outputs: teacher-forced/greedy LLM log-probabilities, flow mel for fixed
noise, HiFT waveforms for given random draws, and the three feature
extractors. Large inputs are rounded to float16 so both sides see exactly the
same values. Upstream's package is also called ``cosyvoice``: this script never
imports the gateway's, and must be run as a file (its folder, not the
repository root, heads ``sys.path``).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cosyvoice_reference_fixtures_check import fingerprint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "cosyvoice"
SEED = 1234


def fp16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def load_reference(model_dir: Path, generation: int):
    from hyperpyyaml import load_hyperpyyaml

    name = "cosyvoice.yaml" if generation == 1 else "cosyvoice2.yaml"
    overrides = {} if generation == 1 else {"qwen_pretrain_path": str(model_dir / "CosyVoice-BlankEN")}
    with open(model_dir / name, encoding="utf-8") as f:
        config = load_hyperpyyaml(f, overrides=overrides)
    for key in ("llm", "flow", "hift"):
        state = torch.load(model_dir / f"{key}.pt", map_location="cpu", weights_only=True)
        config[key].load_state_dict(state, strict=True)
        config[key].eval()
    return config


class Patched:
    """Replace torch.rand / torch.randn_like for the duration of a reference call."""

    def __init__(self, rand=None, randn_like=None) -> None:
        self.rand, self.randn_like = rand, randn_like

    def __enter__(self):
        self.saved = torch.rand, torch.randn_like
        if self.rand:
            torch.rand = self.rand
        if self.randn_like:
            torch.randn_like = self.randn_like
        return self

    def __exit__(self, *exc):
        torch.rand, torch.randn_like = self.saved


def llm_case(llm, generation: int, gen: torch.Generator, text_vocab: int, with_prompt: bool) -> dict:
    """Greedy decoding on the reference's incremental path, recording every step's log-probs."""
    text = torch.randint(0, text_vocab, (1, 12), generator=gen)
    prompt_text = torch.randint(0, text_vocab, (1, 6 if with_prompt else 0), generator=gen)
    speech_vocab = llm.speech_token_size
    prompt_speech = torch.randint(0, speech_vocab, (1, 9 if with_prompt else 0), generator=gen)
    embedding = fp16(torch.randn(1, 192, generator=gen)) if generation == 1 else torch.zeros(1, 0)
    steps = 30
    rows, tokens = [], []

    def sampling_ids(weighted_scores, decoded_tokens, sampling, ignore_eos=True):
        rows.append(weighted_scores.detach().clone().view(-1))
        if len(rows) > steps:
            return torch.tensor(speech_vocab)  # eos: end the run
        scores = weighted_scores.detach().clone().view(-1)
        if ignore_eos:
            scores[speech_vocab:] = -float("inf")
        return scores.argmax()

    llm.sampling_ids = sampling_ids
    with torch.no_grad():
        for token in llm.inference(
            text=text, text_len=torch.tensor([text.size(1)]), prompt_text=prompt_text,
            prompt_text_len=torch.tensor([prompt_text.size(1)]), prompt_speech_token=prompt_speech,
            prompt_speech_token_len=torch.tensor([prompt_speech.size(1)]), embedding=embedding,
        ):
            tokens.append(int(token))
    return {
        "text": text[0], "prompt_text": prompt_text[0], "prompt_speech": prompt_speech[0], "embedding": embedding,
        "tokens": torch.tensor(tokens), "logp": torch.stack(rows[: len(tokens) + 1]),
    }


def flow_cases(flow, generation: int, gen: torch.Generator) -> dict:
    vocab = flow.vocab_size if hasattr(flow, "vocab_size") else flow.input_embedding.num_embeddings
    prompt_tokens = torch.randint(0, vocab, (1, 20 if generation == 2 else 25), generator=gen)
    tokens = torch.randint(0, vocab, (1, 53), generator=gen)
    if generation == 1:
        prompt_frames = int(prompt_tokens.size(1) / 50 * 22050 / 256)
    else:
        prompt_frames = prompt_tokens.size(1) * 2
    prompt_feat = fp16(torch.randn(1, prompt_frames, 80, generator=gen) * 2 - 6)
    embedding = fp16(torch.randn(1, 192, generator=gen))
    case = {"tokens": tokens[0], "prompt_tokens": prompt_tokens[0], "prompt_feat": prompt_feat, "embedding": embedding}
    args = dict(
        token=tokens, token_len=torch.tensor([tokens.size(1)]), prompt_token=prompt_tokens,
        prompt_token_len=torch.tensor([prompt_tokens.size(1)]), prompt_feat=prompt_feat,
        prompt_feat_len=torch.tensor([prompt_frames]), embedding=embedding,
    )
    with torch.no_grad():
        if generation == 1:
            frames = prompt_frames + int(tokens.size(1) / 50 * 22050 / 256)
            noise = fp16(torch.randn(1, 80, frames, generator=gen))
            with Patched(randn_like=lambda x, *a, **k: noise.clone()):
                mel, _ = flow.inference(**args, flow_cache=torch.zeros(1, 80, 0, 2))
            case.update(noise=noise, mel=mel)
        else:
            for name, streaming, finalize in (("full", False, True), ("stream", True, False), ("stream_final", True, True)):
                mel, _ = flow.inference(**args, streaming=streaming, finalize=finalize)
                case[f"mel_{name}"] = mel
            table = flow.decoder.rand_noise
            case["noise_head"] = table[:, :, :64].clone()
            case["noise_tail"] = table[:, :, -16:].clone()
    return case


def hift_case(hift, generation: int, gen: torch.Generator) -> dict:
    frames = 10
    mel = fp16(torch.randn(1, 80, frames, generator=gen) * 1.5 - 5)
    samples = frames * (256 if generation == 1 else 480)
    uniform = fp16(torch.rand(1, 9, generator=gen))
    noise = fp16(torch.randn(1, samples, 9, generator=gen))
    calls = []

    def rand(*shape, **kwargs):
        calls.append("rand")
        if generation == 1:
            return uniform.view(1, 9, 1).clone()
        return uniform.clone()

    def randn_like(x, *a, **k):
        if x.dim() == 3 and x.size(1) == 9:  # v1 SineGen noise [B, 9, L]
            return noise.transpose(1, 2).clone()
        if x.dim() == 3 and x.size(2) == 9:  # v2 SineGen2 noise [B, L, 9]
            return noise.clone()
        return torch.zeros_like(x)  # the source module's unused uv noise

    with torch.no_grad(), Patched(rand=rand, randn_like=randn_like):
        wave, source = hift.inference(speech_feat=mel)
        f0 = hift.f0_predictor(mel)
    assert calls == ["rand"], calls
    phase = -math.pi + uniform * (2 * math.pi) if generation == 1 else uniform * (2 * math.pi)
    return {"mel": mel.half(), "phase": phase, "noise": noise.half(), "f0": f0, "source": source, "wave": wave}


def stream_case(config, generation: int, gen: torch.Generator) -> dict:
    """Upstream's chunked token2wav (flow + vocoder caches and cross-fades) driven through a stream.

    The schedule is this repository's with a small first hop (v2: 5 tokens, which brings the 20-token
    prompt to a 25-token boundary, then 25, 50, 100; v1: windows of 100 + 20); the vocoder's random
    draws are zeros and v1's flow noise is seeded per call, so both sides can agree. The last call is
    made as upstream's ``tts`` makes it: ``finalize`` without ``stream``, so the v2 flow recomputes every
    token with full attention (no chunk masks) for the last segment.
    Stored per chunk: its length and its first and last samples, where the seams are.
    """
    from cosyvoice.cli.model import CosyVoice2Model, CosyVoiceModel

    flow = config["flow"]
    vocab = flow.input_embedding.num_embeddings
    prompt_count = 20 if generation == 2 else 25
    prompt_tokens = torch.randint(0, vocab, (1, prompt_count), generator=gen)
    frames = prompt_count * 2 if generation == 2 else int(prompt_count / 50 * 22050 / 256)
    prompt_feat = fp16(torch.randn(1, frames, 80, generator=gen) * 2 - 6)
    embedding = fp16(torch.randn(1, 192, generator=gen))
    tokens = torch.randint(0, vocab, (120 if generation == 2 else 240,), generator=gen)
    flow_calls = []

    def randn_like(x, *a, **k):
        if x.dim() == 3 and x.size(1) == 80:  # v1 flow noise, one draw per call
            flow_calls.append(x.shape)
            seeded = torch.Generator().manual_seed(1000 + len(flow_calls))
            return torch.randn(x.shape, generator=seeded)
        return torch.zeros_like(x)

    def rand(*shape, **kwargs):
        size = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        return torch.zeros(size)

    uuid = "fixture"
    chunks = []
    common = dict(prompt_token=prompt_tokens, prompt_feat=prompt_feat, embedding=embedding, uuid=uuid)
    with torch.no_grad(), Patched(rand=rand, randn_like=randn_like):
        if generation == 2:
            model = CosyVoice2Model(config["llm"], flow, config["hift"], False)
            model.hift_cache_dict[uuid] = None
            this_hop, offset = 5 + (-(prompt_count + 5)) % 25, 0
            while len(tokens) - offset >= this_hop + 3:
                window = tokens[: offset + this_hop + 3].unsqueeze(0)
                chunks.append(model.token2wav(token=window, token_offset=offset, stream=True, finalize=False, **common))
                next_hop = 25 if offset == 0 else min(100, this_hop * 2)
                offset += this_hop
                this_hop = next_hop
            chunks.append(model.token2wav(token=tokens.unsqueeze(0), token_offset=offset, finalize=True, **common))
        else:
            model = CosyVoiceModel(config["llm"], flow, config["hift"], False)
            model.hift_cache_dict[uuid] = None
            model.mel_overlap_dict[uuid] = torch.zeros(1, 80, 0)
            model.flow_cache_dict[uuid] = torch.zeros(1, 80, 0, 2)
            rest = tokens
            while len(rest) >= 120:
                chunks.append(model.token2wav(token=rest[:120].unsqueeze(0), finalize=False, **common))
                rest = rest[100:]
            chunks.append(model.token2wav(token=rest.unsqueeze(0), finalize=True, **common))
    return {
        "prompt_tokens": prompt_tokens[0], "prompt_feat": prompt_feat, "embedding": embedding, "tokens": tokens,
        "lengths": torch.tensor([c.size(1) for c in chunks]),
        "heads": [c[0, :4096].clone() for c in chunks], "tails": [c[0, -512:].clone() for c in chunks],
    }


def sampling_cases(gen: torch.Generator) -> list[dict]:
    """What upstream's RAS hands to multinomial: the kept nucleus, and the full distribution on a repeat."""
    from cosyvoice.utils.common import ras_sampling

    cases = []
    original = torch.Tensor.multinomial
    for sharpness, repeat in ((0.5, False), (2.0, False), (4.0, False), (1.0, True), (3.0, True)):
        scores = (torch.randn(300, generator=gen) * sharpness).log_softmax(dim=0)
        top = int(scores.argmax())
        history = [top, 7, 8] if repeat else [7, 8]
        drawn = []

        def multinomial(self, *args, **kwargs):
            drawn.append(self.detach().clone())
            return torch.zeros(1, dtype=torch.long)  # always the first candidate (the nucleus's best)

        torch.Tensor.multinomial = multinomial
        try:
            ras_sampling(scores.clone(), history, 25)
        finally:
            torch.Tensor.multinomial = original
        cases.append({"scores": scores, "history": torch.tensor(history), "drawn": drawn})
    return cases


def clear_matcha_caches() -> None:
    """Matcha caches its window and filters by fmax alone: clear them between STFT sizes."""
    import matcha.utils.audio as matcha_audio

    matcha_audio.mel_basis.clear()
    matcha_audio.hann_window.clear()


def frontend_case(config, model_dir: Path, generation: int, gen: torch.Generator) -> dict:
    """The reference frontend on a prompt: speech tokens, prompt mel (after its resampling), x-vector, text ids."""
    from cosyvoice.cli.frontend import CosyVoiceFrontEnd

    frontend = CosyVoiceFrontEnd(
        config["get_tokenizer"], config["feat_extractor"], str(model_dir / "campplus.onnx"),
        str(model_dir / f"speech_tokenizer_v{generation}.onnx"), str(model_dir / "spk2info.pt"),
        config["allowed_special"],
    )
    t = torch.arange(32000) / 16000
    prompt = fp16(0.3 * torch.sin(2 * math.pi * 170 * t * (1 + 0.2 * t)) + 0.03 * torch.randn(t.shape, generator=gen))
    text, prompt_text = "Hello world, this is the text.<|endofprompt|>", "A prompt transcript [laughter]."
    rate = 22050 if generation == 1 else 24000
    clear_matcha_caches()
    with torch.no_grad():
        out = frontend.frontend_zero_shot(text, prompt_text, prompt.unsqueeze(0), rate, "")
    case = {
        "prompt16k": prompt.half(),
        "speech_token": out["flow_prompt_speech_token"][0],
        "speech_feat": out["prompt_speech_feat"][0],
        "embedding": out["flow_embedding"],
    }
    if generation > 1:
        case.update(text=text, prompt_text=prompt_text, text_ids=out["text"][0], prompt_text_ids=out["prompt_text"][0])
    return case


def resample_cases(gen: torch.Generator) -> dict:
    from torchaudio.transforms import Resample

    cases = {}
    for rate, target in ((44100, 16000), (16000, 24000), (24000, 16000), (16000, 22050)):
        wave = fp16(torch.randn(rate // 10, generator=gen) * 0.2)
        cases[f"{rate}_{target}"] = {"input": wave.half(), "output": Resample(rate, target)(wave)}
    return cases


def feature_cases(gen: torch.Generator) -> dict:
    import torchaudio.compliance.kaldi as kaldi
    import whisper
    import matcha.utils.audio as matcha_audio

    def wave(rate: int, seconds: float = 1.0) -> torch.Tensor:
        t = torch.arange(int(rate * seconds)) / rate
        tone = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.1 * torch.sin(2 * math.pi * 1330 * t * (1 + t))
        return fp16(tone + 0.02 * torch.randn(t.shape, generator=gen))

    def mel_spectrogram(*args, **kwargs):
        clear_matcha_caches()
        return matcha_audio.mel_spectrogram(*args, **kwargs)

    w16, w22, w24 = wave(16000), wave(22050), wave(24000)
    mel_v1 = mel_spectrogram(w22.unsqueeze(0), 1024, 80, 22050, 256, 1024, 0, 8000, center=False)
    mel_v2 = mel_spectrogram(w24.unsqueeze(0), 1920, 80, 24000, 480, 1920, 0, 8000, center=False)
    mel_v3 = mel_spectrogram(w24.unsqueeze(0), 1920, 80, 24000, 480, 1920, 0, None, center=False)
    fbank = kaldi.fbank(w16.unsqueeze(0), num_mel_bins=80, dither=0)
    fbank = fbank - fbank.mean(dim=0, keepdim=True)
    log_mel = whisper.log_mel_spectrogram(w16, n_mels=128)
    return {
        "wave16k": w16.half(), "wave22k": w22.half(), "wave24k": w24.half(),
        "mel_v1": mel_v1[0].T, "mel_v2": mel_v2[0].T, "mel_v3": mel_v3[0].T, "fbank": fbank, "whisper": log_mel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for generation in (1, 2):
            model_dir = Path(tmp) / f"v{generation}"
            subprocess.run(
                [args.repo_python, str(ROOT / "tools" / "make_cosyvoice_model.py"), str(model_dir),
                 "--version", f"v{generation}", "--seed", "0"],
                check=True,
            )
            config = load_reference(model_dir, generation)
            gen = torch.Generator().manual_seed(SEED + generation)
            text_vocab = 2609 if generation == 1 else 1020
            fixture = {
                "fingerprint": fingerprint(model_dir),
                "llm": llm_case(config["llm"], generation, gen, text_vocab, with_prompt=False),
                "llm_prompt": llm_case(config["llm"], generation, gen, text_vocab, with_prompt=True),
                "flow": flow_cases(config["flow"], generation, gen),
                "hift": hift_case(config["hift"], generation, gen),
                "frontend": frontend_case(config, model_dir, generation, gen),
                "stream": stream_case(config, generation, gen),
            }
            torch.save(fixture, OUT / f"reference_v{generation}.pt")
            print(f"v{generation}: wrote {OUT / f'reference_v{generation}.pt'}")
    gen = torch.Generator().manual_seed(SEED)
    torch.save(
        {**feature_cases(gen), "resample": resample_cases(gen), "sampling": sampling_cases(gen)},
        OUT / "reference_features.pt",
    )
    print("features: done")


if __name__ == "__main__":
    sys.exit(main())
