"""ONNX export of the CoMER-style image model, and decoding on ONNX Runtime.

Two graphs: ``encoder.onnx`` maps an image (padded to the encoder's stride) to the decoder's
memory, already projected to every layer's attention keys and values; ``step.onnx`` advances the
decoder by one token given per-layer caches (the earlier positions' self-attention keys and
values, the summed coverage), exactly as :meth:`TransformerHMER.step_state` does.
:class:`OnnxHMER` wraps both behind the model interface the searches in :mod:`hmer.decoding`
use, so greedy, beam and bidirectional rescoring run unchanged on ONNX Runtime. PyTorch stays
the reference: the tests compare both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from hmer.data.vocab import EOS_ID, SOS_ID, Vocab
from hmer.models.encoders import STRIDE, downsample_mask, pad_to_stride
from hmer.models.positional import _sinusoid
from hmer.models.transformer import TransformerHMER

ENCODER, STEP, META = "encoder.onnx", "step.onnx", "onnx.json"
# Per-layer decoder caches, the step graph's inputs and outputs: self-attention keys and values
# (N,heads,t,d/heads) and summed coverage (N,maps,1,L).
CACHES = ("k", "v", "cov")


class _Encoder(nn.Module):
    """Image (1,1,H,W), H and W multiples of STRIDE, and its padding mask -> memory keys/values."""

    def __init__(self, model: TransformerHMER):
        super().__init__()
        self.m = model

    def forward(self, image: torch.Tensor, mask: torch.Tensor):
        m = self.m
        feat = m.feat_proj(m.encoder(image))
        fmask = downsample_mask(mask)
        b, d, h, w = feat.shape
        feat = m.feat_norm(m.img_pos(feat.permute(0, 2, 3, 1), fmask)).reshape(b, h * w, d)
        kv = torch.stack([torch.stack(layer.memory_kv(feat)) for layer in m.layers])
        return kv, fmask  # (layers, 2, 1, heads, L, d/heads), (1, h, w)


class _Step(nn.Module):
    """One decoder step for N rows sharing one input's memory (see ``step_state``)."""

    def __init__(self, model: TransformerHMER):
        super().__init__()
        self.m = model

    def forward(self, token, pos, kv, fmask, *caches):
        m = self.m
        hw = (fmask.shape[1], fmask.shape[2])
        mem_pad = fmask.reshape(1, -1)
        x = m.embed_norm(m.embed(token[:, None]) + _sinusoid(pos, m.embed.embedding_dim))
        prev, out = None, []
        for i, layer in enumerate(m.layers):
            cache = dict(zip(CACHES, caches[len(CACHES) * i : len(CACHES) * (i + 1)], strict=True))
            x, prev = layer.step(x, (kv[i, 0], kv[i, 1]), mem_pad, hw, cache, prev)
            out += [cache[k] for k in CACHES]
        return (m.head(m.final_norm(x))[:, -1].float().log_softmax(-1), *out)


