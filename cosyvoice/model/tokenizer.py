"""Text tokenizers: Whisper's multilingual BPE (v1) and Qwen2's BPE plus CosyVoice specials (v2/v3).

Nothing is downloaded. v1 models ship no tokenizer files: the BPE ranks are
read from ``multilingual.tiktoken`` in the model directory or, failing that,
from an installed ``openai-whisper`` package's assets (located, not imported).
v2/v3 read ``CosyVoice-BlankEN`` and append the special tokens in upstream's
order, which fixes their ids (``<|endofprompt|>`` is the first new one).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

WHISPER_LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt "
    "la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc "
    "ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
).split()
WHISPER_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

QWEN_SPECIALS_V2 = (
    "<|im_start|>", "<|im_end|>", "<|endofprompt|>", "[breath]", "<strong>", "</strong>", "[noise]",
    "[laughter]", "[cough]", "[clucking]", "[accent]", "[quick_breath]", "<laughter>", "</laughter>",
    "[hissing]", "[sigh]", "[vocalized-noise]", "[lipsmack]", "[mn]",
)
# v3 continues the list; <|endofsystem|> is the only entry of its extension the engine relies on
# (the phoneme and pinyin markup tokens that follow it upstream are not registered).
QWEN_SPECIALS_V3 = QWEN_SPECIALS_V2 + ("<|endofsystem|>",)
END_OF_PROMPT = "<|endofprompt|>"


class TextTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def token_id(self, token: str) -> int | None: ...


class WhisperTokenizer:
    """tiktoken over Whisper's multilingual ranks with its special tokens (100 languages)."""

    def __init__(self, ranks_file: Path) -> None:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(ranks_file))
        specials = [
            "<|endoftext|>",
            "<|startoftranscript|>",
            *[f"<|{code}|>" for code in WHISPER_LANGUAGES],
            "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
            *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
        ]
        self.special_ids = {token: len(ranks) + i for i, token in enumerate(specials)}
        self.encoding = tiktoken.Encoding(
            name=ranks_file.stem, pat_str=WHISPER_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_ids
        )

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special="all")

    def token_id(self, token: str) -> int | None:
        return self.special_ids.get(token)


class QwenTokenizer:
    """The BlankEN BPE (``vocab.json`` + ``merges.txt``) with CosyVoice's special tokens appended."""

    def __init__(self, folder: Path, specials: tuple[str, ...] = QWEN_SPECIALS_V2) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.tokenizer.add_special_tokens(
            {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "additional_special_tokens": list(specials)}
        )

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_id(self, token: str) -> int | None:
        found = self.tokenizer.convert_tokens_to_ids(token)
        return None if found is None or found == self.tokenizer.unk_token_id else int(found)


def whisper_ranks(model_dir: Path) -> Path:
    """Where the v1 BPE ranks are: the model directory first, then an installed openai-whisper."""
    local = model_dir / "multilingual.tiktoken"
    if local.is_file():
        return local
    spec = importlib.util.find_spec("whisper")
    if spec is not None and spec.submodule_search_locations:
        packaged = Path(spec.submodule_search_locations[0]) / "assets" / "multilingual.tiktoken"
        if packaged.is_file():
            return packaged
    raise FileNotFoundError(
        f"{local}: not found. CosyVoice-300M models use Whisper's multilingual BPE; copy "
        "'multilingual.tiktoken' from the openai-whisper package's assets into the model directory "
        "(or pip install openai-whisper)"
    )
