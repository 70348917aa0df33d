"""Token vocabulary with the special tokens every model shares."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

PAD, SOS, EOS, UNK = "<pad>", "<sos>", "<eos>", "<unk>"
SPECIALS = (PAD, SOS, EOS, UNK)


class Vocab:
    """Maps LaTeX tokens to ids and back. Unknown tokens map to ``<unk>``; they never raise."""

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = list(SPECIALS)
        for t in tokens:
            if t not in self.itos:
                self.itos.append(t)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    pad = property(lambda self: 0)
    sos = property(lambda self: 1)
    eos = property(lambda self: 2)
    unk = property(lambda self: 3)

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
    def from_sequences(cls, sequences: Iterable[list[str]], min_count: int = 1) -> Vocab:
        """Build from token sequences, most frequent first (ties alphabetical)."""
        counts: dict[str, int] = {}
        for seq in sequences:
            for t in seq:
                counts[t] = counts.get(t, 0) + 1
        ranked = sorted(
            (t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t)
        )
        return cls(ranked)

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
