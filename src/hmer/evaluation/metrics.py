"""Recognition metrics as the field reports them, on whitespace-tokenized LaTeX.

ExpRate and the within-1/2 rates are the CROHME measures; WER, CER, BLEU-4 and the edit score are
what image-to-LaTeX projects report. Rates are in percent.

The field's convention (WAP, BTTR, CoMER) compares the raw space-separated tokens with the caption
files: that is ``normalize="none"``, the default of :func:`score`. ``"equivalent"`` also maps
equivalent spellings of well-formed LaTeX (``\\le`` and ``\\leq``, script order) and leaves
malformed sequences as written; ``"full"`` applies the token-level rewriting to malformed sequences
too, which can change their edit distances (hmer's scoring before 0.2).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

NORMALIZATIONS = ("none", "equivalent", "full")


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences (tokens or characters)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def exprate(preds: list[list[str]], truths: list[list[str]]) -> dict[str, float]:
    """ExpRate and the within-1 / within-2 token-error rates, in percent."""
    n = len(truths)
    if n == 0:
        return {"exprate": 0.0, "le1": 0.0, "le2": 0.0}
    dists = [edit_distance(p, t) for p, t in zip(preds, truths, strict=True)]
    return {
        "exprate": 100.0 * sum(d == 0 for d in dists) / n,
        "le1": 100.0 * sum(d <= 1 for d in dists) / n,
        "le2": 100.0 * sum(d <= 2 for d in dists) / n,
    }


def _chars(tokens: Sequence[str]) -> str:
    # Characters of the LaTeX without the separating spaces, which the token split introduced.
    return "".join(tokens)


def wer(preds: list[list[str]], truths: list[list[str]]) -> float:
    """Corpus token error rate in percent: summed token edit distances over summed truth lengths."""
    dist = sum(edit_distance(p, t) for p, t in zip(preds, truths, strict=True))
    total = sum(len(t) for t in truths)
    return 100.0 * dist / total if total else 0.0


def cer(preds: list[list[str]], truths: list[list[str]]) -> float:
    """Corpus character error rate in percent, over the tokens joined without spaces."""
    dist = sum(edit_distance(_chars(p), _chars(t)) for p, t in zip(preds, truths, strict=True))
    total = sum(len(_chars(t)) for t in truths)
    return 100.0 * dist / total if total else 0.0


def edit_score(preds: list[list[str]], truths: list[list[str]]) -> float:
    """Mean over expressions of ``1 - distance / max(len(pred), len(truth))``, in percent."""
    if not truths:
        return 0.0
    total = 0.0
    for p, t in zip(preds, truths, strict=True):
        longest = max(len(p), len(t))
        total += 1.0 - edit_distance(p, t) / longest if longest else 1.0
    return 100.0 * total / len(truths)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(preds: list[list[str]], truths: list[list[str]], max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002) with one reference each, in percent (0-100).

    Clipped n-gram precisions for n = 1..``max_n`` are pooled over the corpus and combined by a
    geometric mean, times the brevity penalty ``exp(1 - r / c)`` when the candidates are shorter.
    Unsmoothed: 0 when some order has no match.
    """
    matches = [0] * max_n
    counts = [0] * max_n
    cand_len = ref_len = 0
    for p, t in zip(preds, truths, strict=True):
        cand_len += len(p)
        ref_len += len(t)
        for n in range(1, max_n + 1):
            cand = _ngrams(p, n)
            ref = _ngrams(t, n)
            matches[n - 1] += sum(min(c, ref[g]) for g, c in cand.items())
            counts[n - 1] += max(len(p) - n + 1, 0)
    if cand_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / c) for m, c in zip(matches, counts, strict=True)) / max_n
    brevity = 1.0 if cand_len > ref_len else math.exp(1.0 - ref_len / cand_len)
    return 100.0 * brevity * math.exp(log_precision)


