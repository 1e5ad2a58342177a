"""Parameters: one YAML file per configuration, layered over a profile, validated before any work.

A configuration file names its ``task`` and sets what makes it that configuration (precision,
workers, strategy, ...). The profile (``params/profiles/<profile>.yaml``) sets the scale for each
task (model preset, data size, steps, batch) — and, in a section named after a notebook, what that
notebook alone needs at that scale — and lies *under* the configuration file, so a
configuration says only what it is about. A profile section named ``<notebook>/<pattern>`` speaks of
the matching configurations themselves and lies *over* their files (``full`` uses it to run each one
with the original lab's settings). Overrides from a notebook lie on top of all of them.
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

ROOT = Path(__file__).resolve().parent.parent  # the top of the kit: params/, notebooks/, runs/
PARAMS_DIR = ROOT / "params"
PROFILES = ("smoke", "gpu", "full", "bench")
# The tasks each notebook's text and plots are written for: a params file of another task in its folder would
# run there and be shown under the wrong lab.
NOTEBOOK_TASKS = {
    "01_baseline_bert_squad": ("bert_squad",),
    "02_dataloader_workers": ("cifar_resnext",),
    "03_mixed_precision": ("bert_squad", "cifar_resnext"),
    "04_activation_checkpointing": ("bert_squad", "cifar_resnext"),
    "05_ddp_fsdp": ("bert_squad",),
    "06_lora_optimizer_sweep": ("gpt2_sft",),
    "07_t5_model_parallel": ("t5_qa",),
    "09_simcls": ("simcls",),
}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _scalar_kinds(annotation: Any) -> set[type]:
    """{int}, {float, NoneType}, {bool}, ... for a field of plain scalars; empty for anything else."""
    kinds = set(get_args(annotation)) if get_origin(annotation) in (Union, types.UnionType) else {annotation}
    return kinds if kinds and kinds <= {int, float, bool, type(None)} and kinds - {type(None)} else set()


class _Section(BaseModel):
    # extra="forbid" is what turns a typo in a params file into an error instead of a silent default
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _exact_scalar_types(cls, value: Any, info: ValidationInfo) -> Any:
        # Lax pydantic reads `batch_size: true` as 1 and `lr: "1"` as 1.0; in a params file either is a slip.
        kinds = _scalar_kinds(cls.model_fields[info.field_name].annotation)
        if not kinds or (value is None and type(None) in kinds):
            return value
        if bool in kinds:
            ok = isinstance(value, bool)
        elif float in kinds:  # PyYAML reads 1e-4 (no dot) as a string: a number in a string is still a number
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) or isinstance(value, str) and _is_number(value)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            wanted = "true or false" if bool in kinds else "a number" if float in kinds else "a whole number"
            raise ValueError(f"expected {wanted}, not {type(value).__name__} {value!r}")
        return value


class DataConfig(_Section):
    source: Literal["embedded", "local", "hub"] = "embedded"
    path: str | None = None  # local file or folder (train split)
    val_path: str | None = None  # local file for the validation split, where it is separate
    hub_name: str | None = None  # data set id on the hub; each task has a default
    hub_config: str | None = None
    dataset: Literal["gsm8k", "bioqa"] | None = None  # which data set of a task that has several (t5_qa)
    prompt_field: str = "prompt"  # gpt2_sft: the record fields (JSON lines or hub columns) of a pair
    response_field: str = "response"
    train_examples: int | None = Field(None, gt=0)  # None: all
    val_examples: int | None = Field(None, gt=0)
    max_length: int = Field(384, gt=0)  # tokens per feature (source length for T5)
    target_length: int = Field(128, gt=0)  # T5 answer length
    doc_stride: int = Field(128, ge=0)
    # max_length: every feature padded to max_length; dynamic: each batch padded to its longest feature;
    # packed: a batch's features concatenated into one row, attention kept within each (padding-free)
    padding: Literal["max_length", "dynamic", "packed"] = "max_length"
    # dynamic: each batch's length rounded up to a multiple of this; packed: the packed row's length likewise.
    # 8 fills whole tensor-core tiles; a larger multiple leaves a compiled model a few shapes to replay as CUDA graphs.
    pad_multiple: int = Field(8, gt=0)
    group_by_length: bool = False  # batches of features of similar length (less padding under 'dynamic')
    # packed: every training row exactly this many tokens, one shape that a compiled model compiles and records as a
    # CUDA graph once; each batch's features are chosen so their real tokens fit ('auto': a batch's mean real tokens
    # plus a tenth, rounded up to pad_multiple). None: each row padded to the next multiple of pad_multiple.
    pack_tokens: int | Literal["auto"] | None = None
    context_length: Literal["short", "squad"] = "short"  # embedded SQuAD: 'squad' gives SQuAD's feature lengths
    num_workers: int = Field(0, ge=0)
    pin_memory: bool = False
    # Copy each training batch to the GPU on a stream of its own, one batch ahead (labkit.train.device_batches):
    # the training stream then never waits for a copy from pageable memory, which first drains it
    copy_stream: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = Field(None, gt=0)
    on_gpu: bool = False  # hold the whole data set on the GPU and augment there (cifar_resnext)
    augment: bool = True
    # bert_squad: windows = every question, contexts cut into max_length windows overlapping by doc_stride
    # (transformers' run_qa recipe, scored by the official SQuAD 2.0 metric); one_per_answer = answerable
    # questions only, one example per given answer, context before question, cut at max_length, no stride
    # (the original lab 01/05 preparation, scored by its loss)
    squad_examples: Literal["windows", "one_per_answer"] = "windows"
    # gpt2_sft: pairs = prompt/response, the loss on the response; dialogue_windows = whole dialogues joined (each
    # ended by end-of-text) and cut into random max_length-token windows, the loss on every token (the original lab 06)
    sft_format: Literal["pairs", "dialogue_windows"] = "pairs"
    # t5_qa GSM8K target: the worked solution, or the final number alone (the original lab 07's target)
    gsm8k_target: Literal["solution", "final_number"] = "solution"
    drop_duplicate_contexts: bool = False  # t5_qa bioqa: one question per distinct context (the original lab 07)
    # Seed of the generated (embedded) data sets and of held-out validation splits; None: train.seed. Fixing it lets
    # train.seed vary initialisation, order and augmentation alone, over the same data (a run's noise).
    seed: int | None = None
    # Hold out this random share (seed Config.data_seed) of the training split for validation instead of the source's
    # own validation split, as the original lab 07 did (5%); None: the source's split
    val_fraction: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.squad_examples == "one_per_answer" and (self.doc_stride or self.padding != "max_length"):
            raise ValueError("data.squad_examples 'one_per_answer' is one example per answer, cut at max_length with no "
                             "windows and padded to max_length: set data.doc_stride: 0 and data.padding: max_length")
        if self.source == "local" and not self.path:
            raise ValueError("data.source is 'local' but data.path is not set: set data.path to the file")
        if self.source == "embedded" and (self.path or self.val_path):
            raise ValueError("data.path/val_path is set but data.source is 'embedded' (data the kit generates), which "
                             "would ignore the file: set data.source: local to read it, or remove data.path")
        if self.pack_tokens is not None and self.padding != "packed":
            raise ValueError(f"data.pack_tokens sets the length of packed rows, but data.padding is '{self.padding}': "
                             "set data.padding: packed, or remove data.pack_tokens")
        if self.pack_tokens is not None and self.group_by_length:
            raise ValueError("data.pack_tokens chooses each batch's features to fit its rows, and data.group_by_length "
                             "chooses them by length: set one of them")
        if isinstance(self.pack_tokens, int) and self.pack_tokens <= self.max_length:
            raise ValueError(f"data.pack_tokens {self.pack_tokens} leaves no room for a feature of max_length "
                             f"{self.max_length} and the row's padding: set it above max_length, or 'auto'")
        if self.persistent_workers and self.num_workers == 0:
            raise ValueError("data.persistent_workers needs data.num_workers > 0")
        if self.on_gpu and (self.num_workers or self.pin_memory):
            raise ValueError("data.on_gpu keeps the data set in GPU memory, where loader workers and pinned host memory "
                             "do not apply: set data.num_workers: 0, data.persistent_workers: false, data.pin_memory: false")
        if self.doc_stride >= self.max_length:
            raise ValueError(f"data.doc_stride ({self.doc_stride}) must be smaller than data.max_length ({self.max_length})")
        return self


class LoraConfig(_Section):
    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: the model family's attention projections
    # Parameters that train beside the adapters: regular expressions searched in each parameter's name
    # (e.g. 'wte' for GPT-2's token embedding). The original lab 06 trained embeddings, LayerNorms and the
    # adapted layers' biases too (loralib froze only the adapted weights).
    also_train: list[str] = []


class ModelConfig(_Section):
    preset: str = "tiny"  # a size the task's model family knows (tiny, base, medium, large, ...)
    weights: Literal["random", "hub", "local"] = "random"  # random: the real architecture, untrained
    path: str | None = None  # local folder with weights (weights: local)
    hub_name: str | None = None  # overrides the preset's hub id
    attn_implementation: Literal["eager", "sdpa"] = "sdpa"
    # off; full: every block; selective: every checkpoint_every-th block; stage_and_conv (ResNeXt): each stage,
    # every convolution inside its blocks and the final linear layer, as the original lab 04 wrapped them
    checkpointing: Literal["off", "full", "selective", "stage_and_conv"] = "off"
    # ResNeXt's initial weights: PyTorch's layer defaults, or kaiming_uniform_ (ReLU gain) on every convolution and
    # linear weight, as the original lab 02-04 initialised them
    init: Literal["pytorch", "kaiming_uniform"] = "pytorch"
    checkpoint_every: int = Field(2, gt=0)  # selective: checkpoint every k-th block
    channels_last: bool = False
    compile: bool = False
    # torch.compile's mode; 'reduce-overhead' replays CUDA graphs, which removes the per-kernel launch cost
    # that bounds small, fast steps (ResNeXt on CIFAR), and needs fixed input shapes to pay off
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # torch.compile's dynamic: true compiles once for symbolic shapes; false compiles each input shape on its own
    # (static kernels), except sizes the task marks symbolic (bert_squad: a packed row's length); None: true under
    # data.padding dynamic or packed (every batch has its own length), else torch's default (static, then symbolic
    # for what changes)
    compile_dynamic: bool | None = None
    # What torch.compile compiles, and how often. model: the whole model as one graph (reduce-overhead: one CUDA
    # graph a step), every block (transformer layer) traced and compiled anew. regions: the same one graph, but a
    # block is compiled once and its code reused for every block of its kind (nested compile regions; torch < 2.8
    # has none and compiles as model), so compilation no longer grows with depth (BERT: the first step halved; GPT-2:
    # slower steps; T5: no faster; docs/benchmarks.md). blocks: each block compiled on
    # its own, one compilation for all, and the embeddings, head and loss run eager between the blocks' graphs
    compile_scope: Literal["model", "regions", "blocks"] = "model"
    # Inductor's options laid over compile_mode's (torch._inductor.list_options() names them all), e.g.
    # {conv_1x1_as_mm: true}: 1x1 convolutions as matrix products, or {coordinate_descent_tuning: true}: each
    # generated kernel's block sizes tuned by measurement (longer compilation); neither moved ResNeXt's fast path
    compile_options: dict[str, bool | int | float | str] = {}
    finetune: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    split_devices: int = Field(1, gt=0)  # layer-wise model parallel over this many GPUs (T5)

    @property
    def cuda_graphs(self) -> bool:
        """Whether the compiled model replays CUDA graphs: its mode's choice, unless compile_options says otherwise."""
        by_mode = self.compile_mode in ("reduce-overhead", "max-autotune")
        return self.compile and bool(self.compile_options.get("triton.cudagraphs", by_mode))

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.weights == "local" and not self.path:
            raise ValueError("model.weights is 'local' but model.path is not set: set model.path to the folder")
        if self.compile_options and not self.compile:
            raise ValueError("model.compile_options are torch.compile's options, but model.compile is false: set "
                             "model.compile true, or leave model.compile_options out")
        if self.compile_scope != "model" and not self.compile:
            raise ValueError(f"model.compile_scope '{self.compile_scope}' says what torch.compile compiles, but "
                             "model.compile is false: set model.compile true, or leave model.compile_scope out")
        return self


