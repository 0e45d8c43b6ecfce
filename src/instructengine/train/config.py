"""Typed configuration of an alignment training run (one YAML in ``configs/``, dotted overrides).

The paper's defaults are the defaults here: lr 1e-5, effective batch 128, constant schedule, no
warm-up, one epoch, U-Net only (the text encoders and VAE are frozen; only the U-Net, or LoRA
adapters on it, train).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from instructengine.config import Config

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "PickapicConfig",
    "PromptListConfig",
    "LoraConfig",
    "LossConfig",
    "ModelCardConfig",
    "ModelConfig",
    "OptimConfig",
    "ReflConfig",
    "TrainConfig",
    "ValidationConfig",
]


class ModelConfig(Config):
    """Which base model to align and how to load it."""

    kind: str = Field(
        "sd15",
        description="adapter (instructengine.registry kind 'model'): 'sd15' (one CLIP text encoder + VAE), 'sdxl' "
        "(two text encoders, pooled embeddings, size/crop micro-conditioning, VAE), one a bundle registers, or "
        "'package.module:factory'",
    )
    path: str | None = Field(
        None,
        description="diffusers-format folder (unet/, text_encoder/, tokenizer/, scheduler/, vae/ ...) or a "
        "hub id (needs network); null: the kind's default weights (sd15: stable-diffusion-v1-5, sdxl: "
        "stabilityai/stable-diffusion-xl-base-1.0, a bundle's: its shipped model)",
    )
    revision: str | None = Field(None, description="hub revision of `path` (ignored for local folders)")
    variant: str | None = Field(None, description="weights variant to load, e.g. 'fp16' (None: the default weights)")
    vae_path: str | None = Field(
        None,
        description="separate VAE folder or hub id, e.g. an fp16-safe SDXL VAE (madebyollin/sdxl-vae-fp16-fix); "
        "None: the VAE in `path`",
    )
    vae_dtype: Literal["float32", "weight_dtype"] = Field(
        "float32",
        description="dtype of the frozen VAE: 'float32' (safe for the stock SDXL VAE, which overflows in fp16) "
        "or 'weight_dtype' (the mixed-precision dtype; use with an fp16-safe VAE)",
    )
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = Field(
        "auto", description="training target; 'auto' takes the scheduler's prediction_type"
    )


    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from instructengine.registry import check_name

        return check_name("model", v)

    def source(self) -> str:
        """``path``, or the default weights of the model kind (its factory's ``default_path``).

        Raises:
            ValueError: ``path`` is null and the kind has no default.
        """
        if self.path:
            return self.path
        from instructengine import registry

        default = getattr(registry.resolve("model", self.kind, where="model.kind"), "default_path", None)
        if not default:
            raise ValueError(f"model.path is null and model.kind {self.kind!r} has no default weights; set model.path")
        return str(default)


class LoraConfig(Config):
    """LoRA adapters on the U-Net (peft). Disabled: full fine-tuning of the U-Net."""

    enabled: bool = Field(False, description="train LoRA adapters instead of the full U-Net")
    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: float | None = Field(None, description="LoRA alpha (None: equal to rank, i.e. scale 1)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        description="U-Net module names to adapt (diffusers attention projections by default)",
    )


class PickapicConfig(Config):
    """Pick-a-Pic v2 as published: parquet shards with a caption, two images as bytes and two labels.

    A row is one human choice: ``label_0 = 1, label_1 = 0`` (image 0 preferred), the reverse, or
    ``0.5, 0.5`` (no preference; dropped, as the Diffusion-DPO code drops ``label_0`` not in (0, 1)).
    """

    files: list[str] = Field(
        default_factory=lambda: ["**/train-*.parquet"],
        min_length=1,
        description="parquet shards: glob patterns relative to data.path (or absolute); the Hub layout keeps the "
        "train split in data/train-*.parquet",
    )
    caption_column: str = Field("caption", description="column with the prompt text")
    image_columns: tuple[str, str] = Field(("jpg_0", "jpg_1"), description="columns with the two images' encoded bytes")
    label_columns: tuple[str, str] = Field(
        ("label_0", "label_1"), description="columns with the two images' preference labels (1 / 0 / 0.5 for a tie)"
    )
    image_cache: str | None = Field(
        None,
        description="folder the used images' bytes are written to once (unchanged, one file each) so training "
        "reads files; None: <data.path>/_pickapic_images",
    )
    batch_rows: int = Field(512, ge=1, description="rows read per parquet batch (bounds memory while scanning)")


class PromptListConfig(Config):
    """A prompt list for ReFL or the candidates stage: DiffusionDB metadata, Pick-a-Pic captions, any table."""

    files: list[str] = Field(
        default_factory=lambda: ["metadata.parquet"],
        min_length=1,
        description="prompt tables: glob patterns relative to data.path (or absolute); .parquet, .csv, .jsonl "
        "(a column) or .txt (one prompt a line). DiffusionDB: metadata.parquet; Pick-a-Pic: **/train-*.parquet",
    )
    column: str = Field("prompt", description="column with the prompt text (DiffusionDB: prompt, Pick-a-Pic: caption)")
    deduplicate: bool = Field(True, description="keep each distinct prompt once (first occurrence)")


class DataConfig(Config):
    """The training data: a preference-sample dataset, a candidates table, Pick-a-Pic, or a prompt list."""

    source: Literal["method", "samples", "candidates", "pickapic", "prompts"] = Field(
        "method",
        description="where items come from: 'method' (the method's own: samples.parquet, or candidates.parquet for "
        "reward_dpo), 'samples', 'candidates', 'pickapic' (Pick-a-Pic v2 shards: triples, winners or captions; see "
        "data.pickapic) or 'prompts' (a prompt list, for refl; see data.prompts)",
    )
    path: str = Field(
        "runs/demo/images",
        description="dataset folder holding samples.parquet (or candidates.parquet, Pick-a-Pic shards, prompt "
        "tables) and the images it names",
    )
    pickapic: PickapicConfig = Field(default_factory=PickapicConfig, description="Pick-a-Pic layout (source 'pickapic')")
    prompts: PromptListConfig = Field(default_factory=PromptListConfig, description="prompt list (source 'prompts')")
    candidates_file: str = Field(
        "candidates.parquet", description="candidates table inside `path`, read by methods whose source is 'candidates'"
    )
    candidate_group_column: str = Field(
        "prompt", description="candidates column grouping the N images of one prompt (best and worst picked per group)"
    )
    candidate_prompt_column: str = Field("prompt", description="candidates column with the prompt text")
    candidate_image_column: str = Field("image", description="candidates column with the image path (relative)")
    candidate_reward_column: str = Field("reward", description="candidates column with the reward score (higher = better)")
    resolution: int = Field(512, ge=8, description="training resolution (shorter side resized, then cropped square)")
    center_crop: bool = Field(True, description="center crop (True) or random crop (False) to the square resolution")
    random_flip: bool = Field(
        False, description="random horizontal flip (off: flipping changes 'left'/'right' in instructions)"
    )
    caption_dropout: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="probability of replacing an instruction by the unconditional embedding; for two-instruction "
        "(cross-validation) samples at most one of the two is ever dropped, so no sample becomes constant",
    )
    dimensions: list[str] | None = Field(
        None,
        min_length=1,
        description="train only on samples whose contrast `dimension` is one of these (content, counterfactual, "
        "aesthetics); null: all. Samples left out are counted in the run's data report",
    )
    max_items: int | None = Field(
        None,
        ge=1,
        description="use a seeded random subset of N training items (stratified by theme and dimension for "
        "samples; nested: the subset of N is inside the subset of any larger N with the same subset_seed)",
    )
    subset_seed: int = Field(0, description="seed of the max_items subset (independent of the training seed)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes for image decoding")
    cache_text_embeddings: bool = Field(
        False, description="encode every distinct instruction once at setup and keep the embeddings (CPU memory)"
    )
    cache_latents: bool = Field(
        False,
        description="encode every distinct image once at setup and keep its VAE latent distribution (mean, std) "
        "on CPU; latents are still sampled from it every step",
    )

    @field_validator("dimensions")
    @classmethod
    def _known_dimensions(cls, value: list[str] | None) -> list[str] | None:
        from instructengine.data.schema import DIMENSIONS

        bad = sorted(set(value or []) - set(DIMENSIONS))
        if bad:
            raise ValueError(f"unknown dimension(s) {bad}; choose from {list(DIMENSIONS)}")
        return value


class LossConfig(Config):
    """Loss hyper-parameters (only the ones of the chosen method are read)."""

    beta: float = Field(
        2500.0,
        gt=0,
        description="DPO coefficient = the paper's beta*T*w(lambda_t) with constant w; the public Diffusion-DPO "
        "code's --beta_dpo is 2*beta (it multiplies by 0.5)",
    )
    orpo_weight: float = Field(0.1, ge=0, description="ORPO: weight of the odds-ratio term added to the SFT loss")
    orpo_likelihood_scale: float = Field(1.0, gt=0, description="ORPO: s in log p = -s * error")
    mapo_beta: float = Field(0.1, ge=0, description="MaPO: weight of the margin term")
    mapo_temperature: float = Field(0.5, gt=0, description="MaPO: z = temperature * error in f(z) = z/(e^z - 1)")
    mapo_margin_scale: float = Field(1000.0, gt=0, description="MaPO: multiplier inside the log-sigmoid (T)")
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="DPO-family methods only: add sft_weight x the policy's denoising error on the preferred "
        "(instruction, image) combinations (the winners of the loss's triples) to each sample's loss, a regulariser "
        "against likelihood displacement; 0 = the paper's loss. At sft_weight = beta/2 its gradient equals the DPO "
        "term's at the start",
    )
    anchor_weight: float = Field(
        0.0,
        ge=0,
        description="DPO-family methods only: add anchor_weight x max(0, policy error - reference error) on the "
        "preferred combinations, averaged over them (a DPO-Positive-style hinge outside the log-sigmoid): zero while "
        "the preferred images are denoised no worse than by the reference, so it only counters likelihood "
        "displacement; 0 = off",
    )
    dpop_lambda: float = Field(
        0.0,
        ge=0,
        description="DPO-family methods only: DPO-Positive's lambda, the same hinge max(0, policy error - reference "
        "error) of each triple's winner INSIDE the log-sigmoid: -log sigmoid(-beta * (D_w - D_l + lambda * max(0, D_w))) "
        "(Pal et al. 2024, Eq. 3); CV-DPO adds both winners' penalties in its one log-sigmoid; 0 = off",
    )


class ReflConfig(Config):
    """ReFL (ImageReward): sample with no grad to a random late step, one step with grad, reward loss."""

    reward: str = Field(
        "clip",
        description="differentiable reward: 'imagereward' (ImageReward-v1.0, the paper's; reward_kwargs: checkpoint, "
        "med_config, tokenizer as for the imagereward scorer), 'clip' (a CLIPModel folder given in reward_kwargs.path) "
        "or 'module:function' returning a callable (images in [0,1] (B,3,H,W), prompts) -> rewards (B,)",
    )
    reward_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the reward factory")
    num_inference_steps: int = Field(40, ge=2, description="sampling steps of the DDIM sampler used to reach the late step")
    late_step_min: int = Field(
        30, ge=0, description="the grad step's INDEX is drawn uniformly in [late_step_min, num_inference_steps - 1]"
    )
    guidance_scale: float = Field(5.0, ge=1.0, description="classifier-free guidance while sampling (1: none)")
    reward_target: float = Field(2.0, description="loss = relu(reward_target - reward) * reward_scale")
    reward_scale: float = Field(1e-3, gt=0, description="multiplier of the reward loss (ImageReward's grad_scale)")
    clip_sample: bool = Field(
        False, description="clip predicted x0 to [-1, 1] in the sampler (useful for pixel-space ShapesWorld models)"
    )
    pretrain_weight: float = Field(
        0.0,
        ge=0,
        description="ImageReward's pre-training-loss regulariser: add pretrain_weight x the plain denoising MSE on "
        "a micro-batch of (caption, image) pairs from refl.pretrain_data to every ReFL micro-batch's loss; 0 = off "
        "(the public SD1.5 ReFL script); ImageReward's SDXL script (--apply_pre_loss) uses it with weight 1",
    )
    pretrain_data: DataConfig | None = Field(
        None,
        description="the pre-training (caption, image) pairs for pretrain_weight > 0: any data source read as "
        "(instruction, image) pairs (samples: the preferred images; pickapic: the winners; candidates: the best); "
        "its resolution must equal data.resolution",
    )

    @model_validator(mode="after")
    def _late_step_in_range(self) -> "ReflConfig":
        if self.late_step_min >= self.num_inference_steps:
            raise ValueError(
                f"late_step_min={self.late_step_min} must be < num_inference_steps={self.num_inference_steps}"
            )
        if self.pretrain_weight > 0 and self.pretrain_data is None:
            raise ValueError("refl.pretrain_weight > 0 needs refl.pretrain_data (the (caption, image) pairs of the "
                             "pre-training loss), e.g. {source: samples, path: runs/demo/images}")
        return self


class OptimConfig(Config):
    """AdamW and the learning-rate schedule."""

    lr: float = Field(1e-5, gt=0, description="learning rate (paper: 1e-5)")
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="diffusers get_scheduler name (paper: constant)"
    )
    warmup_steps: int = Field(0, ge=0, description="warm-up optimizer steps (paper: none)")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay")
    adam_beta1: float = Field(0.9, description="AdamW beta1")
    adam_beta2: float = Field(0.999, description="AdamW beta2")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    fused: bool = Field(
        False,
        description="torch's fused AdamW kernel (one kernel for all parameters instead of a loop of per-tensor "
        "kernels; CUDA and CPU): the same update up to float rounding, faster on a GPU (benchmarks/gpu)",
    )


class CheckpointConfig(Config):
    """Periodic checkpoints (model, optimizer, scheduler, RNG, data position) and their retention."""

    every_n_steps: int = Field(500, ge=1, description="save a checkpoint every N optimizer steps")
    keep_last: int = Field(2, ge=1, description="keep only the N most recent checkpoints")
    at_end: bool = Field(
        True, description="also checkpoint the last step, so a finished run can be extended by raising max_steps"
    )
    resume: str = Field(
        "auto",
        description="'auto' (latest complete checkpoint of this run if any), 'never', or a checkpoint folder",
    )


class ModelCardConfig(Config):
    """What the model card of the trained output (``final/README.md``) says beyond the run itself."""

    license: str | None = Field(
        None, description="license of the trained weights (null: the base model's when it is a known default - "
        "creativeml-openrail-m for SD1.5, openrail++ for SDXL - else 'other')"
    )
    datasets: list[str] = Field(
        default_factory=list, description="Hub ids of the training data, for the card's `datasets` (e.g. where the "
        "dataset folder was pushed); empty: the card names the data folder only"
    )


class ValidationConfig(Config):
    """Validation images during training (the diffusers training scripts' ``log_validation``): fixed prompts and
    seeds sampled from the model being trained every N steps, saved as PNG grids and logged to the trackers.

    Sampling goes through the model adapter (DDIM over the adapter's noise schedule, classifier-free guidance
    with its unconditional text), so it works for every model kind; it draws from its own seeded generators
    and restores the global random state, so training numerics (and exact resume) are unchanged."""

    prompts: list[str] = Field(default_factory=list, description="fixed validation prompts (one grid row each)")
    prompt_set: str | None = Field(
        None,
        description="a held-out prompt set whose first `max_prompts` prompts follow `prompts`: a `validation_prompts` "
        "registry name (one a bundle registers, e.g. ShapesWorld's held-out ShapesBench) or a prompt file "
        "(.txt, .csv, .jsonl, ... as the evaluation harness reads them)",
    )
    max_prompts: int = Field(4, ge=1, description="prompts taken from `prompt_set`")
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1,
                             description="one image per prompt and seed (one grid column each); the same at every step")
    every_n_steps: int = Field(100, ge=1, description="sample every N optimizer steps (and at the last step)")
    at_start: bool = Field(True, description="also sample before the first step (the base model), for comparison")
    num_inference_steps: int = Field(20, ge=1, description="DDIM steps per image")
    guidance_scale: float = Field(5.0, ge=1.0, description="classifier-free guidance scale (1: none)")
    resolution: int | None = Field(None, ge=8, description="image side in pixels (None: data.resolution)")
    batch_size: int = Field(8, ge=1, description="images per U-Net batch while sampling")

    @model_validator(mode="after")
    def _has_prompts(self) -> "ValidationConfig":
        if not self.prompts and not self.prompt_set:
            raise ValueError("validation needs `prompts` (a list) or `prompt_set` (a validation_prompts name or a "
                             "prompt file); or set validation: null to turn it off")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"validation.seeds {self.seeds} contain duplicates")
        return self


class TrainConfig(Config):
    """One alignment training run: method, model, data, optimisation, checkpoints, logging."""

    method: str = Field(
        "cv_dpo",
        description="training method: cv_dpo, diffusion_dpo, four_triple_dpo, sft, orpo, mapo, reward_dpo, refl "
        "(see `instructengine train methods`)",
    )
    run_dir: str = Field("runs/demo", description="run folder; outputs go to <run_dir>/train/<name>")
    name: str | None = Field(None, description="output sub-folder name (None: the method name)")
    seed: int = Field(0, description="seed of data order, noise, timesteps, caption dropout and LoRA init")
    model: ModelConfig = Field(default_factory=ModelConfig, description="base model")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA or full fine-tuning")
    data: DataConfig = Field(default_factory=DataConfig, description="training data")
    loss: LossConfig = Field(default_factory=LossConfig, description="loss hyper-parameters")
    refl: ReflConfig = Field(default_factory=ReflConfig, description="ReFL settings (method 'refl' only)")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimizer and schedule")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="checkpoints and resume")
    batch_size: int = Field(
        128,
        ge=1,
        description="effective batch in training items per optimizer step (paper: 128) = micro_batch_size x "
        "gradient accumulation x processes; an item is a sample (cv_dpo, four_triple_dpo), a triple "
        "(diffusion_dpo, orpo, mapo, reward_dpo), an (instruction, image) pair (sft) or a prompt (refl)",
    )
    micro_batch_size: int = Field(8, ge=1, description="items per forward pass and process")
    epochs: int = Field(1, ge=1, description="passes over the data (paper: 1); ignored when max_steps is set")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (None: run `epochs`)")
    min_timestep: int = Field(0, ge=0, description="training timesteps are drawn uniformly in [min_timestep, max_timestep)")
    max_timestep: int | None = Field(None, ge=1, description="upper bound (exclusive); None: num_train_timesteps")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="accelerate mixed precision (paper: half precision); master weights stay float32. fp16 "
        "needs a CUDA device (CPU matmuls refuse half inputs); bf16 autocast also runs on CPU"
    )
    gradient_checkpointing: bool = Field(False, description="recompute U-Net activations in backward to save memory")
    channels_last: bool = Field(
        False,
        description="keep the U-Net (and the reference copy) in channels-last memory format, which tensor-core GPUs "
        "convolve faster; the same loss up to float rounding",
    )
    fused_forward: bool = Field(
        True,
        description="one policy and one reference U-Net call over all (instruction, image) combinations of a "
        "micro-batch; False: one call per combination (for benchmarking only, same result)",
    )
    device: Literal["auto", "cpu"] = Field(
        "auto", description="'cpu' forces the CPU; 'auto' lets accelerate choose (GPUs via `accelerate launch`)"
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (None: torch's default); on a shared CPU fewer threads than "
        "cores avoids OpenMP spin-waiting"
    )
    log_every_n_steps: int = Field(1, ge=1, description="write metrics every N optimizer steps")
    tensorboard: bool = Field(
        True, description="also log metrics, validation images and the resolved config (hparams) to "
        "<output>/tensorboard through accelerate's TensorBoard tracker (skipped with a warning if not installed)"
    )
    wandb: bool = Field(
        False, description="also log them to Weights & Biases through accelerate's tracker (needs `pip install "
        "wandb`; files under <output>/wandb; WANDB_MODE=offline logs without a network)"
    )
    tracker_project: str = Field("instructengine", description="project name of the wandb run (its run name is `name`)")
    validation: ValidationConfig | None = Field(
        None, description="validation images every N steps (null: none); see ValidationConfig"
    )
    save_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="dtype of the saved U-Net / LoRA weights"
    )
    card: ModelCardConfig = Field(default_factory=ModelCardConfig, description="model card of the trained output")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML 1.1 reads a bare `no` as false

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from instructengine.train.methods import METHODS

        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; choose one of {sorted(METHODS)}")
        return v

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainConfig":
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} is not a multiple of micro_batch_size={self.micro_batch_size}; "
                "the effective batch must be micro_batch_size x accumulation steps x processes"
            )
        if self.mixed_precision == "fp16" and self.device == "cpu":
            raise ValueError("mixed_precision='fp16' needs a CUDA device and device='cpu' forces the CPU (CPU matmuls "
                             "refuse half inputs); use mixed_precision=bf16 (CPU autocast) or mixed_precision=no")
        if self.max_timestep is not None and self.max_timestep <= self.min_timestep:
            raise ValueError(f"max_timestep={self.max_timestep} must be > min_timestep={self.min_timestep}")
        for name in ("sft_weight", "anchor_weight", "dpop_lambda"):
            if not getattr(self.loss, name):
                continue
            from instructengine.train.losses import LOSSES
            from instructengine.train.methods import METHODS

            loss = METHODS[self.method].loss
            if loss is None or not LOSSES[loss].needs_reference:
                raise ValueError(f"loss.{name} applies to the DPO-family methods (cv_dpo, diffusion_dpo, "
                                 f"four_triple_dpo, reward_dpo), not to method={self.method!r}")
        return self

    def check_runnable(self) -> None:
        """Refuse, before any work, what this machine cannot run: fp16 mixed precision where training
        would run on the CPU (``device: cpu``, or ``auto`` without CUDA), where torch fails at the first
        matmul with ``c10::Half != float``.

        Raises:
            instructengine.errors.DeviceError: naming ``mixed_precision`` and what would run here.
        """
        from instructengine.errors import DeviceError, cuda_available

        if self.mixed_precision == "fp16" and (self.device == "cpu" or not cuda_available()):
            where = "device='cpu'" if self.device == "cpu" else "this machine has no CUDA device"
            raise DeviceError(f"mixed_precision='fp16' needs a CUDA device ({where}); use mixed_precision=bf16 "
                              "(CPU autocast) or mixed_precision=no on CPU")

    @property
    def output_name(self) -> str:
        return self.name or self.method
