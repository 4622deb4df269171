"""Per-stage parity with the reference implementation (upstream v1/v2 code, cosyvoice-minicpmo).

Fixtures come from tools/cosyvoice_reference_fixtures.py, run in an isolated
venv on the same tiny checkpoints our generator makes (see docs/cosyvoice.md).
Each tolerance bounds float32 rounding for its computation, relative to the
size of what is compared (tests/cosyvoice/tolerance.py), so other CPU kernels
pass too (test_kernel_choices.py runs this file under several);
test_tolerances_catch_mistakes shows that plausible bugs miss them widely.
"""

from __future__ import annotations

import math

import pytest
import torch

from cosyvoice.model import features
from cosyvoice.model.hift import SourceDraws
from tests.cosyvoice import tolerance
from tests.cosyvoice.tolerance import FLOW_CONDITION, FLOW_TERMS, LLM_TERMS, ratio, rounding, scale
from tools.cosyvoice_reference_fixtures_check import fingerprint

F0_TERMS = 5 * 3 * 512  # F0: five convolutions of at most 512 channels x 3 taps, then a linear map
WHISPER_FFT, V1_MEL_FFT, KALDI_FFT = 400, 1024, 512


def llm_bound(theirs: torch.Tensor) -> float:
    return rounding(scale(torch.where(torch.isfinite(theirs), theirs, 0)), LLM_TERMS)


def flow_bound(theirs: torch.Tensor) -> float:
    return rounding(scale(theirs), FLOW_TERMS, FLOW_CONDITION)


def wave_bound(theirs: torch.Tensor, samples: int, hift) -> float:
    return tolerance.waveform(scale(theirs), samples / hift.sampling_rate)


def whisper_bound(theirs: torch.Tensor) -> torch.Tensor:
    """Whisper's features are log10(power) / 4 (+ 1), bands along dim 0."""
    return tolerance.log_band(theirs, WHISPER_FFT, power=True, log_base=10, divide=4, dim=0)


def prompt_mel_bound(theirs: torch.Tensor, n_fft: int, input_error: float = 0.0) -> torch.Tensor:
    """The flow's prompt mel is ln(magnitude), bands along dim 1."""
    return tolerance.log_band(theirs, n_fft, power=False, log_base=math.e, divide=1, dim=1, input_error=input_error)


def resampler_terms(rate: int, target: int) -> int:
    """Taps per output sample of the windowed-sinc resampler."""
    common = math.gcd(rate, target)
    return features._sinc_kernel(target // common, rate // common)[0].size(-1)


def max_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape, f"shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    return (ours.float() - theirs.float()).abs().max().item()


@pytest.mark.parametrize("generation", [1, 2])
def test_generator_matches_fixture_weights(generation, model_dirs, reference):
    """The fixtures were made from these exact weights; a changed generator must regenerate them."""
    expected = reference[generation]["fingerprint"]
    actual = fingerprint(model_dirs[generation])
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], rel=1e-6), f"{key}.pt differs: regenerate the fixtures"


def llm_scores(model, case):
    prompt = model.llm.prompt(case["text"], case["prompt_text"], case["prompt_speech"], case["embedding"].float())
    rows = model.llm.score(prompt, case["tokens"])
    return prompt, rows[case["prompt_speech"].numel() :]


@pytest.mark.parametrize("generation", [1, 2])
@pytest.mark.parametrize("case_name", ["llm", "llm_prompt"])
def test_llm_teacher_forced_logits(generation, case_name, models, reference):
    case = reference[generation][case_name]
    _, rows = llm_scores(models[generation], case)
    theirs = case["logp"]
    finite = torch.isfinite(theirs)
    # upstream writes -inf into the stop id of the first row in place; that is masking, not the model
    assert not (~finite)[:, : models[generation].llm.speech_token_size].any()
    assert max_error(torch.where(finite, rows, 0), torch.where(finite, theirs, 0)) < llm_bound(theirs)