class TrainConfig(_Section):
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)  # stops early; None: all epochs
    batch_size: int = Field(8, gt=0)  # per device
    # Set: the global batch held constant instead, batch_size = global / (devices x num_nodes x grad_accum).
    global_batch_size: int | None = Field(None, gt=0)
    grad_accum: int = Field(1, gt=0)
    # adam: Adam with weight decay added to the gradient (L2, torch.optim.Adam), as the original lab 02-04 trained
    optimizer: Literal["adamw", "adam", "sgd", "sgd_momentum", "nesterov"] = "adamw"
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # matrices: decay weight matrices only (BERT/GPT-2 practice); all: every parameter, biases and norms too
    # (torch's default, which the original labs used)
    weight_decay_on: Literal["matrices", "all"] = "matrices"
    eps: float = Field(1e-8, gt=0)  # Adam/AdamW epsilon; transformers' AdamW (original labs 01 and 07) used 1e-6
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    fused: bool = False  # fused optimizer kernels (CUDA only)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    schedule: Literal["linear", "constant"] = "linear"
    grad_clip: float | None = Field(None, gt=0)
    precision: Literal["32", "tf32", "16-mixed", "bf16-mixed", "bf16-true"] = "32"
    # How many of cuDNN's algorithms for a convolution shape are timed, the fastest kept (0: every one). More timing
    # takes longer at the first step and may pick an algorithm with a larger workspace; PyTorch's default is 10
    cudnn_benchmark_limit: int = Field(10, ge=0)
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    strategy: Literal["auto", "dp", "ddp", "fsdp", "deepspeed"] = "auto"
    devices: int = Field(1, gt=0)
    num_nodes: int = Field(1, gt=0)
    zero_stage: int = Field(2, ge=1, le=3)  # deepspeed
    seed: int = 0
    eval_every_epoch: bool = True
    eval_every_steps: int | None = Field(None, gt=0)  # also validate every this many optimizer steps
    # Keep the weights of the lowest validation loss and end the run with them (its test loss, where the task has a
    # test set, is theirs), as the original lab 07's ModelCheckpoint(monitor="val_loss", save_top_k=1) did
    keep_best: bool = False
    eval_batches: int | None = Field(None, gt=0)  # cap on validation batches (None: all)
    log_every: int = Field(10, gt=0)
    # Python's full garbage collections (of the oldest generation) during training. deferred: none starts inside a
    # step; one runs at each validation and epoch end instead, where every rank pauses anyway (Megatron-LM's manual
    # GC). automatic: Python starts them when its counters say, in whatever step that is; under DDP every rank then
    # waits at the next all-reduce for the one collecting.
    gc: Literal["deferred", "automatic"] = "deferred"

    @model_validator(mode="before")
    @classmethod
    def _per_device_batch(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("global_batch_size"):
            return data
        shares = {k: int(data.get(k, 1)) for k in ("devices", "num_nodes", "grad_accum")}
        n = shares["devices"] * shares["num_nodes"] * shares["grad_accum"]
        if int(data["global_batch_size"]) % n:
            raise ValueError(f"train.global_batch_size {data['global_batch_size']} does not split evenly over devices x "
                             f"num_nodes x grad_accum = {n}; make it a multiple of {n} or set train.batch_size instead")
        return {**data, "batch_size": int(data["global_batch_size"]) // n}

    @model_validator(mode="after")
    def _check_strategy(self) -> "TrainConfig":
        s, world = self.strategy, self.devices * self.num_nodes
        if s == "auto" and world > 1:
            raise ValueError(f"train.devices x num_nodes is {world} but train.strategy is 'auto' (one device): "
                             "choose ddp, fsdp, deepspeed or dp")
        if s == "dp" and (self.accelerator == "cpu" or self.num_nodes > 1):
            raise ValueError("train.strategy 'dp' is DataParallel: one process driving several GPUs of one machine; "
                             "on a CPU or over several nodes use strategy 'ddp'")
        if self.keep_best and s == "fsdp":
            raise ValueError("train.keep_best copies the model's weights, which train.strategy 'fsdp' shards over the ranks: "
                             "use strategy ddp or deepspeed, or set train.keep_best: false")
        if s == "fsdp" and self.precision == "16-mixed":
            raise ValueError("train.strategy 'fsdp' (FSDP2 in Fabric) has no fp16 gradient scaling: "
                             "use precision bf16-mixed, bf16-true, tf32 or 32")
        return self


class MeasureConfig(_Section):
    warmup_steps: int = Field(5, ge=0)  # steps left out of steady-state throughput
    profile_steps: int = Field(0, ge=0)  # steps after warm-up profiled for compute vs communication (0: off)
    gpu_sample_interval: float = Field(0.5, gt=0)  # seconds between GPU sampler readings
    nvtx: bool = True
    memory_budget_gb: float | None = Field(None, gt=0)  # batch-size search (notebook 04)
    max_batch: int = Field(4096, gt=0)
    # gpt2_sft, after training: dialogue quality as the original lab 06 scored it (labkit.reward). off; random: a tiny
    # DeBERTa-v2 with random weights (the path, offline); hub: OpenAssistant/reward-model-deberta-v3-large-v2; local
    reward_model: Literal["off", "random", "hub", "local"] = "off"
    reward_model_path: str | None = None  # the reward model's folder (reward_model: local)
    reward_prompts: int = Field(166, gt=0)  # test prompts answered and scored (the original: the 166 of its prompts.csv)

    @model_validator(mode="after")
    def _check(self) -> "MeasureConfig":
        if self.reward_model == "local" and not self.reward_model_path:
            raise ValueError("measure.reward_model is 'local' but measure.reward_model_path is not set: set it to the folder")
        return self


class SimclsConfig(_Section):
    """Re-ranking summaries (task simcls): the generator that writes the candidates, and the scorer's ranking loss."""
    # The generator (a T5): its candidates are generated once per data set and cached, before the scorer trains.
    generator: ModelConfig = Field(default_factory=ModelConfig)
    source_prefix: str = ""  # put before each abstract for the generator, e.g. "summarize: " for a pretrained t5-small
    # Steps of the kit's training loop on the training pairs (abstract -> title) before generating; 0: the generator
    # as loaded. A random-weight generator writes nothing like a title, and its candidates would all score ROUGE 0.
    generator_steps: int = Field(0, ge=0)
    generator_lr: float = Field(1e-3, gt=0)
    num_candidates: int = Field(8, ge=2)  # candidates per abstract: diverse beam search, one beam per group
    diversity_penalty: float = Field(1.0, ge=0)  # subtracted from a token's log-probability per earlier group that chose it
    generation_batch: int = Field(32, gt=0)  # abstracts per generation batch
    margin: float = Field(0.01, ge=0)  # candidates i < j in ROUGE order: score_i must beat score_j by margin * (j - i)
    gold_margin: float = Field(0.0, ge=0)  # the reference must beat every candidate by this much
    gold_weight: float = Field(1.0, ge=0)  # weight of the reference-vs-candidate term


class LaunchConfig(_Section):
    # A hung rank ends the whole run after this long; a SLURM job's time limit is this plus 10 min (labkit.launch.slurm).
    timeout_s: float = Field(3600, gt=0)
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    memory_gb: float | None = Field(None, gt=0)  # host memory per node a SLURM job asks for; None: the partition's default
    # Each rank runs on the CPU cores nearest its GPU (NVML's affinity of the GPU, within the cores this job may
    # use), so that the host's kernel launches and copies stay on the GPU's own socket; a no-op without NVML.
    bind_cpus: bool = False


class Config(_Section):
    task: Literal["bert_squad", "cifar_resnext", "gpt2_sft", "t5_qa", "simcls"]
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    simcls: SimclsConfig = Field(default_factory=SimclsConfig)

    @property
    def data_seed(self) -> int:
        """The seed of generated data sets and held-out splits: data.seed, else train.seed."""
        return self.train.seed if self.data.seed is None else self.data.seed

    @model_validator(mode="after")
    def _check_task_options(self) -> "Config":
        # Options that only one task implements; elsewhere they would be silently ignored.
        only = {"model.checkpointing 'stage_and_conv'": (self.model.checkpointing == "stage_and_conv", "cifar_resnext"),
                "data.squad_examples 'one_per_answer'": (self.data.squad_examples == "one_per_answer", "bert_squad"),
                "data.gsm8k_target 'final_number'": (self.data.gsm8k_target == "final_number", "t5_qa"),
                "data.drop_duplicate_contexts": (self.data.drop_duplicate_contexts, "t5_qa"),
                "model.init 'kaiming_uniform'": (self.model.init == "kaiming_uniform", "cifar_resnext"),
                "data.sft_format 'dialogue_windows'": (self.data.sft_format == "dialogue_windows", "gpt2_sft"),
                f"measure.reward_model '{self.measure.reward_model}'": (self.measure.reward_model != "off", "gpt2_sft")}
        for option, (used, task) in only.items():
            if used and self.task != task:
                raise ValueError(f"{option} applies to task '{task}' only, not '{self.task}': remove it")
        return self


class ConfigError(ValueError):
    """A params file that cannot run; the message names the file, the key and the fix."""


def load(config_file: str | Path, profile: str = "smoke", overrides: dict[str, Any] | None = None) -> Config:
    """Merge profile <- configuration file <- overrides, validate, and return the config.

    ``overrides`` use dotted keys, e.g. ``{"train.batch_size": 16}``, or sections, e.g.
    ``{"train": {"batch_size": 16}}``; either way only the keys named change.
    """
    path = Path(config_file)
    if not path.is_file() and not path.is_absolute() and (PARAMS_DIR.parent / path).is_file():
        path = PARAMS_DIR.parent / path  # notebooks run from notebooks/, params paths are repo-relative
    if not path.is_file():
        near = difflib.get_close_matches(str(config_file), [str(p.relative_to(PARAMS_DIR.parent)) for p in PARAMS_DIR.rglob("*.yaml")], n=1)
        hint = f" Did you mean '{near[0]}'?" if near else " Configuration files live under params/<notebook>/."
        raise ConfigError(f"{config_file}: no such params file.{hint}")
    raw = _read_yaml(path)
    task = raw.get("task")
    allowed = NOTEBOOK_TASKS.get(path.parent.name)
    if allowed and isinstance(task, str) and task not in allowed:
        homes = [nb for nb, tasks in NOTEBOOK_TASKS.items() if task in tasks]
        raise ConfigError(f"{path}: task '{task}' does not belong in {path.parent.name}/, whose notebook is written for "
                          f"{' and '.join(allowed)}; move the file to params/{homes[0] if homes else '<its notebook>'}/ "
                          "or set the task of this notebook")
    merged = copy.deepcopy(profile_for(profile, task)) if task else {}
    _deep_merge(merged, profile_for(profile, path.parent.name))  # a notebook's own section, where it has one
    _deep_merge(merged, raw)
    # A section named '<notebook>/<pattern>' (fnmatch, e.g. '07_t5_model_parallel/gsm8k_*') is the profile's word on
    # those configurations themselves, so it lies over their files: how `full` runs each one as the original did.
    for key in sorted(k for k in profile_for(profile, None) if "/" in k and fnmatch.fnmatch(f"{path.parent.name}/{path.stem}", k)):
        _deep_merge(merged, profile_for(profile, key))
    for dotted, value in (overrides or {}).items():
        _set_dotted(merged, dotted, value)
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_explain(err, path, profile)) from None


def parse_settings(text: str) -> dict[str, Any]:
    """Settings written on one line, as ``load`` takes them: 'seed=1,model.compile_options={a: 1, b: 2}' ->
    {'seed': 1, 'model.compile_options': {'a': 1, 'b': 2}}. Values are YAML; a comma inside a list or mapping belongs
    to its value."""
    settings = {}
    for pair in filter(None, _top_level_split(text)):
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{pair!r}: expected key=value (e.g. seed=1 or train.lr=1e-4)")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def _top_level_split(text: str, sep: str = ",") -> list[str]:
    """``text`` cut at each ``sep`` outside brackets and braces ('a=[1, 2],b={x: 1}' -> ['a=[1, 2]', 'b={x: 1}'])."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "[{") - (char in "]}")
        if char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def profile_for(profile: str, task: str | None) -> dict:
    """The profile's settings for one task or notebook (empty where the profile says nothing of it); task None: all."""
    sections = _read_yaml(profile_path(profile))
    return sections if task is None else sections.get(task, {})


def profile_path(profile: str) -> Path:
    """The file of a profile given by name. Only a name: the profile also names the folder runs/<profile>/,
    so a path ('../x', '/tmp/x') would put records and locks outside runs/."""
    known = sorted(p.stem for p in (PARAMS_DIR / "profiles").glob("*.yaml"))
    if profile not in known:
        near = difflib.get_close_matches(str(profile), known, n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise ConfigError(f"profile '{profile}' does not exist: a profile is the name of a file in "
                          f"{PARAMS_DIR / 'profiles'}, without .yaml; choose one of {known}.{hint}")
    return PARAMS_DIR / "profiles" / f"{profile}.yaml"


class _TwiceGiven(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"line {line}: '{key}' is given twice (also on line {first}); YAML would silently keep the "
                         "last value: delete one")


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in lines:
                    raise _TwiceGiven(key, line, lines[key])
                lines[key] = line
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except _TwiceGiven as err:
        raise ConfigError(f"{path}, {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _deep_merge(base: dict, top: dict) -> None:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    section: Any = Config
    for depth, key in enumerate(parents):
        field = section.model_fields.get(key) if section else None
        section = field.annotation if field and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        node = tree.setdefault(key, {})
        if field is not None and get_origin(field.annotation) is dict and isinstance(node, dict):
            # a mapping setting (model.compile_options): the rest is one key, dots and all ('triton.cudagraphs')
            leaf, tree = ".".join((parents + [leaf])[depth + 1:]), node
            break
        if (field and section is None) or not isinstance(node, dict):  # unknown keys: left to validation's did-you-mean
            setting = ".".join(parents[:depth + 1])
            raise ConfigError(f"override '{dotted}': {setting} is a setting, not a section, so it has no key "
                              f"'{(parents + [leaf])[depth + 1]}'; write {{'{setting}': value}}")
        tree = node
    if isinstance(value, dict) and isinstance(tree.get(leaf), dict):
        _deep_merge(tree[leaf], value)  # a section: its other keys keep the profile's and the file's values
    else:
        tree[leaf] = copy.deepcopy(value)


def _fields_at(loc: tuple) -> list[str]:
    """Field names valid at a location in the schema, for did-you-mean."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _explain(err: ValidationError, path: Path, profile: str) -> str:
    lines = [f"{path} (profile '{profile}'): {err.error_count()} problem(s)"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            known = _fields_at(e["loc"])
            near = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"known keys here: {', '.join(known)}"
            lines.append(f"  - {key}: unknown key; {hint}")
        elif e["type"] == "literal_error":
            allowed = e["ctx"]["expected"]
            lines.append(f"  - {key}: {e['input']!r} is not allowed; choose one of {allowed}")
        elif e["type"] == "missing":
            lines.append(f"  - {key}: required; add it to the file")
        else:
            lines.append(f"  - {key or 'file'}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)
