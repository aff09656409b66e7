"""Run by test_train_bc under torchrun (or plainly): dump the gradient of one BC step.

``python ddp_gradient_probe.py DATA OUT.safetensors`` builds the trainer exactly as
``grrl train-bc`` does, computes step 0's gradient (DDP-averaged when launched by torchrun)
and, on rank 0, writes every parameter's gradient to OUT.
"""

from __future__ import annotations

import sys

from safetensors.torch import save_file

from grrl_learner.train_bc import BCTrainer, TrainConfig, finish_distributed


def main(data: str, out: str) -> None:
    cfg = TrainConfig(data=data, out=out + ".ckpt", batch_size=8, width=64, layers=2, chunk=8,
                      progress=False)  # fmt: skip
    trainer = BCTrainer(cfg)
    loss = trainer.compute_gradients(step=0)
    grads = {name: p.grad.detach().clone().contiguous()
             for name, p in trainer.model.named_parameters() if p.grad is not None}  # fmt: skip
    if trainer.rank == 0:
        save_file(grads, out, metadata={"world": str(trainer.world), "loss": str(loss.item())})
    trainer.release_distributed()
    finish_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