def export_onnx(model: TransformerHMER, vocab: Vocab, out_dir: str | Path, opset: int = 18) -> Path:
    """Write ``encoder.onnx``, ``step.onnx`` and ``onnx.json`` (with the vocabulary) into
    ``out_dir``."""
    if type(model) is not TransformerHMER or model.layers[0].arm is None:
        raise TypeError("ONNX export covers the CoMER-style image model (transformer, coverage)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    image = torch.zeros(1, 1, 64, 192)
    image[..., 20:40, 30:150] = 1.0
    mask = torch.zeros(1, 64, 192, dtype=torch.bool)
    dyn = torch.export.Dim.DYNAMIC
    with torch.no_grad():
        torch.onnx.export(
            _Encoder(model).eval(),
            (image, mask),
            out / ENCODER,
            input_names=["image", "mask"],
            output_names=["kv", "fmask"],
            dynamic_shapes={"image": {2: dyn, 3: dyn}, "mask": {1: dyn, 2: dyn}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
        kv, fmask = _Encoder(model)(image, mask)
        n, t = 3, 2
        caches = []
        for layer in model.layers:
            c, heads = layer.arm.conv.in_channels, layer.nhead
            self_kv = (n, heads, t, model.embed.embedding_dim // heads)
            caches += [torch.randn(self_kv), torch.randn(self_kv), torch.rand(n, c, 1, kv.shape[4])]
        names = [f"{k}{i}" for i in range(len(model.layers)) for k in CACHES]
        cache_dims = [
            {0: dyn, 3: dyn} if nm.startswith("cov") else {0: dyn, 2: dyn} for nm in names
        ]
        torch.onnx.export(
            _Step(model).eval(),
            (torch.tensor([1, 4, 5]), torch.tensor([t]), kv, fmask, *caches),
            out / STEP,
            input_names=["token", "pos", "kv", "fmask", *names],
            output_names=["logp", *[f"{nm}_out" for nm in names]],
            dynamic_shapes=(
                {0: dyn},
                None,
                {4: dyn},
                {1: dyn, 2: dyn},
                tuple(cache_dims),  # the *caches of forward, as one group
            ),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    meta = {
        "vocab": vocab.to_json(),
        "layers": len(model.layers),
        "d_model": model.embed.embedding_dim,
        "cov_channels": [layer.arm.conv.in_channels for layer in model.layers],
        "nhead": model.layers[0].nhead,
        "caches": list(CACHES),
        "vocab_size": model.vocab_size,
    }
    (out / META).write_text(json.dumps(meta, indent=1))
    return out


class OnnxHMER:
    """An exported model on ONNX Runtime, with the interface :mod:`hmer.decoding` searches use."""

    kind = "seq2seq"
    input_kind = "image"
    bidirectional = True
    joins_inputs = False  # the step graph reads one input's memory

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        meta = json.loads((path / META).read_text())
        self.layers, self.d_model = meta["layers"], meta["d_model"]
        self.cov_channels = meta["cov_channels"]
        self.nhead = meta.get("nhead")
        # Exports from before the self-attention key/value cache kept normalized inputs ("h").
        self.caches = tuple(meta.get("caches", ("h", "cov")))
        self.vocab_size = meta["vocab_size"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(path / ENCODER), opts, providers=providers)
        self.stepper = ort.InferenceSession(str(path / STEP), opts, providers=providers)
        self.cache_names = [f"{k}{i}" for i in range(self.layers) for k in self.caches]

    def eval(self) -> OnnxHMER:
        return self

    def start_tokens(self, direction: str) -> tuple[int, int]:
        """(start, end) token ids of a direction, as the exported model was trained."""
        return (SOS_ID, EOS_ID) if direction == "l2r" else (EOS_ID, SOS_ID)

    def encode(self, images: torch.Tensor, masks: torch.Tensor) -> dict:
        """One image (1,1,H,W) and its mask -> memory (keys/values of every layer)."""
        if images.shape[0] != 1:
            raise ValueError("the ONNX runtime decodes one image at a time")
        images, masks = pad_to_stride(images, masks, STRIDE)
        kv, fmask = self.encoder.run(None, {"image": images.float().numpy(), "mask": masks.numpy()})
        # "memory" is the batch-first view the searches read (batch size, device).
        return {"memory": torch.from_numpy(kv).movedim(2, 0), "kv": kv, "fmask": fmask}

    def select(self, mem: dict, index: torch.Tensor) -> dict:
        return mem  # one input: every row reads the same memory

    def join(self, mems: list[dict]) -> dict:
        if len(mems) != 1:
            raise ValueError("the ONNX runtime decodes one input at a time")
        return mems[0]

    def decoder_state(self, mem: dict) -> dict:
        # Caches are made at the first step, when the number of rows is known.
        return {"kv": mem["kv"], "fmask": mem["fmask"], "caches": None, "t": 0}

    def _empty_caches(self, rows: int, length: int) -> list[np.ndarray]:
        caches = []
        for c in self.cov_channels:
            if self.caches == ("h", "cov"):
                caches.append(np.zeros((rows, 0, self.d_model), np.float32))
            else:
                self_kv = (rows, self.nhead, 0, self.d_model // self.nhead)
                caches += [np.zeros(self_kv, np.float32), np.zeros(self_kv, np.float32)]
            caches.append(np.zeros((rows, c, 1, length), np.float32))
        return caches

    def step_state(self, last: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        if state["caches"] is None:
            state["caches"] = self._empty_caches(len(last), state["kv"].shape[4])
        feeds = {
            "token": last.numpy().astype(np.int64),
            "pos": np.array([state["t"]], np.int64),
            "kv": state["kv"],
            "fmask": state["fmask"],
            **dict(zip(self.cache_names, state["caches"], strict=True)),
        }
        logp, *caches = self.stepper.run(None, feeds)
        state["caches"], state["t"] = caches, state["t"] + 1
        return torch.from_numpy(logp), state

    @staticmethod
    def reorder_state(state: dict, rows: torch.Tensor, inputs: torch.Tensor | None = None) -> dict:
        # One input: ``inputs`` (the inputs still decoding) can only be that one.
        index = rows.numpy()
        caches = state["caches"]
        return {**state, "caches": None if caches is None else [c[index] for c in caches]}

    def decode(self, mem: dict, tgt: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N,T,V) of teacher-forced ``tgt`` (N,T), one step at a time.

        Causal attention makes this equal to a full teacher-forced pass at every position that
        precedes a sequence's padding, which is all rescoring reads.
        """
        state = self.decoder_state(mem)
        out = []
        for t in range(tgt.shape[1]):
            lp, state = self.step_state(tgt[:, t], state)
            out.append(lp)
        return torch.stack(out, 1)


def load_onnx(path: str | Path, threads: int | None = None) -> tuple[OnnxHMER, Vocab]:
    """An export folder's model on ONNX Runtime and its vocabulary."""
    path = Path(path)
    if not (path / META).is_file():
        raise FileNotFoundError(f"{path}: not an ONNX export folder (no {META})")
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("ONNX Runtime is not installed: pip install 'hmer[onnx]'") from exc
    vocab = Vocab.from_json(json.loads((path / META).read_text())["vocab"])
    return OnnxHMER(path, threads), vocab