@pytest.mark.parametrize("generation", [1, 2])
@pytest.mark.parametrize("case_name", ["llm", "llm_prompt"])
def test_llm_greedy_incremental_path(generation, case_name, models, reference):
    case = reference[generation][case_name]
    llm = models[generation].llm
    prompt = llm.prompt(case["text"], case["prompt_text"], case["prompt_speech"], case["embedding"].float())
    state = llm.start(prompt, text_len=case["text"].numel(), seed=None)
    tokens, rows = [], [state.logp]
    for _ in range(case["tokens"].numel()):
        token = llm.choose(state, greedy=True)
        tokens.append(token)
        llm.advance(state, token)
        rows.append(state.logp)
    assert tokens == case["tokens"].tolist()
    theirs = case["logp"]
    finite = torch.isfinite(theirs)
    assert max_error(torch.where(finite, torch.stack(rows), 0), torch.where(finite, theirs, 0)) < llm_bound(theirs)


def test_flow_v1(models, reference):
    case = reference[1]["flow"]
    mel = models[1].flow(
        case["tokens"], case["prompt_tokens"], case["prompt_feat"].float(), case["embedding"].float(), case["noise"].float()
    )
    assert max_error(mel, case["mel"]) < flow_bound(case["mel"])


@pytest.mark.parametrize(
    "name,streaming,finalize", [("full", False, True), ("stream", True, False), ("stream_final", True, True)]
)
def test_flow_v2(models, reference, name, streaming, finalize):
    case = reference[2]["flow"]
    model = models[2]
    mel = model.flow(
        case["tokens"], case["prompt_tokens"], case["prompt_feat"].float(), case["embedding"].float(), model.noise,
        streaming=streaming, finalize=finalize,
    )
    assert max_error(mel, case[f"mel_{name}"]) < flow_bound(case[f"mel_{name}"])


def test_fixed_noise_is_upstreams(models, reference):
    """torch's normal stream for seed 0. Its Box-Muller transform (sqrt(-2 ln u) cos 2 pi v) runs in
    vectorized or scalar code depending on the CPU (ATEN_CPU_CAPABILITY): their log, sqrt and cos differ
    by an ulp or so each, and the log's relative error grows for u near 1: a few ulps (measured 3.5)."""
    noise = models[2].noise
    for ours, theirs in ((noise[:, :, :64], reference[2]["flow"]["noise_head"]),
                         (noise[:, :, -16:], reference[2]["flow"]["noise_tail"])):
        assert max_error(ours, theirs) <= 16 * tolerance.EPS * scale(theirs)


@pytest.mark.parametrize("generation", [1, 2])
def test_hift(generation, models, reference):
    case = reference[generation]["hift"]
    hift = models[generation].hift
    mel = case["mel"].float()
    draws = SourceDraws(case["phase"].float(), case["noise"].float())
    f0 = hift.f0(mel)
    samples = mel.size(2) * hift.hop_samples
    assert max_error(f0, case["f0"]) < rounding(scale(case["f0"]), F0_TERMS)
    assert max_error(hift.source(f0, draws), case["source"]) < wave_bound(case["source"], samples, hift)
    wave, _ = hift(mel, draws)
    assert max_error(wave, case["wave"]) < wave_bound(case["wave"], samples, hift)
    assert (case["f0"] > hift.voiced_threshold).float().mean() > 0.5  # the harmonic path was exercised


@pytest.fixture(scope="module")
def feature_reference():
    from tests.cosyvoice.conftest import FIXTURES

    return torch.load(FIXTURES / "reference_features.pt", weights_only=True)


@pytest.mark.parametrize(
    "name,wave,config",
    [
        ("mel_v1", "wave22k", features.MelConfig(1024, 80, 22050, 256, 1024, 0, 8000)),
        ("mel_v2", "wave24k", features.MelConfig()),
        ("mel_v3", "wave24k", features.MelConfig(fmax=None)),
    ],
)
def test_prompt_mel(feature_reference, name, wave, config):
    ours = features.prompt_mel(feature_reference[wave].float(), config)
    theirs = feature_reference[name]
    assert ratio(ours, theirs, prompt_mel_bound(theirs, config.n_fft)) < 1


