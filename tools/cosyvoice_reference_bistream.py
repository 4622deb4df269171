"""Produce tests/fixtures/cosyvoice/reference_v2_bistream.pt: upstream's text-fed ("bistream") decoding.

Runs in the isolated reference venv, like tools/cosyvoice_reference_fixtures.py
(whose model loading it uses), and never imports the gateway's package:

    .refvenv/bin/python tools/cosyvoice_reference_bistream.py

The tiny v2 model is random, so its own choices would rarely take the fill
token; the sampler is replaced by a scripted one both sides apply: argmax over
the speech tokens, the fill token at given calls while text is open, and the
stop token after a given number of calls once it is closed. Every call's
log-probabilities are recorded, so the layout (interleaved prompt blocks, a
text block after each fill, the tail with the task token) is checked position
by position, not only through the tokens.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cosyvoice_reference_fixtures import OUT, ROOT, SEED, load_reference  # noqa: E402
from cosyvoice_reference_fixtures_check import fingerprint  # noqa: E402

PIECES = (3, 4, 1, 7, 2, 6, 3, 9)  # text tokens per piece, as an LLM's words arrive
FILL_CALLS = (6, 21)  # sampler calls (open text) that take the fill token; the rest come forced
TAIL_CALLS = 25  # sampler calls once the text is closed before the stop token


def bistream_case(llm, gen: torch.Generator, with_prompt: bool) -> dict:
    text_vocab = 1020
    pieces = [torch.randint(0, text_vocab, (1, n), generator=gen) for n in PIECES]
    prompt_text = torch.randint(0, text_vocab, (1, 6 if with_prompt else 0), generator=gen)
    prompt_speech = torch.randint(0, llm.speech_token_size, (1, 20 if with_prompt else 0), generator=gen)
    speech, fill = llm.speech_token_size, llm.speech_token_size + 2
    rows, open_rows, choices = [], [], []

    def sampling_ids(weighted_scores, decoded_tokens, sampling, ignore_eos=True):
        rows.append(weighted_scores.detach().clone().view(-1))
        open_rows.append(ignore_eos)
        calls_open, calls_closed = sum(open_rows), len(open_rows) - sum(open_rows)
        if ignore_eos and calls_open in FILL_CALLS:
            choice = fill
        elif not ignore_eos and calls_closed > TAIL_CALLS:
            choice = speech
        else:
            choice = int(weighted_scores.view(-1)[:speech].argmax())
        choices.append(choice)
        return torch.tensor(choice)

    llm.sampling_ids = sampling_ids
    tokens = []
    with torch.no_grad():
        for token in llm.inference_bistream(
            text=iter(pieces), prompt_text=prompt_text, prompt_text_len=torch.tensor([prompt_text.size(1)]),
            prompt_speech_token=prompt_speech, prompt_speech_token_len=torch.tensor([prompt_speech.size(1)]),
            embedding=torch.zeros(1, 0),
        ):
            tokens.append(int(token))
    return {
        "pieces": [p[0] for p in pieces], "prompt_text": prompt_text[0], "prompt_speech": prompt_speech[0],
        "tokens": torch.tensor(tokens), "choices": torch.tensor(choices), "open": torch.tensor(open_rows),
        "logp": torch.stack(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "v2"
        subprocess.run(
            [args.repo_python, str(ROOT / "tools" / "make_cosyvoice_model.py"), str(model_dir),
             "--version", "v2", "--seed", "0"],
            check=True,
        )
        llm = load_reference(model_dir, 2)["llm"]
        gen = torch.Generator().manual_seed(SEED + 20)
        fixture = {
            "fingerprint": fingerprint(model_dir),
            "plain": bistream_case(llm, gen, with_prompt=False),
            "prompt": bistream_case(llm, gen, with_prompt=True),
        }
    torch.save(fixture, OUT / "reference_v2_bistream.pt")
    print(f"wrote {OUT / 'reference_v2_bistream.pt'}")


if __name__ == "__main__":
    sys.exit(main())
