"""Token vocabulary with the special tokens every model shares."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

PAD, SOS, EOS, UNK = "<pad>", "<sos>", "<eos>", "<unk>"
SPECIALS = (PAD, SOS, EOS, UNK)
# The ids of the special tokens, the same in every vocabulary and model (the one place they are
# defined): <pad> is also the CTC blank, and a right-to-left target starts with <eos>.
PAD_ID, SOS_ID, EOS_ID, UNK_ID = range(len(SPECIALS))


class Vocab:
    """Maps LaTeX tokens to ids and back. Unknown tokens map to ``<unk>``; they never raise."""

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = list(SPECIALS)
        for t in tokens:
            if t not in self.itos:
                self.itos.append(t)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    pad = property(lambda self: PAD_ID)
    sos = property(lambda self: SOS_ID)
    eos = property(lambda self: EOS_ID)
    unk = property(lambda self: UNK_ID)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Token strings to ids (unknown tokens become ``<unk>``)."""
        return [self.stoi.get(t, self.unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids to token strings, stopping at ``<eos>`` and dropping other special tokens."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i >= len(self.itos) or i < len(SPECIALS):
                continue
            out.append(self.itos[i])
        return out

    @classmethod
    def from_dictionary(cls, path: str | Path) -> Vocab:
        """Read a ``token<TAB>index`` dictionary file (as shipped with the CROHME captions)."""
        rows = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                tok, idx = line.split("\t") if "\t" in line else line.rsplit(maxsplit=1)
                rows.append((int(idx), tok.strip()))
        return cls(t for _, t in sorted(rows) if t not in ("<eol>", "<eos>", "<sos>"))

    def to_json(self) -> str:
        return json.dumps(self.itos[len(SPECIALS) :], ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        return cls(json.loads(text))