def test_kaldi_fbank(feature_reference):
    ours = features.kaldi_fbank(feature_reference["wave16k"].float())
    theirs = feature_reference["fbank"]
    assert ratio(ours, theirs, tolerance.kaldi_fbank(theirs, KALDI_FFT)) < 1


def test_whisper_log_mel(feature_reference):
    ours = features.whisper_log_mel(feature_reference["wave16k"].float())
    theirs = feature_reference["whisper"]
    assert ratio(ours, theirs, whisper_bound(theirs)) < 1


def test_tolerances_catch_mistakes(models, reference, feature_reference, monkeypatch):
    """Plausible bugs miss the tolerances widely: a swapped layer order, a missing scale, a wrong mask, a
    wrong constant, a window shifted by one sample (hundreds to tens of thousands of times the bound), a
    missing lookahead (~50 times) and the last streamed segment rendered with chunk masks (~18 times:
    waveform bounds allow for the excitation's phase over the whole chunk; the measured errors are
    thousands of times smaller still)."""
    widely = 10
    # wrong layer order: swap the v1 LM's two decoder layers
    llm = models[1].llm
    case = reference[1]["llm"]
    layers = llm.llm.encoders
    layers[0], layers[1] = layers[1], layers[0]
    try:
        _, rows = llm_scores(models[1], case)
    finally:
        layers[0], layers[1] = layers[1], layers[0]
    finite = torch.isfinite(case["logp"])
    error = max_error(torch.where(finite, rows, 0), torch.where(finite, case["logp"], 0))
    assert error > widely * llm_bound(case["logp"])

    # missing scale: no sqrt(d) on the v1 flow encoder's embedding
    flow = models[1].flow
    fcase = reference[1]["flow"]
    monkeypatch.setattr(flow.encoder.embed.pos, "xscale", 1.0)
    mel = flow(fcase["tokens"], fcase["prompt_tokens"], fcase["prompt_feat"].float(), fcase["embedding"].float(),
               fcase["noise"].float())
    assert max_error(mel, fcase["mel"]) > widely * flow_bound(fcase["mel"])
    monkeypatch.undo()

    # wrong mask: full attention where upstream streams with chunk masks
    model = models[2]
    vcase = reference[2]["flow"]
    mel = model.flow(vcase["tokens"], vcase["prompt_tokens"], vcase["prompt_feat"].float(), vcase["embedding"].float(),
                     model.noise, streaming=False, finalize=False)
    assert max_error(mel, vcase["mel_stream"]) > widely * flow_bound(vcase["mel_stream"])

    # missing scale in the vocoder: Snake without its 1/alpha
    hift = models[2].hift
    hcase = reference[2]["hift"]
    from cosyvoice.model import hift as hift_module

    monkeypatch.setattr(hift_module.Snake, "forward", lambda self, x: x + torch.sin(self.alpha.view(1, -1, 1) * x).pow(2))
    wave, _ = hift(hcase["mel"].float(), SourceDraws(hcase["phase"].float(), hcase["noise"].float()))
    assert max_error(wave, hcase["wave"]) > widely * wave_bound(hcase["wave"], hcase["mel"].size(2) * hift.hop_samples, hift)
    monkeypatch.undo()

    # wrong constant and shifted window in the Whisper log-mel: a dynamic range of 7 instead of 8 decades,
    # frames one sample late
    theirs = feature_reference["whisper"]
    wave16k = feature_reference["wave16k"].float()
    ours = features.whisper_log_mel(wave16k)
    floor = (ours * 4 - 4).max() - 7.0
    assert ratio(torch.maximum(ours, (floor + 4) / 4), theirs, whisper_bound(theirs)) > widely
    late = features.whisper_log_mel(torch.cat([wave16k[1:], wave16k.new_zeros(1)]))
    assert ratio(late, theirs, whisper_bound(theirs)) > widely

    # a missing lookahead (chunks encoded without the 3 tokens after them), and the last segment of a stream
    # rendered with chunk masks (what the carried state gives) instead of upstream's unmasked pass
    from cosyvoice.model.flow import FlowSession

    encode = model.flow.encode

    def without_lookahead(session, tokens, context):
        return encode(session, tokens, None if context is None else context[:0])

    monkeypatch.setattr(model.flow, "encode", without_lookahead)
    assert pipeline_ratio(2, models, reference, monkeypatch) > widely
    monkeypatch.undo()
    monkeypatch.setattr(FlowSession, "unmasked", lambda self: FlowSession(self.prompt_feat, self.speaker, streaming=True))
    assert pipeline_ratio(2, models, reference, monkeypatch) > widely


