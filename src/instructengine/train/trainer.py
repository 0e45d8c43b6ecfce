"""The alignment trainer: ``setup -> train -> save -> cleanup`` on accelerate.

One trainer for every method of ``methods.METHODS``. A step draws ``accumulation`` micro-batches;
each gives a loss from the method's step (preference: fused denoising errors + the loss of
``losses.LOSSES``; ReFL: reward back-propagation), the gradients are accumulated (no DDP sync
until the last micro-batch), clipped, and one AdamW step is taken.

Outputs in ``<run_dir>/train/<name>/``:

* ``final/unet/`` (full fine-tuning; diffusers format, ``UNet2DConditionModel.from_pretrained``) or
  ``final/pytorch_lora_weights.safetensors`` (LoRA; ``pipeline.load_lora_weights(final_dir)``);
* ``metrics.jsonl`` (one JSON line per logged step, the record of the run);
* the trackers, through accelerate (``Accelerator(log_with=...)``, ``init_trackers``,
  ``accelerator.log``): ``tensorboard/`` (``tensorboard: true``, the default) and ``wandb/``
  (``wandb: true``) get the same scalars under ``train/<name>``, the validation images and the
  resolved config as hyper-parameters;
* ``validation/step-<step>.png`` (``validation:`` set): a grid of fixed prompts x seeds sampled from
  the model being trained, and ``validation/prompts.json`` (:mod:`instructengine.train.validation`);
* ``checkpoints/checkpoint-<step>/`` (trainable weights, optimizer, lr scheduler, RNG states of
  python/numpy/torch and of the trainer's generator, data position), the newest ``keep_last``;
* ``config.yaml`` (resolved) and ``manifest.json`` (items read/used/dropped by reason, timings).

Resume (``checkpoint.resume: auto``): the newest complete checkpoint is loaded and training
continues with the exact micro-batch, noise and timesteps an uninterrupted run would have used;
``metrics.jsonl`` lines after the checkpoint are discarded (and tensorboard events after it purged).
Trackers, progress and validation images never touch the training's random state. A run whose
manifest is complete with the same config is not trained again.

Progress (:mod:`instructengine.progress`): one bar or periodic line per run with the step count,
loss, implicit accuracy (preference methods) or reward (ReFL), steps per second and ETA.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import MethodType
from typing import Any, Callable

import torch

from instructengine.config import config_hash
from instructengine.runs import StageDir, atomic_write_safetensors, atomic_write_text, share_files
from instructengine.train.config import TrainConfig
from instructengine.train.losses import LOSSES, per_sample_loss, preference_metrics
from instructengine.train.methods import METHODS
from instructengine.errors import UsageError

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "run_training"]

log = logging.getLogger(__name__)

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
           "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: config fields that may change between a run and its resumption
_RESUME_FREE = ("checkpoint", "log_every_n_steps", "tensorboard", "wandb", "tracker_project", "validation", "max_steps",
                "epochs", "device", "threads")
_COMPLETE = "COMPLETE"


class TrainingDiverged(UsageError, RuntimeError):
    """The loss or the gradient norm became NaN/inf; the message names the step."""


@dataclass
class TrainResult:
    output_dir: Path
    final_path: Path
    steps: int
    skipped: bool = False


class _Progress:
    """Step counter, data position and noise generator, saved in every checkpoint."""

    def __init__(self, stream: Any, generator: torch.Generator, pretrain_stream: Any = None):
        self.step = 0
        self.items_seen = 0
        self.stream = stream
        self.generator = generator
        self.pretrain_stream = pretrain_stream  # ReFL's pre-training-loss data, if any

    def state_dict(self) -> dict[str, Any]:
        state = {"step": self.step, "items_seen": self.items_seen, "data": self.stream.state_dict(),
                 "generator": self.generator.get_state()}
        if self.pretrain_stream is not None:
            state["pretrain_data"] = self.pretrain_stream.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.items_seen = int(state["items_seen"])
        self.stream.load_state_dict(state["data"])
        self.generator.set_state(state["generator"])
        if self.pretrain_stream is not None:
            self.pretrain_stream.load_state_dict(state["pretrain_data"])


def _resume_key(cfg: TrainConfig) -> str:
    data = cfg.model_dump(mode="json")
    for key in _RESUME_FREE:
        data.pop(key, None)
    data["data"].pop("num_workers", None)
    return json.dumps(data, sort_keys=True)


def _after_last_event_second(folder: Path) -> None:
    """Wait (at most ~1 s) until the wall-clock second is past the newest tensorboard event file's:
    readers take event files in name order and the name starts with that second, so a resumed run's
    file (with its purge of the steps after the checkpoint) must sort after the crashed run's. Within
    one second the names differ only in a counter, which sorts as text ('.10' < '.9')."""
    stamps = []
    for f in folder.rglob("events.out.tfevents.*"):
        part = f.name.split(".")[3:4]
        if part and part[0].isdigit():
            stamps.append(int(part[0]))
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


class Trainer:
    """Aligns a text-to-image U-Net with the method named in the config. Use :func:`run_training`."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.method = METHODS[cfg.method]
        self.stage = StageDir(cfg.run_dir, f"train/{cfg.output_name}")
        self.metrics_path = self.stage.path("metrics.jsonl")
        self.final_dir = self.stage.path("final")
        self.validator = None

    # ------------------------------------------------------------------------------------------
    # setup
    # ------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        trackers, notes = self._make_trackers()
        self.acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.device == "cpu", log_with=trackers or None)
        set_seed(cfg.seed)  # LoRA initialisation and any dropout draw from the global generators
        self.manifest = self.stage.new_manifest(cfg) if self.acc.is_main_process else None
        if self.manifest is not None:
            self.manifest.extra.update(notes)
        with self._timed("setup"):
            self._setup_model()
            self._setup_data()
            self._setup_optimizer()
            self.step_fn = self._build_step()
            self._maybe_resume()
            self._setup_logging()

    def _timed(self, name: str):
        return self.manifest.timed(name) if self.manifest is not None else nullcontext()

    def _setup_model(self) -> None:
        from instructengine.train.models import load_adapter
        from instructengine.train.steps import Encoder

        cfg, acc = self.cfg, self.acc
        self.weight_dtype = _DTYPES[cfg.mixed_precision]
        vae_dtype = torch.float32 if cfg.model.vae_dtype == "float32" else self.weight_dtype
        adapter = load_adapter(cfg.model)
        adapter.to(acc.device, self.weight_dtype, vae_dtype)
        unet = adapter.unet
        needs_reference = self.method.loss is not None and LOSSES[self.method.loss].needs_reference
        self.reference_unet = None
        if cfg.lora.enabled:
            from diffusers.training_utils import cast_training_params
            from peft import LoraConfig as PeftLoraConfig

            unet.requires_grad_(False)
            unet.to(acc.device, dtype=self.weight_dtype)
            unet.add_adapter(PeftLoraConfig(
                r=cfg.lora.rank, lora_alpha=cfg.lora.alpha or cfg.lora.rank, lora_dropout=cfg.lora.dropout,
                init_lora_weights="gaussian", target_modules=list(cfg.lora.target_modules),
            ))
            cast_training_params(unet, dtype=torch.float32)
        else:
            unet.requires_grad_(True)
            unet.to(acc.device, dtype=torch.float32)
            if needs_reference:
                self.reference_unet = copy.deepcopy(unet).requires_grad_(False).eval().to(dtype=self.weight_dtype)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if cfg.channels_last:
            unet.to(memory_format=torch.channels_last)
            if self.reference_unet is not None:
                self.reference_unet.to(memory_format=torch.channels_last)
        unet.train()
        self.needs_reference = needs_reference
        self.adapter = adapter
        self.unet = unet
        self.encoder = Encoder(adapter, cfg.data.cache_text_embeddings, cfg.data.cache_latents)
        if self.method.step == "refl":
            from instructengine.train.rewards import load_reward

            self.reward_fn = load_reward(cfg.refl.reward, cfg.refl.reward_kwargs, acc.device)

    def _setup_data(self) -> None:
        from instructengine.train.data import BatchStream, ItemDataset, build_items

        cfg, acc = self.cfg, self.acc
        if cfg.data.cache_latents and (not cfg.data.center_crop or cfg.data.random_flip):
            raise ValueError("data.cache_latents needs data.center_crop=true and data.random_flip=false "
                             "(a cached latent stands for one fixed crop of the image)")
        items, n_in, dropped = build_items(self.method.source, self.method.layout, cfg.data)
        if self.manifest is not None:
            self.manifest.count_in = n_in
            self.manifest.count_out = len(items)
            for reason, n in dropped.items():
                self.manifest.drop(reason, n)
            self.manifest.inputs["data"] = str(Path(cfg.data.path).resolve())
            self.manifest.extra["layout"] = self.method.layout
        world = acc.num_processes
        per_step = cfg.micro_batch_size * world
        if cfg.batch_size % per_step:
            raise ValueError(
                f"batch_size={cfg.batch_size} is not a multiple of micro_batch_size x processes = "
                f"{cfg.micro_batch_size} x {world}"
            )
        self.accumulation = cfg.batch_size // per_step
        load_pixels = not cfg.data.cache_latents and self.method.layout != "prompt"
        dataset = ItemDataset(items, cfg.data, cfg.seed, load_pixels=load_pixels)
        self.stream = BatchStream(dataset, cfg.micro_batch_size, cfg.seed, acc.process_index, world,
                                  cfg.data.num_workers)
        steps_per_epoch = self.stream.batches_per_epoch // self.accumulation
        self.total_steps = cfg.max_steps or (cfg.epochs * self.stream.batches_per_epoch) // self.accumulation
        if self.total_steps < 1:
            raise ValueError(
                f"{len(items)} items give {self.stream.batches_per_epoch} micro-batches per process per epoch, "
                f"fewer than the {self.accumulation} one optimizer step needs (batch_size={cfg.batch_size}); "
                "lower batch_size, raise epochs or set max_steps"
            )
        if cfg.data.cache_text_embeddings or cfg.data.cache_latents:
            with self._timed("cache"):
                prompts = [t for it in items for t in it.texts]
                images = [p for it in items for p in it.images]
                self.encoder.precompute(prompts, images, cfg.data)
        self.pretrain_stream = None
        if self.method.step == "refl" and cfg.refl.pretrain_weight > 0:
            self._setup_pretrain_data()
        self.generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + acc.process_index)
        self.progress = _Progress(self.stream, self.generator, self.pretrain_stream)
        if self.manifest is not None:
            self.manifest.extra.update({
                "accumulation_steps": self.accumulation, "processes": world, "total_steps": self.total_steps,
                "steps_per_epoch": steps_per_epoch, "items": len(items),
            })

    def _setup_pretrain_data(self) -> None:
        """ReFL's pre-training loss: a second stream of (caption, image) micro-batches (refl.pretrain_data)."""
        from instructengine.train.data import BatchStream, ItemDataset, build_items

        cfg, acc = self.cfg, self.acc
        pcfg = cfg.refl.pretrain_data
        if pcfg.resolution != cfg.data.resolution:
            raise ValueError(f"refl.pretrain_data.resolution={pcfg.resolution} must equal data.resolution="
                             f"{cfg.data.resolution} (ReFL samples and the pre-training images share the U-Net input size)")
        items, n_in, dropped = build_items("samples", "single", pcfg)
        if self.manifest is not None:
            self.manifest.extra["pretrain_data"] = {"path": str(Path(pcfg.path).resolve()), "rows": n_in,
                                                    "items": len(items), "dropped": dict(dropped)}
        dataset = ItemDataset(items, pcfg, cfg.seed, load_pixels=not cfg.data.cache_latents)
        self.pretrain_stream = BatchStream(dataset, cfg.micro_batch_size, cfg.seed, acc.process_index,
                                           acc.num_processes, pcfg.num_workers)
        if cfg.data.cache_text_embeddings or cfg.data.cache_latents:
            with self._timed("cache"):
                self.encoder.precompute([t for it in items for t in it.texts], [p for it in items for p in it.images],
                                        pcfg)

    def _setup_optimizer(self) -> None:
        from diffusers.optimization import get_scheduler

        cfg, acc = self.cfg, self.acc
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            self.params, lr=cfg.optim.lr, betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2),
            weight_decay=cfg.optim.weight_decay, eps=cfg.optim.adam_eps, **({"fused": True} if cfg.optim.fused else {}),
        )
        # the lr scheduler is deliberately not prepared: accelerate would step it once per process
        self.lr_scheduler = get_scheduler(cfg.optim.lr_schedule, optimizer, num_warmup_steps=cfg.optim.warmup_steps,
                                          num_training_steps=self.total_steps)
        self.unet, self.optimizer = acc.prepare(self.unet, optimizer)
        acc.register_for_checkpointing(self.lr_scheduler)
        acc.register_for_checkpointing(self.progress)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)

    def _make_trackers(self) -> tuple[list[Any], dict[str, str]]:
        """accelerate tracker objects for ``tensorboard`` / ``wandb`` (started in :meth:`_setup_logging`).

        Raises:
            ValueError: ``wandb: true`` without the wandb package.
        """
        from accelerate.tracking import TensorBoardTracker, WandBTracker

        cfg = self.cfg
        trackers: list[Any] = []
        notes: dict[str, str] = {}
        if cfg.tensorboard:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")
                notes["tensorboard"] = "skipped: tensorboard not installed"
            else:
                # <output>/tensorboard: accelerate writes to <logging_dir>/<run_name>
                trackers.append(TensorBoardTracker("tensorboard", str(self.stage.root)))
        if cfg.wandb:
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise ValueError("wandb: true needs the wandb package (pip install wandb, or pip install "
                                 "'instructengine[wandb]'); or set wandb: false") from None
            trackers.append(WandBTracker(cfg.tracker_project, name=cfg.output_name, dir=str(self.stage.root)))
        return trackers, notes

    def _setup_logging(self) -> None:
        """Start the trackers with the resolved config as hyper-parameters, and the validator."""
        acc, cfg = self.acc, self.cfg
        if acc.is_main_process and cfg.validation is not None:
            from instructengine.train.validation import Validator

            self.validator = Validator(cfg.validation, cfg.data.resolution, self.stage.path("validation"))
        if not acc.log_with:
            return
        for tracker in acc.log_with:
            if getattr(tracker, "name", None) == "tensorboard" and self.progress.step:
                # events of the run before the crash that lie after the checkpoint are dropped
                tracker.init_kwargs["purge_step"] = self.progress.step + 1
                _after_last_event_second(self.stage.root / "tensorboard")
        acc.init_trackers(cfg.tracker_project, config=flat_hparams(cfg.model_dump(mode="json")))

    # --- checkpoint hooks: only trainable tensors are saved (LoRA: adapters only) -------------
    def _trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}

    def _save_hook(self, models: list, weights: list, output_dir: str) -> None:
        if self.acc.is_main_process:
            for i, model in enumerate(models):
                atomic_write_safetensors(Path(output_dir) / f"trainable_{i}.safetensors",
                                         self._trainable_state(self.acc.unwrap_model(model)))
        weights.clear()  # accelerate must not also write the (frozen) base weights

    def _load_hook(self, models: list, input_dir: str) -> None:
        from safetensors.torch import load_file

        for i, model in enumerate(list(models)):
            state = load_file(str(Path(input_dir) / f"trainable_{i}.safetensors"))
            params = dict(self.acc.unwrap_model(model).named_parameters())
            missing = sorted(set(n for n, p in params.items() if p.requires_grad) - set(state))
            if missing:
                raise ValueError(f"checkpoint {input_dir} lacks trainable tensors, e.g. {missing[:3]}")
            with torch.no_grad():
                for n, v in state.items():
                    params[n].copy_(v)
        models.clear()

    def _checkpoints(self) -> list[Path]:
        root = self.stage.path("checkpoints")
        if not root.is_dir():
            return []
        done = [p for p in root.glob("checkpoint-*") if (p / _COMPLETE).is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def _maybe_resume(self) -> None:
        choice = self.cfg.checkpoint.resume
        if choice == "never":
            return
        if choice == "auto":
            found = self._checkpoints()
            if not found:
                return
            path = found[-1]
            step = int(path.name.split("-")[1])
            if step > self.total_steps:
                raise ValueError(
                    f"the newest checkpoint {path} is at step {step}, beyond max_steps={self.total_steps}; a run can "
                    "be extended but not shortened (use checkpoint.resume=<folder> or a new name)"
                )
        else:
            path = Path(choice)
            if not (path / _COMPLETE).is_file():
                raise FileNotFoundError(f"checkpoint.resume={choice!r} is not a complete checkpoint folder")
        saved = path / "train_config.json"
        if saved.is_file() and saved.read_text() != _resume_key(self.cfg):
            raise ValueError(
                f"checkpoint {path} was written with a different config; only {list(_RESUME_FREE)} may change "
                "on resume (use checkpoint.resume=never or a new name to start afresh)"
            )
        self.acc.load_state(str(path))
        self.resumed_from = path
        log.info("resumed from %s at step %d", path, self.progress.step)
        if self.acc.is_main_process and self.metrics_path.exists():
            keep = [ln for ln in self.metrics_path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= self.progress.step]
            atomic_write_text(self.metrics_path, "".join(x + "\n" for x in keep))
        if self.manifest is not None:
            self.manifest.extra["resumed_from"] = str(path)

    # ------------------------------------------------------------------------------------------
    # the step of each kind of method
    # ------------------------------------------------------------------------------------------
    def _reference(self) -> Callable[..., Any] | None:
        if not self.needs_reference:
            return None
        if self.reference_unet is not None:
            return self.reference_unet
        policy = self.acc.unwrap_model(self.unet)

        def lora_disabled(*args: Any, **kwargs: Any) -> Any:
            policy.disable_adapters()
            try:
                return policy(*args, **kwargs)
            finally:
                policy.enable_adapters()

        return lora_disabled

    def _build_step(self) -> Callable[[dict[str, Any]], tuple[torch.Tensor, dict[str, float]]]:
        return {"preference": self._preference_step, "refl": self._refl_step}[self.method.step]

    def _preference_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from instructengine.train.steps import combination_errors

        cfg = self.cfg
        spec = LOSSES[self.method.loss]
        high = cfg.max_timestep or self.adapter.noise_scheduler.config.num_train_timesteps
        model_err, ref_err = combination_errors(
            self.adapter, self.encoder, self.unet, self._reference(), batch, spec.layout, self.generator,
            caption_dropout=cfg.data.caption_dropout, timestep_range=(cfg.min_timestep, high),
            fused=cfg.fused_forward, autocast=self.acc.autocast,
        )
        loss = per_sample_loss(spec, model_err, ref_err, cfg.loss).mean()
        return loss, preference_metrics(spec, model_err, ref_err, cfg.loss.beta)

    def _refl_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from instructengine.train.steps import refl_loss

        from instructengine.train.steps import combination_errors

        cfg = self.cfg
        loss, metrics = refl_loss(self.adapter, self.encoder, self.unet, batch["texts"][0], self.reward_fn, cfg.refl,
                                  cfg.data.resolution, self.generator, autocast=self.acc.autocast)
        if self.pretrain_stream is None:
            return loss, metrics
        # ImageReward's pre-training loss: the plain denoising MSE on (caption, image) pairs, t ~ U[min, max)
        high = cfg.max_timestep or self.adapter.noise_scheduler.config.num_train_timesteps
        err, _ = combination_errors(self.adapter, self.encoder, self.unet, None, self.pretrain_stream.next(), "single",
                                    self.generator, timestep_range=(cfg.min_timestep, high), fused=cfg.fused_forward,
                                    autocast=self.acc.autocast)
        pretrain = err.mean()
        metrics.update({"reward_loss": loss.item(), "pretrain_loss": pretrain.item()})
        return loss + cfg.refl.pretrain_weight * pretrain, metrics

    # ------------------------------------------------------------------------------------------
    # train
    # ------------------------------------------------------------------------------------------
    def _fail(self, what: str, value: float, micro: int) -> None:
        last = self._checkpoints()
        raise TrainingDiverged(
            f"{what} is {value} at optimizer step {self.progress.step + 1} (micro-batch {micro + 1}/"
            f"{self.accumulation}, epoch {self.stream.epoch}); the run stopped. Last checkpoint: "
            f"{last[-1] if last else 'none'}. Lower optim.lr or loss.beta, or use bf16 instead of fp16."
        )

    def train(self) -> None:
        from instructengine.progress import Progress

        acc, cfg = self.acc, self.cfg
        if self.progress.step == 0:
            self._validate(0)  # the base model, before the bar starts counting
        t_start = time.perf_counter()
        bar = Progress(f"train {cfg.output_name}", self.total_steps, unit="step", initial=self.progress.step,
                       disable=not acc.is_main_process)
        with self._timed("train"), bar:
            while self.progress.step < self.total_steps:
                t0 = time.perf_counter()
                sums: dict[str, float] = defaultdict(float)
                for micro in range(self.accumulation):
                    batch = self.stream.next()
                    sync = micro == self.accumulation - 1
                    with nullcontext() if sync else acc.no_sync(self.unet):
                        loss, metrics = self.step_fn(batch)
                        if not torch.isfinite(loss):
                            self._fail("the loss", loss.item(), micro)
                        acc.backward(loss / self.accumulation)
                    sums["loss"] += loss.item() / self.accumulation
                    for k, v in metrics.items():
                        sums[k] += v / self.accumulation
                    self.progress.items_seen += len(batch["texts"][0]) * acc.num_processes
                grad_norm = acc.clip_grad_norm_(self.params, cfg.optim.max_grad_norm)
                grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
                if not math.isfinite(grad_norm) and cfg.mixed_precision != "fp16":
                    self._fail("the gradient norm", grad_norm, self.accumulation - 1)
                lr = self.lr_scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.progress.step += 1
                step = self.progress.step
                if step % cfg.log_every_n_steps == 0 or step == self.total_steps:
                    self._log(step, sums, grad_norm, lr, time.perf_counter() - t0, time.perf_counter() - t_start)
                bar.update(1, **_bar_stats(sums))
                self._validate(step)
                last = step == self.total_steps
                if (step % cfg.checkpoint.every_n_steps == 0 and not last) or (last and cfg.checkpoint.at_end):
                    self.save_checkpoint()

    def _log(self, step: int, sums: dict[str, float], grad_norm: float, lr: float, step_s: float,
             elapsed_s: float) -> None:
        keys = sorted(sums)
        values = torch.tensor([sums[k] for k in keys], device=self.acc.device)
        values = self.acc.reduce(values, reduction="mean") if self.acc.num_processes > 1 else values
        row: dict[str, Any] = {"step": step, "epoch": self.stream.epoch, "items_seen": self.progress.items_seen,
                               "lr": lr, "grad_norm": grad_norm}
        row.update({k: float(v) for k, v in zip(keys, values.tolist())})
        row.update({"step_s": round(step_s, 4), "elapsed_s": round(elapsed_s, 2)})
        if not self.acc.is_main_process:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.acc.trackers:
            self.acc.log({f"train/{k}": v for k, v in row.items() if k != "step" and isinstance(v, (int, float))},
                         step=step)

    def _validate(self, step: int) -> None:
        """Validation images at ``step`` if due (main process): sampled with the global random state
        saved and restored and the U-Net in eval mode, so training continues exactly as without."""
        if self.validator is None or not self.validator.due(step, self.total_steps):
            return
        unet = self.acc.unwrap_model(self.unet)
        devices = [self.acc.device] if self.acc.device.type == "cuda" else []
        was_training = unet.training
        # On a CPU, bf16 autocast makes sampling ~10x slower (measured): a float32 U-Net samples in float32,
        # through its class's forward, i.e. without the autocast wrapper accelerate's mixed precision put
        # on the instance (unwrap_model keeps it; removing it would change the training's forward).
        plain = self.acc.device.type == "cpu" and all(p.dtype == torch.float32 for p in unet.parameters())
        model = MethodType(type(unet).forward, unet) if plain else unet
        with self._timed("validation"), torch.random.fork_rng(devices=devices):
            unet.eval()
            try:
                images = self.validator.sample(self.adapter, model, nullcontext if plain else self.acc.autocast,
                                               torch.float32 if plain else None)
            finally:
                unet.train(was_training)
        path = self.validator.save(step, images)
        self.validator.log(self.acc.trackers, step, images)
        if self.manifest is not None:
            self.manifest.outputs["validation"] = str(path.parent)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/checkpoint-<step>`` and delete all but the newest ``keep_last``."""
        acc = self.acc
        path = self.stage.path("checkpoints", f"checkpoint-{self.progress.step}")
        acc.wait_for_everyone()
        if acc.is_main_process and path.exists():
            shutil.rmtree(path)  # an incomplete leftover of a killed run
        # every process creates the folder in save_state: without this barrier the main process could
        # remove the folder another rank has just created and is writing to (seen on a 2-process CPU run)
        acc.wait_for_everyone()
        acc.save_state(str(path))
        acc.wait_for_everyone()
        if acc.is_main_process:
            atomic_write_text(path / "train_config.json", _resume_key(self.cfg))
            atomic_write_text(path / _COMPLETE, f"step {self.progress.step}\n")
            for old in self._checkpoints()[: -self.cfg.checkpoint.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    # ------------------------------------------------------------------------------------------
    # save / cleanup
    # ------------------------------------------------------------------------------------------
    def save(self) -> Path:
        """Write the trained U-Net (diffusers folder) or LoRA weights to ``final/`` and the manifest."""
        acc, cfg = self.acc, self.cfg
        acc.wait_for_everyone()
        unet = acc.unwrap_model(self.unet)
        dtype = _DTYPES[cfg.save_dtype]
        final = self.final_dir
        if acc.is_main_process:
            tmp = final.with_name("final.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if cfg.lora.enabled:
                from diffusers.utils import convert_state_dict_to_diffusers
                from peft.utils import get_peft_model_state_dict

                state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
                self.adapter.save_lora(tmp, {k: v.detach().to("cpu", dtype) for k, v in state.items()})
                out = final / "pytorch_lora_weights.safetensors"
            else:
                to_save = unet if dtype == torch.float32 else copy.deepcopy(unet).to(dtype)
                to_save.save_pretrained(str(tmp / "unet"), safe_serialization=True)
                out = final / "unet"
            from instructengine.train.card import write_model_card

            m = self.manifest
            write_model_card(tmp, cfg, weights=out.name, steps=self.progress.step, items_seen=self.progress.items_seen,
                             data_in=m.count_in if m else None, data_used=m.count_out if m else None,
                             metrics_path=self.metrics_path)
            share_files(tmp)  # safetensors writes 0600; the group must be able to read the weights
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            if self.manifest is not None:
                self.manifest.outputs.update({"final": str(out), "metrics": str(self.metrics_path)})
                self.manifest.extra.update({"steps": self.progress.step, "items_seen": self.progress.items_seen,
                                            "lora": cfg.lora.enabled, "method": cfg.method})
                self.stage.write_manifest(self.manifest)
            return out
        return final

    def cleanup(self) -> None:
        if hasattr(self, "acc"):
            from accelerate.state import AcceleratorState, GradientState

            # not acc.end_training(): it also destroys the process group, which the main job's next
            # stages (another method's training, the spread evaluation) still use
            for tracker in self.acc.trackers:
                tracker.finish()
            self.acc.wait_for_everyone()
            # accelerate keeps a process-wide singleton; reset it so the next run in this process
            # (ablation arms, tests) may choose another mixed precision
            AcceleratorState._reset_state(reset_partial_state=False)
            GradientState._reset_state()
        for name in ("unet", "reference_unet", "adapter", "encoder", "optimizer"):
            if hasattr(self, name):
                setattr(self, name, None)


def _bar_stats(sums: dict[str, float]) -> dict[str, float]:
    """What the progress bar shows of a step: loss, implicit accuracy (mean over the loss's triples), reward."""
    stats = {"loss": sums["loss"]}
    accs = [v for k, v in sums.items() if k.startswith("implicit_acc")]
    if accs:
        stats["acc"] = sum(accs) / len(accs)
    if "reward" in sums:
        stats["reward"] = sums["reward"]
    return stats


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"optim.lr": 1e-05, ...}`` of str/int/float/bool (trackers' hparams);
    lists and nulls become their JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_hparams(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train (or resume, or skip when already complete with this config) and return where the output is.

    Raises:
        instructengine.errors.DeviceError: a precision this machine cannot run (before any work).
    """
    cfg.check_runnable()
    stage = StageDir(cfg.run_dir, f"train/{cfg.output_name}")
    manifest = stage.read_manifest()
    if stage.is_complete(config_hash(cfg)) and manifest and manifest.get("outputs", {}).get("final"):
        log.info("%s is complete with this config; nothing to do", stage.root)
        return TrainResult(stage.root, Path(manifest["outputs"]["final"]), int(manifest["extra"].get("steps", 0)),
                           skipped=True)
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        trainer.train()
        out = trainer.save()
        return TrainResult(stage.root, out, trainer.progress.step)
    finally:
        trainer.cleanup()