def normalizer(how: str) -> Callable[[Sequence[str]], list[str]]:
    """The token mapping applied to both sides before scoring (see the module docstring)."""
    from hmer.data.latex import normalize_prediction, normalize_well_formed

    funcs = {"none": list, "equivalent": normalize_well_formed, "full": normalize_prediction}
    if how not in funcs:
        raise ValueError(f"unknown normalization {how!r}; expected one of {NORMALIZATIONS}")
    return funcs[how]


def match_ids(preds: Mapping[str, Sequence[str]], truths: Mapping) -> tuple[dict, int]:
    """Key predictions by truth id, dropping one trailing ``_0`` where only that makes them match.

    The official CROHME offline bitmaps are named ``ID_0.bmp``. A prediction id is renamed only
    when it is not a truth id itself, its stem is, and no other prediction has the stem already.
    Returns the predictions and how many were renamed.
    """
    out = dict(preds)
    renamed = 0
    for key in preds:
        stem = key[:-2]
        if key.endswith("_0") and key not in truths and stem in truths and stem not in out:
            out[stem] = out.pop(key)
            renamed += 1
    return out, renamed


def score(
    preds: Mapping[str, Sequence[str]],
    truths: Mapping[str, Sequence[str]],
    normalize: str = "none",
) -> dict[str, float | int | str | list[str]]:
    """All metrics of ``preds`` against ``truths`` (both id -> tokens), over the truth ids.

    Both sides go through ``normalize`` (one of :data:`NORMALIZATIONS`) first. Prediction ids are
    matched to truth ids by :func:`match_ids`. A truth without prediction counts as an empty
    prediction (wrong) and is listed in ``missing``; predictions without truth are ignored and
    listed in ``extra``.
    """
    norm = normalizer(normalize)
    preds, renamed = match_ids(preds, truths)
    ids = list(truths)
    missing = [k for k in ids if k not in preds]
    extra = [k for k in preds if k not in truths]
    p = [norm(preds.get(k, [])) for k in ids]
    t = [norm(truths[k]) for k in ids]
    rates = exprate(p, t)
    return {
        "n": len(ids),
        "normalization": normalize,
        "exact": sum(a == b for a, b in zip(p, t, strict=True)),
        **rates,
        "wer": wer(p, t),
        "cer": cer(p, t),
        "bleu4": bleu(p, t),
        "edit_score": edit_score(p, t),
        "n_missing": len(missing),
        "n_extra": len(extra),
        "n_matched_without_0": renamed,
        "missing": missing,
        "extra": extra,
    }


def format_scores(result: dict) -> str:
    """The text table of ``hmer score``."""
    n = result["n"]
    lines = [
        f"{'normalization':<22s} {result['normalization']}",
        f"{'expressions':<22s} {n}",
        f"{'exact matches':<22s} {result['exact']}",
        f"{'ExpRate %':<22s} {result['exprate']:.2f}",
        f"{'<=1 error %':<22s} {result['le1']:.2f}",
        f"{'<=2 errors %':<22s} {result['le2']:.2f}",
        f"{'WER % (tokens)':<22s} {result['wer']:.2f}",
        f"{'CER % (characters)':<22s} {result['cer']:.2f}",
        f"{'BLEU-4':<22s} {result['bleu4']:.2f}",
        f"{'edit score %':<22s} {result['edit_score']:.2f}",
        f"{'missing predictions':<22s} {result['n_missing']}",
        f"{'predictions w/o truth':<22s} {result['n_extra']}",
    ]
    if result["n_matched_without_0"]:
        lines.append(f"{'matched as ID_0':<22s} {result['n_matched_without_0']}")
    if result["missing"]:
        shown = ", ".join(result["missing"][:10])
        more = f" (+{len(result['missing']) - 10} more)" if len(result["missing"]) > 10 else ""
        lines.append(f"missing: {shown}{more}")
    return "\n".join(lines)
