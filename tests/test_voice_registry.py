"""The voice registry on disk: validation, atomic writes, features, crash leftovers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cosyvoice import Audio, InvalidRequest, VoiceExists, VoiceNotFound
from cosyvoice.voices import VoiceRegistry


def voice_audio(seconds: float = 3.0, rate: int = 24000) -> Audio:
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return Audio((0.3 * envelope * np.sin(2 * np.pi * 180 * t)).astype(np.float32), rate)


def test_create_list_get_rename_delete(tmp_path: Path) -> None:
    registry = VoiceRegistry(tmp_path)
    info = registry.create("alice", voice_audio(), "Hello, I am Alice.")
    assert info.id == "alice" and info.duration == pytest.approx(3.0) and info.sample_rate == 24000
    registry.create("中文女声", voice_audio(2.0, 16000), "你好")
    assert registry.ids() == ["alice", "中文女声"]
    voice = registry.get("alice")
    assert voice.prompt_text == "Hello, I am Alice."
    np.testing.assert_array_equal(voice.prompt_audio.samples, voice_audio().samples)
    registry.rename("alice", "alice2")
    assert "alice" not in registry and "alice2" in registry
    assert registry.get("alice2").prompt_text == "Hello, I am Alice."
    registry.delete("alice2")
    assert registry.ids() == ["中文女声"]
    with pytest.raises(VoiceNotFound):
        registry.get("alice2")


def test_voices_survive_a_restart_with_their_features(tmp_path: Path) -> None:
    registry = VoiceRegistry(tmp_path)
    registry.create("bob", voice_audio(), "Hi.")
    registry.get("bob").remember("cosyvoice2.tokens", {"speech_token": np.arange(10)})
    reopened = VoiceRegistry(tmp_path)
    voice = reopened.get("bob")
    np.testing.assert_array_equal(voice.features["cosyvoice2.tokens"]["speech_token"], np.arange(10))


@pytest.mark.parametrize(
    "audio,message",
    [
        (voice_audio(0.5), "must be 1 to 30 s"),
        (voice_audio(31.0, 16000), "must be 1 to 30 s"),
        (voice_audio(3.0, 8000), "at least 16000 Hz"),
        (Audio(np.zeros(48000, np.float32), 16000), "silent"),
        (Audio(np.full(48000, 1e-5, np.float32), 16000), "silent"),
    ],
)
def test_bad_prompts_are_refused(tmp_path: Path, audio: Audio, message: str) -> None:
    registry = VoiceRegistry(tmp_path)
    with pytest.raises(InvalidRequest, match=message):
        registry.create("carol", audio, "text")
    assert registry.ids() == []


@pytest.mark.parametrize("bad_id", ["", "..", ".hidden", "a/b", "../escape", "x" * 65, "tab\tid", "/abs"])
def test_bad_ids_are_refused(tmp_path: Path, bad_id: str) -> None:
    registry = VoiceRegistry(tmp_path)
    with pytest.raises(InvalidRequest, match="invalid voice id"):
        registry.create(bad_id, voice_audio(), "text")
    assert list(tmp_path.parent.glob("escape*")) == []


def test_duplicates_and_built_in_names_conflict(tmp_path: Path) -> None:
    registry = VoiceRegistry(tmp_path, reserved=frozenset({"joe"}))
    registry.create("dave", voice_audio(), "one")
    with pytest.raises(VoiceExists):
        registry.create("dave", voice_audio(), "two")
    with pytest.raises(VoiceExists):
        registry.create("joe", voice_audio(), "two")
    registry.create("erin", voice_audio(), "three")
    with pytest.raises(VoiceExists):
        registry.rename("dave", "erin")
    registry.create("dave", voice_audio(2.0), "replaced", replace=True)
    assert registry.info("dave").prompt_text == "replaced"


def _create_forever(root: str) -> None:
    registry = VoiceRegistry(Path(root))
    audio = voice_audio(30.0, 48000)
    for n in range(10_000):
        registry.create(f"v{n}", audio, "text " * 100)


def test_sigkill_mid_write_leaves_a_consistent_registry(tmp_path: Path) -> None:
    for delay in (0.15, 0.3, 0.45):
        process = multiprocessing.get_context("spawn").Process(target=_create_forever, args=(str(tmp_path),))
        process.start()
        time.sleep(delay + 1.0)  # the spawned interpreter needs a moment to import
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        registry = VoiceRegistry(tmp_path)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")], "crash leftovers were swept"
        for voice_id in registry.ids():
            voice = registry.get(voice_id)
            assert voice.prompt_audio is not None and voice.prompt_audio.duration == pytest.approx(30.0)
        for folder in tmp_path.iterdir():
            assert (folder / "voice.json").is_file() and (folder / "prompt.npy").is_file()


def test_owners_persist_and_scopes_hide_other_owners_voices(tmp_path: Path) -> None:
    from cosyvoice.voices import VoiceScope

    registry = VoiceRegistry(tmp_path)
    alice = VoiceScope(registry, "alice", everything=False)
    bob = VoiceScope(registry, "bob", everything=False)
    operator = VoiceScope(registry, None, everything=True)
    alice.create("mine", voice_audio())
    alice.rename("mine", "still-mine")
    reopened = VoiceRegistry(tmp_path)  # the owner is on disk with the voice, not in memory
    assert reopened.info("still-mine").owner == "alice"
    assert bob.ids() == [] and "still-mine" not in bob and operator.ids() == ["still-mine"]
    for attempt in (lambda: bob.get("still-mine"), lambda: bob.delete("still-mine"), lambda: bob.rename("still-mine", "x")):
        with pytest.raises(VoiceNotFound):
            attempt()
    with pytest.raises(VoiceExists):  # the id is taken, but bob may not replace it
        bob.create("still-mine", voice_audio(), replace=True)
    operator.create("still-mine", voice_audio(2.0), replace=True)
    assert registry.info("still-mine").owner == "alice", "a replacement keeps the owner"
    operator.set_owner("still-mine", "bob")
    assert VoiceRegistry(tmp_path).info("still-mine").owner == "bob" and alice.ids() == [] and bob.ids() == ["still-mine"]
    assert not [path for path in (tmp_path / "still-mine").iterdir() if path.name.startswith(".tmp-")]
