"""The one model file format: what `caltrain export` writes and `caltrain assess --model` and `caltrain deploy
--weights` read.

A torch file (read with `weights_only=True`, so it cannot run code) holding `{"format": "caltrain-model/1",
"model": the architecture (a zoo name or a spec document), "state_dict": the whole model's weights, ...}`;
`export` adds the job id and its seed. Any other file is refused with one line saying what it is not.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "caltrain-model/1"


@dataclass(frozen=True)
class ModelFile:
    model: Any  # the architecture (zoo name or spec document), as `build_model` takes it
    state_dict: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. job_id, seed

    def save(self, path: Path) -> None:
        import torch

        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"format": FORMAT, "model": self.model, "state_dict": self.state_dict, **self.meta}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ModelFile:
        import torch

        from caltrain.errors import ModelError
        from caltrain.models import build_model

        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        try:
            with warnings.catch_warnings():  # a foreign file's pickle protocol warning is not the user's concern
                warnings.simplefilter("ignore")
                doc = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load of any file: whatever fails, the file is not one of ours
            raise ModelError(f"{path}: not a caltrain model file (unreadable as one: {type(exc).__name__})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            what = "a bare state_dict" if isinstance(doc, dict) and "format" not in doc and "model" not in doc \
                else "another format"
            raise ModelError(f"{path}: {what}, not a caltrain model file ({FORMAT}: written by `caltrain export`)")
        state = doc.get("state_dict")
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelError(f"{path}: its state_dict is not a dict of tensors")
        model = build_model(doc["model"])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{path}: weights do not fit {doc['model']}: {str(exc).splitlines()[0]}") from None
        meta = {k: v for k, v in doc.items() if k not in ("format", "model", "state_dict")}
        return cls(doc["model"], state, meta)

    def build(self) -> Any:
        """The model, with these weights."""
        from caltrain.models import build_model

        model = build_model(self.model)
        model.load_state_dict(self.state_dict, strict=True)
        return model
