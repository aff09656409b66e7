"""Qwen2.5-VL observation encoder (GR-3 style mixture-of-transformers prefix).

The VLM reads, per sample, ``num_views`` camera images, the instruction and one proprio-state token:

    [<|vision_start|> <|image_pad|> x N <|vision_end|>] x V  instruction-bytes  <state>

Image pad embeddings are replaced by the vision tower's merged patch features, the state token's
embedding by a trainable ``Linear(state_dim, hidden)``. Positions are Qwen's multimodal RoPE
(mRoPE: temporal/height/width sections; text tokens have all three equal), computed by the model's
own ``get_rope_index``. The batch is right-padded; the language model runs once with a KV cache
and the encoder exposes the cached (RoPE-applied) keys/values of its latter-half layers.

The action expert continues the sequence with plain 1-D RoPE at ``next_position + k``: for text
tokens mRoPE reduces to exactly that rotation, so prefix and action tokens share one position axis.

Two kinds of model come in:

* a local checkpoint directory (``from_pretrained``), e.g. Qwen/Qwen2.5-VL-3B-Instruct: loaded with
  ``AutoModel``/``AutoProcessor`` and ``local_files_only=True``, never downloading;
* a random-init model built from a config (``tiny`` for CPU tests, ``from_config`` for latency
  benchmarks of the 3B shape) with an in-memory byte-level tokenizer.

Images are preprocessed by the checkpoint's image processor (the PIL backend without torchvision).
``Qwen2_5_VLProcessor`` itself always builds a video processor, which needs torchvision; where that
fails, the tokenizer and image processor are loaded on their own (:func:`load_processor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2VLImageProcessorPil,
)

from grrl_policy.encoders import EncoderOutput, ObservationBatch, ObservationEncoder

# Qwen's special tokens, in the order build_tokenizer appends them after the 256 byte tokens.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TINY_TOKEN_IDS: dict[str, int] = {token: 256 + i for i, token in enumerate(SPECIAL_TOKENS)}
TINY_VOCAB_SIZE = 272  # 256 bytes + 7 specials, rounded up to a multiple of 16
PROCESSOR_CLASS = "Qwen2_5_VLProcessor"


@dataclass
class VLMProcessor:
    """The two parts of a Qwen2.5-VL processor the encoder uses (it never processes video)."""

    tokenizer: PreTrainedTokenizerBase
    image_processor: Any


# ----------------------------------------------------------------------------------------------
# configurations, tokenizer, checkpoints


def tiny_vlm_config() -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config small enough for CPU tests, with the byte tokenizer's token ids."""
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": TINY_VOCAB_SIZE,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,  # head_dim 16
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            # mrope_section splits head_dim / 2 = 8 frequencies into temporal/height/width
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [2, 3, 3],
            },
            "bos_token_id": TINY_TOKEN_IDS["<|endoftext|>"],
            "eos_token_id": TINY_TOKEN_IDS["<|endoftext|>"],
            "pad_token_id": TINY_TOKEN_IDS["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
        image_token_id=TINY_TOKEN_IDS["<|image_pad|>"],
        video_token_id=TINY_TOKEN_IDS["<|video_pad|>"],
        vision_start_token_id=TINY_TOKEN_IDS["<|vision_start|>"],
        vision_end_token_id=TINY_TOKEN_IDS["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def qwen25_vl_3b_config() -> Qwen2_5_VLConfig:
    """The shapes of Qwen/Qwen2.5-VL-3B-Instruct (field names of transformers 5.x)."""
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "use_sliding_window": False,
            "sliding_window": 32768,
            "max_window_layers": 70,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [16, 24, 24],
            },
            "bos_token_id": 151643,
            "eos_token_id": 151645,
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
            "hidden_act": "silu",
        },
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel pre-tokenizers emit)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: token id = byte value, then Qwen's special tokens (no merges)."""
    vocab = {char: byte for byte, char in _byte_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # no regex split: every byte is one token, whatever the text
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",  # Qwen pads with <|endoftext|> too
        model_max_length=32768,
    )


