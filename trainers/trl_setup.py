"""What every trl trainer here gets: quiet logs, device flags, and a stop-and-progress callback."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["control_callback", "device_args", "quiet"]


def quiet(trainer: Any) -> None:
    """transformers prints every log dict when tqdm is off; progress bars, ``on_log`` and the lineage carry them."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def device_args() -> dict[str, Any]:
    """trl config fields for this machine: trl turns bf16 on by default, which CPUs (and older GPUs) refuse."""
    import torch

    if not torch.cuda.is_available():
        return {"bf16": False, "fp16": False, "dataloader_pin_memory": False}
    return {"bf16": torch.cuda.is_bf16_supported(), "dataloader_pin_memory": True}


def control_callback(stop: threading.Event | None, progress: Progress | None, description: str) -> Any:
    """A trl callback: a progress bar over training steps, and a stop request honoured between steps."""
    from transformers import TrainerCallback

    class Control(TrainerCallback):
        task: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if progress is not None:
                self.task = progress.add_task(description, total=state.max_steps or None)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if progress is not None and self.task is not None:
                progress.update(self.task, completed=state.global_step)
            if stop is not None and stop.is_set():
                control.should_training_stop = True

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if progress is not None and self.task is not None:
                progress.remove_task(self.task)

    return Control()
