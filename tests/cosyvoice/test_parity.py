"""Per-stage parity with the reference implementation (upstream v1/v2 code, cosyvoice-minicpmo).

Fixtures come from tools/cosyvoice_reference_fixtures.py, run in an isolated
venv on the same tiny checkpoints our generator makes (see docs/cosyvoice.md).
Tolerances are absolute and a few times the float32 noise we measured
(<= 2e-6 everywhere except Kaldi fbank, 2e-4 from log of tiny energies);
test_tolerances_catch_mistakes shows that plausible bugs miss them by orders
of magnitude.
"""

from __future__ import annotations

import math

import pytest
import torch

from cosyvoice.model import features
from cosyvoice.model.hift import SourceDraws
from tools.cosyvoice_reference_fixtures_check import fingerprint

LLM_TOL = 1e-4  # log-probabilities
FLOW_TOL = 1e-4  # mel (values up to ~5)
HIFT_TOL = 1e-5  # waveform samples
F0_TOL = 1e-3  # Hz (values ~180)
FEATURE_TOL = {"mel": 1e-5, "fbank": 1e-3, "whisper": 1e-5}


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
    assert max_error(torch.where(finite, rows, 0), torch.where(finite, theirs, 0)) < LLM_TOL


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
    assert max_error(torch.where(finite, torch.stack(rows), 0), torch.where(finite, theirs, 0)) < LLM_TOL


def test_flow_v1(models, reference):
    case = reference[1]["flow"]
    mel = models[1].flow(
        case["tokens"], case["prompt_tokens"], case["prompt_feat"].float(), case["embedding"].float(), case["noise"].float()
    )
    assert max_error(mel, case["mel"]) < FLOW_TOL


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
    assert max_error(mel, case[f"mel_{name}"]) < FLOW_TOL


def test_fixed_noise_is_upstreams(models, reference):
    noise = models[2].noise
    assert torch.equal(noise[:, :, :64], reference[2]["flow"]["noise_head"])
    assert torch.equal(noise[:, :, -16:], reference[2]["flow"]["noise_tail"])


@pytest.mark.parametrize("generation", [1, 2])
def test_hift(generation, models, reference):
    case = reference[generation]["hift"]
    hift = models[generation].hift
    mel = case["mel"].float()
    draws = SourceDraws(case["phase"].float(), case["noise"].float())
    f0 = hift.f0(mel)
    assert max_error(f0, case["f0"]) < F0_TOL
    assert max_error(hift.source(f0, draws), case["source"]) < HIFT_TOL
    wave, _ = hift(mel, draws)
    assert max_error(wave, case["wave"]) < HIFT_TOL
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
    assert max_error(ours, feature_reference[name]) < FEATURE_TOL["mel"]


def test_kaldi_fbank(feature_reference):
    ours = features.kaldi_fbank(feature_reference["wave16k"].float())
    assert max_error(ours, feature_reference["fbank"]) < FEATURE_TOL["fbank"]


def test_whisper_log_mel(feature_reference):
    ours = features.whisper_log_mel(feature_reference["wave16k"].float())
    assert max_error(ours, feature_reference["whisper"]) < FEATURE_TOL["whisper"]


def test_tolerances_catch_mistakes(models, reference, monkeypatch):
    """Plausible bugs (a swapped layer order, a missing scale, a wrong mask) miss the tolerances widely."""
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
    assert max_error(torch.where(finite, rows, 0), torch.where(finite, case["logp"], 0)) > 100 * LLM_TOL

    # missing scale: no sqrt(d) on the v1 flow encoder's embedding
    flow = models[1].flow
    fcase = reference[1]["flow"]
    monkeypatch.setattr(flow.encoder.embed.pos, "xscale", 1.0)
    mel = flow(fcase["tokens"], fcase["prompt_tokens"], fcase["prompt_feat"].float(), fcase["embedding"].float(),
               fcase["noise"].float())
    assert max_error(mel, fcase["mel"]) > 100 * FLOW_TOL
    monkeypatch.undo()

    # wrong mask: full attention where upstream streams with chunk masks
    model = models[2]
    vcase = reference[2]["flow"]
    mel = model.flow(vcase["tokens"], vcase["prompt_tokens"], vcase["prompt_feat"].float(), vcase["embedding"].float(),
                     model.noise, streaming=False, finalize=False)
    assert max_error(mel, vcase["mel_stream"]) > 100 * FLOW_TOL

    # missing scale in the vocoder: Snake without its 1/alpha
    hift = models[2].hift
    hcase = reference[2]["hift"]
    from cosyvoice.model import hift as hift_module

    monkeypatch.setattr(hift_module.Snake, "forward", lambda self, x: x + torch.sin(self.alpha.view(1, -1, 1) * x).pow(2))
    wave, _ = hift(hcase["mel"].float(), SourceDraws(hcase["phase"].float(), hcase["noise"].float()))
    assert max_error(wave, hcase["wave"]) > 100 * HIFT_TOL


@pytest.mark.parametrize("pair", ["44100_16000", "16000_24000", "24000_16000", "16000_22050"])
def test_resampling(feature_reference, pair):
    rate, target = map(int, pair.split("_"))
    case = feature_reference["resample"][pair]
    assert max_error(features.resample_tensor(case["input"].float(), rate, target), case["output"]) < 2e-5


@pytest.mark.parametrize("generation", [1, 2])
def test_frontend_prompt_features(generation, models, reference):
    """The whole prompt path: resampling, both ONNX frontends with their features, the prompt mel, text ids."""
    from cosyvoice.engine import Audio
    from cosyvoice.model.pipeline import prompt_features

    case = reference[generation]["frontend"]
    model = models[generation]
    ours = prompt_features(model, Audio(case["prompt16k"].float().numpy(), 16000))
    assert ours["speech_token"].tolist() == case["speech_token"].tolist()
    assert max_error(torch.from_numpy(ours["speech_feat"]), case["speech_feat"]) < 1e-4
    embedding = case["embedding"]
    assert max_error(torch.from_numpy(ours["embedding"]), embedding) < 1e-5 * embedding.abs().max().item() * 10
    if generation > 1:
        assert model.tokenizer.encode(case["text"]) == case["text_ids"].tolist()
        assert model.tokenizer.encode(case["prompt_text"]) == case["prompt_text_ids"].tolist()


@pytest.mark.parametrize("generation", [1, 2])
def test_streaming_pipeline(generation, models, reference, monkeypatch):
    """Chunked synthesis through the runtime's renderers against upstream's token2wav: v2 streams
    incrementally on the hop schedule with a 5-token first hop (which brings the 20-token prompt to a
    25-token boundary), then 25 and 50, with the vocoder's caches and cross-fades; v1 in overlapping
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
    errors = [
        max(max_error(chunk[: head.numel()], head), max_error(chunk[-tail.numel() :], tail))
        for chunk, head, tail in zip(chunks, case["heads"], case["tails"])
    ]
    assert max(errors) < HIFT_TOL


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
        assert max_error(drawn[0], theirs[0]) < 1e-6
        if len(theirs) == 2:
            top = int(case["scores"].argmax())
            assert drawn[1][top] == 0
            rest = torch.ones_like(theirs[1], dtype=torch.bool)
            rest[top] = False
            ours = drawn[1][rest] / drawn[1][rest].sum()
            assert max_error(ours, theirs[1][rest] / theirs[1][rest].sum()) < 1e-6
        else:
            assert token == int(case["scores"].argmax())