@pytest.mark.parametrize("pair", ["44100_16000", "16000_24000", "24000_16000", "16000_22050"])
def test_resampling(feature_reference, pair):
    rate, target = map(int, pair.split("_"))
    case = feature_reference["resample"][pair]
    # we design the filter in float64, torchaudio in float32: every tap's coefficient differs by a rounding,
    # the same one for every output of a phase, so those errors add linearly over the taps
    bound = tolerance.EPS * resampler_terms(rate, target) * scale(case["output"])
    assert max_error(features.resample_tensor(case["input"].float(), rate, target), case["output"]) < bound


@pytest.mark.parametrize("generation", [1, 2])
def test_frontend_prompt_features(generation, models, reference):
    """The whole prompt path: resampling, both ONNX frontends with their features, the prompt mel, text ids."""
    from cosyvoice.engine import Audio
    from cosyvoice.model.pipeline import prompt_features

    case = reference[generation]["frontend"]
    model = models[generation]
    ours = prompt_features(model, Audio(case["prompt16k"].float().numpy(), 16000))
    assert ours["speech_token"].tolist() == case["speech_token"].tolist()
    rate = model.sample_rate
    resampled = tolerance.EPS * resampler_terms(16000, rate)  # the resampler's relative error (test_resampling)
    n_fft = V1_MEL_FFT if generation == 1 else features.MelConfig().n_fft
    feat = case["speech_feat"]
    assert ratio(torch.from_numpy(ours["speech_feat"]), feat, prompt_mel_bound(feat, n_fft, resampled)) < 1
    # the x-vector's input, the Kaldi fbank, is good to ~3e-5 of its scale where bands are loud (its bound
    # there: 2e-4 of ~7), and the tiny CAM++ (a few layers) passes relative errors on: 1e-4 of the scale
    embedding = case["embedding"]
    assert max_error(torch.from_numpy(ours["embedding"]), embedding) < 1e-4 * scale(embedding)
    if generation > 1:
        assert model.tokenizer.encode(case["text"]) == case["text_ids"].tolist()
        assert model.tokenizer.encode(case["prompt_text"]) == case["prompt_text_ids"].tolist()


