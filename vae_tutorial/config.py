"""Training configuration: one typed dataclass and three named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .data import env_flag


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in every checkpoint."""

    # model
    model: str = "conv"  # "conv" (ConvVAE) or "seed" (the seed notebook's network, fixed)
    width: int = 64  # ConvVAE channels at 16x16 (2x below)
    latent_dim: int = 128  # size of z
    res_blocks: int = 1  # ConvVAE residual blocks at 8x8, per side
    likelihood: str = "logistic_mixture"  # bernoulli | gaussian | logistic | logistic_mixture
    mixtures: int = 3  # components of the logistic mixture
    # data
    data: str | None = None  # training root holding cifar-10-batches-py/; None: default_root()
    test_data: str | None = None  # test root; None: same as data
    extra_data: str | None = None  # a second training root mixed in (e.g. the exact subset)
    extra_repeats: int = 1  # how many times the extra_data images appear per epoch
    allow_partial: bool | None = None  # accept unverified copies; None: read the environment
    train_limit: int | None = None  # use only the first N training images (fast mode)
    test_limit: int | None = None  # use only the first N test images
    # optimisation
    epochs: int = 8  # passes over the training set
    batch_size: int = 128  # images per step (global, over all processes)
    lr: float = 2e-3  # peak learning rate of Adam(W)
    lr_warmup_steps: int = 200  # linear warm-up, then cosine decay to lr * lr_final
    lr_final: float = 0.05  # final learning rate as a fraction of lr
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 200.0  # max global gradient norm (of the per-image loss in nats)
    beta: float = 1.0  # weight of the KL term (1 = the true ELBO)
    kl_warmup_epochs: float = 1.0  # KL weight rises linearly from 0 to beta over this long
    free_bits: float = 0.0  # nats per latent dim below which KL is not penalised (0: off)
    # run
    seed: int = 0  # seeds the weights, the data order and the sampling noise
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    device: str = "auto"  # "auto" (cuda, then mps, then cpu) or a torch device string
    amp: bool = True  # bf16 autocast where bf16 is native: Ampere+ GPUs, AMX/AVX512-BF16 CPUs
    channels_last: bool | None = None  # None: on CUDA only (it measured no faster on CPU)
    compile: bool = False  # torch.compile the model (opt-in: it takes a while to compile)
    out_dir: str = "runs/conv-cpu"  # checkpoint.pt and history.json go here
    progress: bool = True  # tqdm progress bars
    log_every: int = 25  # steps between host syncs (progress bar, NaN check)
    time_limit: float | None = None  # minutes of training; the lr decay then follows the clock
    notes: dict = field(default_factory=dict)  # free-form provenance saved with the run

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed; unknown names raise a clear error."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


PRESETS: dict[str, TrainConfig] = {
    # CI and smoke runs: a few hundred images, a tiny network, seconds on a CPU.
    "fast": TrainConfig(width=16, latent_dim=32, res_blocks=1, mixtures=1, epochs=2,
                        batch_size=64, train_limit=512, test_limit=256, lr_warmup_steps=5,
                        kl_warmup_epochs=0.5, out_dir="runs/fast"),
    # The full run on a 2-core CPU: 18 minutes in bf16 (AMX), 30 in fp32. Offline, the 50,000
    # JPEG-decoded training images are mixed with the 5,085 exact ones ten times
    # (--set extra_data=...), so that half of every epoch has the real pixel statistics.
    "cpu": TrainConfig(extra_repeats=10),
    # A longer, wider run for one GPU.
    "gpu": TrainConfig(width=128, res_blocks=2, latent_dim=256, mixtures=5, epochs=200,
                       batch_size=256, lr=2e-3, lr_warmup_steps=500, kl_warmup_epochs=5.0,
                       out_dir="runs/conv-gpu"),
}


def preset(name: str | None = None, **overrides) -> TrainConfig:
    """A named preset with overrides; None picks "fast" when VAE_TUTORIAL_FAST=1, else "cpu"."""
    if name is None:
        name = "fast" if fast_mode() else "cpu"
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def fast_mode() -> bool:
    """True when VAE_TUTORIAL_FAST=1: notebooks and CLI then use a few hundred images."""
    return env_flag("VAE_TUTORIAL_FAST")
