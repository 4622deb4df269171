"""The voice registry: saved (cloned) voices on disk, outside any model directory.

A voice is a directory ``<root>/<id>/`` holding ``voice.json`` (transcript and
facts), ``prompt.npy`` (float32 mono prompt audio) and ``features/<key>.npz``
(what engines derived from it). A voice is built in a temporary directory,
fsynced, and renamed into place in one step, so a crash mid-write leaves
either the whole voice or nothing; leftovers are swept at start-up.

``voice.json`` also names the voice's owner (the tenant that saved it, or
none), written with the rest in the same step; a :class:`VoiceScope` is
what one owner may see and change of the registry.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cosyvoice.engine import Audio, SavedVoice
from cosyvoice.errors import InvalidRequest, VoiceExists, VoiceNotFound

MIN_SECONDS = 1.0
MAX_SECONDS = 30.0
MIN_SAMPLE_RATE = 16000
SILENCE_DBFS = -50.0
_ID = re.compile(r"^[\w][\w .\-]{0,63}$")
# 64 characters of the Basic Multilingual Plane; with the temporary names built
# from an id (".tmp-deleted-<id>-<ns>") it stays under the 255-byte file name limit.
_MAX_ID_BYTES = 192
_TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class VoiceInfo:
    """What the voice routes show about a saved voice."""

    id: str
    prompt_text: str
    duration: float | None
    sample_rate: int | None
    created: float
    source: str
    owner: str | None = None  # the tenant that saved it; None: saved before tenants, or with no keys

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt_text": self.prompt_text,
            "duration": self.duration,
            "sample_rate": self.sample_rate,
            "created": self.created,
            "source": self.source,
            "owner": self.owner,
        }


class VoiceRegistry:
    """Saved voices in a directory; safe to use from several threads."""

    def __init__(self, root: Path, *, reserved: frozenset[str] = frozenset()) -> None:
        self.root = Path(root)
        self.reserved = reserved  # built-in voice ids a saved voice may not shadow
        self._lock = threading.RLock()
        self._voices: dict[str, SavedVoice] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(path.name for path in self._voice_dirs())

    def __contains__(self, voice_id: object) -> bool:
        return isinstance(voice_id, str) and _valid_id(voice_id) and (self.root / voice_id / "voice.json").is_file()

    def __len__(self) -> int:
        return len(self.ids())

    def info(self, voice_id: str) -> VoiceInfo:
        meta = self._read_meta(voice_id)
        return VoiceInfo(
            id=voice_id,
            prompt_text=meta.get("prompt_text", ""),
            duration=meta.get("duration"),
            sample_rate=meta.get("sample_rate"),
            created=meta.get("created", 0.0),
            source=meta.get("source", "upload"),
            owner=meta.get("owner"),
        )

    def list(self) -> list[VoiceInfo]:
        return [self.info(voice_id) for voice_id in self.ids()]

    def get(self, voice_id: str) -> SavedVoice:
        """The voice with its prompt audio and cached features (loaded once)."""
        with self._lock:
            cached = self._voices.get(voice_id)
            if cached is not None and voice_id in self:
                return cached
            meta = self._read_meta(voice_id)
            folder = self.root / voice_id
            audio = None
            if (folder / "prompt.npy").is_file():
                audio = Audio(np.load(folder / "prompt.npy"), int(meta["sample_rate"]))
            features = {path.stem: dict(np.load(path)) for path in sorted((folder / "features").glob("*.npz"))}
            voice = SavedVoice(
                id=voice_id,
                prompt_audio=audio,
                prompt_text=meta.get("prompt_text", ""),
                features=features,
                store_features=lambda key, value: self._store_features(voice_id, key, value),
            )
            self._voices[voice_id] = voice
            return voice

    def create(
        self,
        voice_id: str,
        audio: Audio | None,
        prompt_text: str = "",
        *,
        features: dict[str, dict[str, np.ndarray]] | None = None,
        source: str = "upload",
        replace: bool = False,
        owner: str | None = None,
    ) -> VoiceInfo:
        """Validate and save a voice atomically; ``replace`` overwrites an existing one."""
        check_id(voice_id)
        if voice_id in self.reserved:
            raise VoiceExists(f"'{voice_id}' is a built-in voice")
        if audio is not None:
            audio = validate_prompt(audio)
        elif not features:
            raise InvalidRequest("a voice needs prompt audio or imported features")
        meta = {
            "prompt_text": prompt_text.strip(),
            "duration": round(audio.duration, 3) if audio else None,
            "sample_rate": audio.sample_rate if audio else None,
            "created": time.time(),
            "source": source,
            "owner": owner,
        }
        with self._lock:
            target = self.root / voice_id
            if target.exists() and not replace:
                raise VoiceExists(f"voice '{voice_id}' already exists")
            staging = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=self.root))
            try:
                _write_file(staging / "voice.json", json.dumps(meta, ensure_ascii=False, indent=1).encode())
                if audio is not None:
                    _write_file(staging / "prompt.npy", _npy_bytes(audio.samples.astype(np.float32)))
                (staging / "features").mkdir()
                for key, arrays in (features or {}).items():
                    _write_file(staging / "features" / f"{check_feature_key(key)}.npz", _npz_bytes(arrays))
                _fsync_dir(staging)
                if target.exists():
                    discarded = self.root / f"{_TEMP_PREFIX}old-{voice_id}-{time.monotonic_ns()}"
                    os.rename(target, discarded)
                    os.rename(staging, target)
                    shutil.rmtree(discarded, ignore_errors=True)
                else:
                    os.rename(staging, target)
                _fsync_dir(self.root)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._voices.pop(voice_id, None)
        return self.info(voice_id)

    def delete(self, voice_id: str) -> None:
        with self._lock:
            self._read_meta(voice_id)
            doomed = self.root / f"{_TEMP_PREFIX}deleted-{voice_id}-{time.monotonic_ns()}"
            os.rename(self.root / voice_id, doomed)  # atomic: gone from the registry at once
            _fsync_dir(self.root)
            shutil.rmtree(doomed, ignore_errors=True)
            self._voices.pop(voice_id, None)

    def rename(self, voice_id: str, new_id: str) -> VoiceInfo:
        check_id(new_id)
        with self._lock:
            self._read_meta(voice_id)
            if new_id in self.reserved or (self.root / new_id).exists():
                raise VoiceExists(f"voice '{new_id}' already exists")
            os.rename(self.root / voice_id, self.root / new_id)
            _fsync_dir(self.root)
            self._voices.pop(voice_id, None)
        return self.info(new_id)

    def owner(self, voice_id: str) -> str | None:
        return self._read_meta(voice_id).get("owner")

    def set_owner(self, voice_id: str, owner: str | None) -> VoiceInfo:
        """Hand a voice to another tenant (or to none); ``voice.json`` is replaced in one step."""
        with self._lock:
            meta = {**self._read_meta(voice_id), "owner": owner}
            _write_atomically(self.root / voice_id / "voice.json", json.dumps(meta, ensure_ascii=False, indent=1).encode())
        return self.info(voice_id)

    def _store_features(self, voice_id: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        with self._lock:
            folder = self.root / voice_id / "features"
            if folder.is_dir():
                _write_atomically(folder / f"{check_feature_key(key)}.npz", _npz_bytes(arrays))

    def _read_meta(self, voice_id: str) -> dict[str, Any]:
        if voice_id not in self:
            raise VoiceNotFound(f"no saved voice '{voice_id}'")
        return json.loads((self.root / voice_id / "voice.json").read_text(encoding="utf-8"))

    def _voice_dirs(self) -> list[Path]:
        return [
            path
            for path in self.root.iterdir()
            if _valid_id(path.name) and path.is_dir() and (path / "voice.json").is_file()
        ]

    def _sweep(self) -> None:
        """Remove what a crash left half-written."""
        for path in self.root.iterdir():
            if path.name.startswith(_TEMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


class VoiceScope:
    """The saved voices one owner may use: its own, or every voice for an operator (``everything``).

    Another owner's voice is absent here: not listed, not found, never
    replaced. Ids are one namespace on disk, so its id is still taken (a
    create or rename onto it is a conflict that reveals nothing else).
    Checks and changes happen under the registry's lock, so a voice cannot
    change hands between the two.
    """

    def __init__(self, registry: VoiceRegistry, owner: str | None, *, everything: bool) -> None:
        self.registry = registry
        self.owner = owner
        self.everything = everything

    def ids(self) -> list[str]:
        with self.registry._lock:
            return [voice_id for voice_id in self.registry.ids() if self._mine(voice_id)]

    def __contains__(self, voice_id: object) -> bool:
        with self.registry._lock:
            return isinstance(voice_id, str) and voice_id in self.registry and self._mine(voice_id)

    def info(self, voice_id: str) -> VoiceInfo:
        with self.registry._lock:
            self._check(voice_id)
            return self.registry.info(voice_id)

    def list(self) -> list[VoiceInfo]:
        return [self.registry.info(voice_id) for voice_id in self.ids()]

    def get(self, voice_id: str) -> SavedVoice:
        with self.registry._lock:
            self._check(voice_id)
            return self.registry.get(voice_id)

    def create(self, voice_id: str, audio: Audio | None, prompt_text: str = "", *, replace: bool = False, **options: Any) -> VoiceInfo:
        """A new voice of this owner; ``replace`` overwrites only a voice in this scope, and keeps its owner."""
        with self.registry._lock:
            owner = self.owner
            if voice_id in self.registry:
                if not (replace and self._mine(voice_id)):
                    raise VoiceExists(f"voice '{voice_id}' already exists")
                owner = self.registry.owner(voice_id)
            return self.registry.create(voice_id, audio, prompt_text, replace=replace, owner=owner, **options)

    def delete(self, voice_id: str) -> None:
        with self.registry._lock:
            self._check(voice_id)
            self.registry.delete(voice_id)

    def rename(self, voice_id: str, new_id: str) -> VoiceInfo:
        with self.registry._lock:
            self._check(voice_id)
            return self.registry.rename(voice_id, new_id)

    def set_owner(self, voice_id: str, owner: str | None) -> VoiceInfo:
        with self.registry._lock:
            self._check(voice_id)
            return self.registry.set_owner(voice_id, owner)

    def _mine(self, voice_id: str) -> bool:
        return self.everything or (self.owner is not None and self.registry.owner(voice_id) == self.owner)

    def _check(self, voice_id: str) -> None:
        if voice_id not in self:
            raise VoiceNotFound(f"no saved voice '{voice_id}'")


def check_id(voice_id: str) -> str:
    if not _valid_id(voice_id):
        raise InvalidRequest(
            f"invalid voice id {voice_id!r}: 1-64 letters, digits, spaces, '_', '-' or '.' ({_MAX_ID_BYTES} bytes "
            "in UTF-8 at most), starting with a letter or digit"
        )
    return voice_id


def check_feature_key(key: str) -> str:
    if not re.fullmatch(r"[\w.\-]{1,100}", key) or key.startswith("."):
        raise ValueError(f"invalid feature key {key!r}")
    return key


def validate_prompt(audio: Audio) -> Audio:
    """A prompt must be 1-30 s, at least 16 kHz, and not silent."""
    if audio.sample_rate < MIN_SAMPLE_RATE:
        raise InvalidRequest(
            f"prompt audio is sampled at {audio.sample_rate} Hz; at least {MIN_SAMPLE_RATE} Hz is needed"
        )
    if not MIN_SECONDS <= audio.duration <= MAX_SECONDS:
        raise InvalidRequest(
            f"prompt audio is {audio.duration:.2f} s long; it must be {MIN_SECONDS:g} to {MAX_SECONDS:g} s"
        )
    rms = float(np.sqrt(np.mean(np.square(audio.samples, dtype=np.float64))))
    if 20 * np.log10(rms + 1e-12) < SILENCE_DBFS:
        raise InvalidRequest("prompt audio is silent")
    return audio


def _valid_id(voice_id: str) -> bool:
    return bool(_ID.fullmatch(voice_id)) and voice_id not in (".", "..") and len(voice_id.encode()) <= _MAX_ID_BYTES


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return buffer.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{_TEMP_PREFIX}{path.name}")
    _write_file(temporary, data)
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
