"""BarcodeBERT-style masked k-mer pretraining of the DNA encoder (`clibd train --stage dna-pretrain`).

No pretrained BarcodeBERT weights can be downloaded in an offline lab, yet a DNA encoder that has
seen barcodes before contrastive training learns faster and generalises to unseen species better
(BarcodeBERT, CLIBD).  This stage trains :class:`clibd_training.models.DNAMaskedLM` on any barcode file
clibd reads (FASTA, BOLD TSV, BIOSCAN, simulate folders) and saves `RUN/dna_encoder/`, which a
contrastive config then names as `model.dna.pretrained`.  It is a task of the same engine as contrastive
training (:mod:`clibd_training.engine`): torchrun workers, DDP, DistributedSampler with set_epoch,
one-cycle AdamW, atomic checkpoints with every rank's RNG, exact resume.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from clibd_cli.errors import ClibdError
from clibd_training.config import TrainConfig
from clibd_training.distributed import Dist, use_bf16
from clibd_training.engine import Task
from clibd_training.models import DNAMaskedLM, ModelConfig

VAL_SHARE = 0.02  # barcodes held out to measure masked-token loss and accuracy after each epoch


def read_barcodes(path: str) -> list[str]:
    """Normalised barcodes from a sequence file, or from a simulate folder / training manifest."""
    source = Path(path)
    if source.is_dir() or source.suffix.lower() in (".h5", ".hdf5"):
        from clibd_training.data import load_specimens

        return [s.sequence for s in load_specimens(source) if s.sequence]
    from clibd_cli.sequences import read_sequences

    return [r.sequence for r in read_sequences([source]).records if r.sequence]


class DNAPretrainTask(Task):
    """Masked-k-mer training of the DNA encoder on one rank; rank 0 writes `output/dna_encoder` at the end.

    Every rank tokenises all barcodes once (a fixed, seeded order) and holds out the first
    :data:`VAL_SHARE` of them; the lowest held-out masked loss picks ``best.pt``.
    """

    records = "barcodes"
    tags: ClassVar[dict[str, str]] = {"stage": "dna-pretrain"}
    score = "masked_loss"
    higher_is_better = False

    def __init__(self, cfg: TrainConfig, output: Path, env: Dist) -> None:
        self.cfg, self.output, self.env = cfg, Path(output), env
        self.model = DNAMaskedLM(ModelConfig.from_dict(cfg.model).dna).to(env.device)
        sequences = read_barcodes(cfg.data.path)
        if len(sequences) < 10:
            raise ClibdError(f"{cfg.data.path}: only {len(sequences)} barcodes; DNA pretraining needs more.")
        order = np.random.default_rng(cfg.seed).permutation(len(sequences))
        n_val = max(1, int(len(sequences) * VAL_SHARE))
        ids, mask = self.model.tokenizer([sequences[i] for i in order])
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        self.train_set = TensorDataset(ids_t[n_val:], mask_t[n_val:])
        self.val_ids, self.val_mask = ids_t[:n_val], mask_t[:n_val]
        self.bf16 = use_bf16(cfg, env)

    def loader(self, sampler: Sampler) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=sampler, drop_last=True)

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        input_ids, attention_mask = (t.to(self.env.device) for t in batch)
        masked, labels = self.model.mask_tokens(input_ids, attention_mask, self.cfg.mlm_probability)
        return model(masked, attention_mask, labels).loss, {}

    def checkpoint(self) -> dict[str, Any]:
        return dict(self.tags)

    def finish(self, save: Callable[[str], None]) -> None:
        """Save the encoder where a contrastive config's ``model.dna.pretrained`` can name it."""
        if self.env.main:
            self.model.save_pretrained(self.output / "dna_encoder")
        dist.barrier()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Masked-token loss and accuracy on the held-out barcodes, with a fixed mask (same on every rank)."""
        model, cfg, device = self.model, self.cfg, self.env.device
        model.eval()
        generator = torch.Generator().manual_seed(cfg.seed)
        total_loss, correct, count = 0.0, 0, 0
        for start in range(0, len(self.val_ids), cfg.batch_size):
            input_ids = self.val_ids[start : start + cfg.batch_size]
            attention_mask = self.val_mask[start : start + cfg.batch_size]
            masked, labels = model.mask_tokens(input_ids, attention_mask, cfg.mlm_probability, generator=generator)
            masked, labels, attention_mask = masked.to(device), labels.to(device), attention_mask.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = model(masked, attention_mask, labels)
            chosen = labels != -100
            n = int(chosen.sum())
            total_loss += float(out.loss) * n
            correct += int((out.logits.argmax(-1)[chosen] == labels[chosen]).sum())
            count += n
        model.train()
        return {"masked_loss": total_loss / max(count, 1), "masked_accuracy": correct / max(count, 1)}
