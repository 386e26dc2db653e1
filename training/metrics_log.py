"""What a run records while it trains: metric records in RUN/metrics.jsonl (progress: clibd_training.progress).

JSON lines are the record a run leaves behind (tests and `clibd` read them back); TensorBoard is a
convenience used only when installed.  Only rank 0 writes, so N processes do not write N copies.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricLog:
    """Metrics as JSON lines in RUN/metrics.jsonl, and to TensorBoard when it is installed (rank 0)."""

    def __init__(self, output: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(output) / "metrics.jsonl"
        self.tb: Any = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(output) / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (``kind`` train or val, ``step``, ``epoch``, numbers); a no-op off rank 0."""
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch") and math.isfinite(value):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record.get("step", 0))
            self.tb.flush()