def pipeline_ratio(generation, models, reference, monkeypatch) -> float:
    """Chunked synthesis through the runtime's renderers against upstream's token2wav; the largest error
    of a chunk's first and last samples as a fraction of its bound (``tolerance.waveform`` over the part
    of the chunk's vocoder call before them: each call's excitation phase starts afresh, and the seams'
    cache and held-back frames surround the chunk's own samples).

    v2 streams incrementally on the hop schedule with a 5-token first hop (which brings the 20-token prompt
    to a 25-token boundary), then 25 and 50, with the vocoder's caches and cross-fades, and renders the
    last segment in one unmasked pass over everything, as upstream's final call does; v1 in overlapping
    windows. Upstream recomputes each v2 chunk from the first token, so this also checks the carried
    state. Draws are deterministic as in the fixture: zero phases and noise in the vocoder, and v1's
    flow noise seeded per call.
    """
    from cosyvoice.model.pipeline import ModeInputs
    from cosyvoice.runtime.render import FlowRenderer, WindowRenderer
    from cosyvoice.runtime.schedule import HopSchedule
    from cosyvoice.runtime.session import Session

    case = reference[generation]["stream"]
    model = models[generation]
    empty = torch.zeros(0, dtype=torch.long)
    inputs = ModeInputs(empty, empty, None, case["prompt_tokens"], case["prompt_feat"].float(), case["embedding"].float())
    renderer = WindowRenderer(model) if generation == 1 else FlowRenderer(model, HopSchedule(25, 5, 100))
    calls = []

    def seeded_noise(session, frames):
        calls.append(frames)
        return torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(1000 + len(calls)))

    def zero_draws(frames, generator=None, batch=1):
        # the fixture's uniform draws are 0: v1's phase is then -pi (uniform on [-pi, pi)), v2's 0
        hift = model.hift
        phase = torch.full((batch, hift.harmonics), -math.pi if generation == 1 else 0.0)
        return SourceDraws(phase, torch.zeros(batch, frames * hift.hop_samples, hift.harmonics))

    monkeypatch.setattr(renderer, "noise", seeded_noise, raising=False)
    monkeypatch.setattr(model.hift, "draw", zero_draws)
    session = Session(inputs, None, lambda item: None, generation=generation)
    renderer.open(session)
    chunks = []
    with torch.inference_mode():
        for token in case["tokens"].tolist() + [None]:
            if token is None:
                session.llm_done = True
            else:
                session.tokens.append(token)
            while renderer.next_chunk(session) is not None:
                chunks.append(torch.from_numpy(renderer.render([session])[0]))
    assert renderer.finished(session)
    chunks = [chunk for chunk in chunks if chunk.numel()]  # calls inside a hop solve frames but send no audio
    assert [len(c) for c in chunks] == case["lengths"].tolist()
    seam = session.render.vocoder.overlap
    ratios = []
    for chunk, head, tail in zip(chunks, case["heads"], case["tails"]):
        ratios.append(ratio(chunk[: head.numel()], head, wave_bound(head, seam + head.numel(), model.hift)))
        ratios.append(ratio(chunk[-tail.numel() :], tail, wave_bound(tail, len(chunk) + 2 * seam, model.hift)))
    return max(ratios)


@pytest.mark.parametrize("generation", [1, 2])
def test_streaming_pipeline(generation, models, reference, monkeypatch):
    assert pipeline_ratio(generation, models, reference, monkeypatch) < 1


def test_ras_sampling_candidates(feature_reference, monkeypatch):
    """The nucleus handed to the draw matches upstream's (top-p 0.8 with the crossing token, top-k 25),
    and a repeat within the window redraws from the whole distribution.

    Upstream at HEAD also bars the repeated token from that redraw (the research brief); the
    packaged reference predates that, so only the rest of the distribution is compared.
    """
    from cosyvoice.model.sampling import SamplingOptions, ras

    for case in feature_reference["sampling"]:
        drawn = []

        def multinomial(probs, n, generator=None):
            drawn.append(probs.clone())
            return torch.zeros(1, dtype=torch.long)

        monkeypatch.setattr(torch, "multinomial", multinomial)
        token = ras(case["scores"].clone(), case["history"].tolist(), SamplingOptions(), None)
        monkeypatch.undo()
        theirs = case["drawn"]
        assert len(drawn) == len(theirs)
        bound = rounding(scale(theirs[0]), case["scores"].numel())  # a softmax sums every score's exponential
        assert max_error(drawn[0], theirs[0]) < bound
        if len(theirs) == 2:
            top = int(case["scores"].argmax())
            assert drawn[1][top] == 0
            rest = torch.ones_like(theirs[1], dtype=torch.bool)
            rest[top] = False
            ours = drawn[1][rest] / drawn[1][rest].sum()
            assert max_error(ours, theirs[1][rest] / theirs[1][rest].sum()) < bound
        else:
            assert token == int(case["scores"].argmax())