def build_processor() -> VLMProcessor:
    """The in-memory processor of random-init models: byte tokenizer + PIL image processor."""
    return VLMProcessor(tokenizer=build_tokenizer(), image_processor=Qwen2VLImageProcessorPil())


def load_processor(path: str | Path) -> Any:
    """A checkpoint's processor via AutoProcessor, else its tokenizer + image processor.

    ``Qwen2_5_VLProcessor`` always builds a video processor, which imports torchvision; without it
    AutoProcessor raises ImportError and the two parts the encoder needs are loaded on their own.
    """
    try:
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except ImportError:
        processor = None
    if hasattr(processor, "tokenizer") and hasattr(processor, "image_processor"):
        return processor
    return VLMProcessor(
        tokenizer=AutoTokenizer.from_pretrained(str(path), local_files_only=True),
        image_processor=AutoImageProcessor.from_pretrained(str(path), local_files_only=True),
    )


def save_tiny_checkpoint(path: str | Path, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """Save a random-init tiny Qwen2.5-VL in the layout of a hub checkpoint; return the model.

    Like Qwen/Qwen2.5-VL-3B-Instruct it holds a ``Qwen2_5_VLForConditionalGeneration``
    (config.json + model.safetensors), the tokenizer files and preprocessor_config.json, with the
    tokenizer naming ``Qwen2_5_VLProcessor`` so AutoProcessor resolves it the same way.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # deterministic weights, caller's RNG untouched
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(tiny_vlm_config()).eval()
    model.save_pretrained(path)
    processor = build_processor()
    processor.tokenizer._set_processor_class(PROCESSOR_CLASS)
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    return model


# ----------------------------------------------------------------------------------------------
# the encoder


class VLMEncoder(ObservationEncoder):
    """Qwen2.5-VL prefix encoder: exposes the KV cache of the latter half of its LLM layers.

    ``vlm`` is the base ``Qwen2_5_VLModel`` (a ``...ForConditionalGeneration`` is unwrapped);
    ``processor`` anything with ``.tokenizer`` and ``.image_processor``. Each view is resized to
    ``image_size`` x ``image_size`` (a multiple of patch_size * spatial_merge_size) so it gives a
    fixed grid of ``tokens_per_view`` vision tokens. ``freeze_vision`` stops gradients into the
    vision tower (it then runs without autograd).

    The KV is read from the model's DynamicCache, so gradient checkpointing of the language model
    (which drops the cache) is not supported.
    """

    def __init__(
        self,
        vlm: PreTrainedModel,
        processor: Any,
        state_dim: int,
        image_size: int = 224,
        num_views: int = 3,
        freeze_vision: bool = False,
    ) -> None:
        super().__init__()
        if hasattr(getattr(vlm, "model", None), "language_model"):
            vlm = vlm.model  # a ...ForConditionalGeneration: keep the base model, drop the LM head
        for attr in ("language_model", "visual", "get_rope_index", "get_image_features"):
            if not hasattr(vlm, attr):
                raise TypeError(
                    f"vlm must be a Qwen2.5-VL style model, {type(vlm).__name__} lacks {attr}"
                )
        if state_dim < 1 or num_views < 0:
            raise ValueError(
                f"need state_dim >= 1 and num_views >= 0, got {state_dim}, {num_views}"
            )
        text, vision = vlm.config.text_config, vlm.config.vision_config
        factor = vision.patch_size * vision.spatial_merge_size
        if image_size <= 0 or image_size % factor:
            raise ValueError(
                f"image_size must be a positive multiple of {factor}, got {image_size}"
            )

        self.vlm = vlm
        self.processor = processor
        self.state_dim = state_dim
        self.image_size = image_size
        self.num_views = num_views
        self.freeze_vision = freeze_vision
        self.num_layers = text.num_hidden_layers
        self.kv_heads = text.num_key_value_heads
        self.head_dim = (
            getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        )
        self.pooled_dim = text.hidden_size
        self.rope_theta = float(text.rope_parameters["rope_theta"])
        self.tokens_per_view = (image_size // factor) ** 2

        # Vision token ids come from the model config (they index its embedding table); the
        # tokenizer only encodes the instruction. The state token's embedding is replaced, so any
        # in-vocabulary id serves: the pad token, which also fills the right padding.
        config = vlm.config
        self.image_token_id = int(config.image_token_id)
        self.vision_start_id = int(config.vision_start_token_id)
        self.vision_end_id = int(config.vision_end_token_id)
        tokenizer = processor.tokenizer
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        if pad is None or not 0 <= pad < text.vocab_size:
            raise ValueError(f"tokenizer needs a pad or eos token inside the vocabulary, got {pad}")
        self.pad_token_id = int(pad)

        embed = vlm.get_input_embeddings().weight
        self.state_proj = nn.Linear(state_dim, text.hidden_size, device=embed.device)
        if embed.device.type != "meta":
            # a unit-variance state then lands at the scale of the token embeddings
            with torch.no_grad():
                std = embed.float().std().item()
                nn.init.normal_(self.state_proj.weight, std=std / math.sqrt(state_dim))
                nn.init.zeros_(self.state_proj.bias)
        if freeze_vision:
            vlm.visual.requires_grad_(False)

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        state_dim: int,
        image_size: int = 224,
        num_views: int = 3,
        dtype: torch.dtype | None = None,
        freeze_vision: bool = False,
    ) -> VLMEncoder:
        """Load a local Qwen2.5-VL checkpoint directory (never downloads)."""
        kwargs: dict[str, Any] = {"local_files_only": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        processor = load_processor(path)
        vlm = AutoModel.from_pretrained(str(path), **kwargs)
        return cls(vlm, processor, state_dim, image_size, num_views, freeze_vision)

    @classmethod
    def from_config(
        cls,
        config: Qwen2_5_VLConfig,
        state_dim: int,
        image_size: int = 224,
        num_views: int = 3,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        freeze_vision: bool = False,
    ) -> VLMEncoder:
        """Random-init model of any config with the in-memory processor (benchmarks, tests).

        ``device`` allocates the weights there directly (``"meta"`` allocates nothing).
        """
        with torch.device(device if device is not None else "cpu"):
            vlm = Qwen2_5_VLModel._from_config(config, **({"dtype": dtype} if dtype else {}))
        return cls(vlm, build_processor(), state_dim, image_size, num_views, freeze_vision)

    @classmethod
    def tiny(
        cls, state_dim: int, num_views: int = 3, image_size: int = 56, freeze_vision: bool = False
    ) -> VLMEncoder:
        """The tiny configuration, random init, CPU (no weights, no files)."""
        return cls.from_config(
            tiny_vlm_config(), state_dim, image_size, num_views, freeze_vision=freeze_vision
        )

    # -- forward --------------------------------------------------------------------------------

    def _check(self, obs: ObservationBatch) -> None:
        state = obs.state
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise ValueError(f"state must be (B, {self.state_dim}), got {tuple(state.shape)}")
        batch = state.shape[0]
        if len(obs.instruction) != batch:
            raise ValueError(f"need {batch} instructions, got {len(obs.instruction)}")
        images = obs.images
        if images is None:
            return
        if images.ndim != 5 or images.shape[0] != batch or images.shape[2] != 3:
            raise ValueError(f"images must be (B={batch}, V, 3, H, W), got {tuple(images.shape)}")
        if images.shape[1] != self.num_views:
            raise ValueError(f"expected {self.num_views} views, got {images.shape[1]}")
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")

    def _image_features(
        self, images: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Merged vision features (B*V*tokens_per_view, hidden) and the grids (B*V, 3)."""
        batch, views, _, height, width = images.shape
        flat = images.reshape(batch * views, 3, height, width)
        size = self.image_size
        if (height, width) != (size, size):
            # squash to a square so every view gives the same fixed grid
            flat = F.interpolate(flat.float(), size=(size, size), mode="bilinear", antialias=True)
            flat = flat.round().clamp(0, 255).to(torch.uint8)
        processed = self.processor.image_processor(
            images=list(flat.cpu().numpy()),
            size={"shortest_edge": size * size, "longest_edge": size * size},
            input_data_format="channels_first",
            return_tensors="pt",
        )
        pixel_values = processed["pixel_values"].to(device)
        grid = processed["image_grid_thw"].to(device)
        merge = self.vlm.config.vision_config.spatial_merge_size
        if int(grid.prod(-1).sum()) != batch * views * self.tokens_per_view * merge**2:
            raise RuntimeError(f"image processor gave grids {grid.tolist()}, not {size}px squares")
        vision_grad = torch.is_grad_enabled() and not self.freeze_vision
        with torch.set_grad_enabled(vision_grad):
            features = self.vlm.get_image_features(pixel_values, grid, return_dict=True)
        return torch.cat(features.pooler_output, dim=0), grid

    def forward(self, obs: ObservationBatch) -> EncoderOutput:
        self._check(obs)
        batch = obs.batch_size
        embedding = self.vlm.get_input_embeddings()
        device = embedding.weight.device
        with_images = obs.images is not None and self.num_views > 0

        # token ids and token types (1 = image) per sample, right-padded
        prefix: list[int] = []
        if with_images:
            view = [self.image_token_id] * self.tokens_per_view
            prefix = ([self.vision_start_id, *view, self.vision_end_id]) * self.num_views
        # split_special_tokens: an instruction spelling "<|image_pad|>" stays plain text
        text = self.processor.tokenizer(
            list(obs.instruction), add_special_tokens=False, split_special_tokens=True
        )["input_ids"]
        sequences = [[*prefix, *ids, self.pad_token_id] for ids in text]  # last: the state token
        lengths = torch.tensor([len(s) for s in sequences], device=device)
        width = int(lengths.max())
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq)
        input_ids = input_ids.to(device)
        mask = torch.arange(width, device=device)[None] < lengths[:, None]  # (B, P)
        # get_rope_index gives image tokens (type 1) their 3-D grid positions, the rest 1-D ones
        token_types = torch.zeros_like(input_ids, dtype=torch.int32)
        token_types[:, : len(prefix)] = torch.tensor(prefix, device=device) == self.image_token_id

        embeds = embedding(input_ids)
        grid = None
        if with_images:
            features, grid = self._image_features(obs.images, device)
            image_slots = (token_types == 1)[..., None]
            embeds = embeds.masked_scatter(image_slots, features.to(embeds.dtype))
        state = self.state_proj(obs.state.to(device, self.state_proj.weight.dtype))
        state_slot = F.one_hot(lengths - 1, width).bool()[..., None]  # (B, P, 1)
        embeds = torch.where(state_slot, state.to(embeds.dtype)[:, None, :], embeds)

        attention_mask = mask.long()
        positions, _ = self.vlm.get_rope_index(
            input_ids,
            mm_token_type_ids=token_types,
            image_grid_thw=grid,
            attention_mask=attention_mask,
        )  # (3, B, P); padding gets 0
        out = self.vlm.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            return_dict=True,
        )
        cache = out.past_key_values
        first = self.num_layers - self.exposed_layers
        if cache is None or len(cache.layers) < self.num_layers or cache.get_seq_length() != width:
            raise RuntimeError("the language model kept no KV cache (gradient checkpointing on?)")
        keys = [cache.layers[i].keys for i in range(first, self.num_layers)]
        values = [cache.layers[i].values for i in range(first, self.num_layers)]

        hidden = out.last_hidden_state
        weight = mask.to(hidden.dtype)[..., None]
        pooled = (hidden * weight).sum(1) / weight.sum(1)
        next_position = positions.masked_fill(~mask[None], -1).amax(dim=(0, 2)) + 1
        return EncoderOutput(
            keys=keys, values=values, prefix_mask=mask, pooled=pooled, next_position=next_position
        )
