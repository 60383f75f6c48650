"""The held-out loss of proxies (`flmplan tune`, `flmplan grow-vs-scratch`): the same sequences from the
end of the corpus, which no proxy trains on, scored without updating the model."""

from __future__ import annotations

import torch

from runtime.data.corpus import Corpus
from runtime.model.decoder import Decoder, causal_lm_loss

# The final loss of a proxy: its loss on EVAL_SEQUENCES sequences of the last EVAL_SHARE of the
# data, which no proxy trains on; the same sequences for every proxy of a grid.
EVAL_SHARE = 0.05
EVAL_SEQUENCES = 64


def held_out(corpus: Corpus, seq: int, count: int = EVAL_SEQUENCES) -> torch.Tensor:
    """Held-out sequences (n, seq + 1) from the last EVAL_SHARE of the data, which no proxy trains on."""
    return torch.from_numpy(corpus.held_out(seq, EVAL_SHARE, count))


@torch.no_grad()
def held_out_loss(model: Decoder, held: torch.Tensor, device: torch.device) -> float:
    held = held.to(device)
    return float(causal_lm_loss(model(held[:, :-1]), held[:, 1:]))


@torch.no_grad()
def held_out_losses(model: Decoder, held: torch.Tensor, device: torch.device, chunk: int = 64) -> torch.Tensor:
    """Each held-out sequence's mean loss (on the CPU): two runs scored on the same sequences give a
    paired difference whose standard error says whether the eval resolves it."""
    out = []
    for part in held.split(chunk):
        part = part.to(device)
        logits = model(part[:, :-1]).float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), part[:, 1:], reduction="none")
        out.append(nll.mean(dim=1).cpu())
    return torch.cat(out)
