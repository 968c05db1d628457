"""LFM2 fusion: the first `num_layers` layers of LiquidAI/LFM2-700M over audio, visual and summary tokens.

Token placement: [audio segments (S) | visual segments (Lv) | summary] -> (B, S + Lv + 1, H). LFM2 is
causal (causal attention and causal short convolutions), so the learned summary token goes LAST, the
only position that sees every other token; its final-norm state is the fused clip vector (B, H).
A missing modality's tokens arrive as the model's learned "missing" embedding (never zeros, never the
ignored cache tokens) and the branches pool padding away, so no attention mask is needed. Only the kept layers and the final norm are built: no 65k x H
embedding table, no LM head.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn
from transformers import Lfm2Config, Lfm2Model
from transformers.models.lfm2.modeling_lfm2 import Lfm2RotaryEmbedding

from mmfer.core.errors import BadInputError, ConfigError

log = logging.getLogger(__name__)

LFM2_700M_ID = "LiquidAI/LFM2-700M"
# config.json of LiquidAI/LFM2-700M (16 layers, hidden 1536); checked: its first 6 layers hold 241.4M params.
LFM2_700M_CONFIG: dict[str, object] = {
    "hidden_size": 1536, "intermediate_size": 10240, "num_hidden_layers": 16, "num_attention_heads": 24,
    "num_key_value_heads": 8, "max_position_embeddings": 128_000, "norm_eps": 1e-5, "conv_bias": False,
    "conv_L_cache": 3, "block_multiple_of": 256, "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "layer_types": ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
}
TINY_LAYER_TYPES = ["conv", "conv", "full_attention"]
# Attention implementations that are causal when given no mask (sdpa sets is_causal itself); eager is not:
# with attention_mask=None it lets every token see every later one.
CAUSAL_WITHOUT_MASK = ("sdpa",)  # LFM2-700M's pattern, repeated for deeper tiny models


class CheckpointNotFoundError(BadInputError, FileNotFoundError):
    """The LFM2 checkpoint named by fusion.pretrained_model is neither a local folder nor downloadable."""


def lfm2_config(pretrained_model: str, use_pretrained: bool, num_layers: int, tiny_hidden_size: int) -> Lfm2Config:
    """The truncated LFM2 config: `num_layers` layers, vocab of 1 (the embedding table is never used).

    A checkpoint's config.json is read by transformers itself (`Lfm2Config.from_pretrained`), so keys that
    are not dataclass fields (a top-level `rope_theta`, `block_ff_dim`, old `full_attn_idxs`) keep the
    meaning transformers gives them instead of being dropped for defaults.
    """
    if tiny_hidden_size > 0:
        config = Lfm2Config(
            hidden_size=tiny_hidden_size, intermediate_size=2 * tiny_hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=4, num_key_value_heads=2, block_auto_adjust_ff_dim=False, max_position_embeddings=512,
            layer_types=[TINY_LAYER_TYPES[i % 3] for i in range(num_layers)])
    elif use_pretrained or Path(pretrained_model).is_dir():
        config = Lfm2Config.from_pretrained(str(resolve_checkpoint(pretrained_model)))
    elif pretrained_model == LFM2_700M_ID:
        config = Lfm2Config(**LFM2_700M_CONFIG)
    else:
        raise CheckpointNotFoundError(
            f"{pretrained_model}: no built-in config for this model; pass a local folder holding its config.json"
        )
    total = len(config.layer_types)
    if num_layers > total:
        raise ValueError(f"fusion.num_layers={num_layers} but {pretrained_model} has only {total} layers")
    layer_types = list(config.layer_types[:num_layers])
    config.num_hidden_layers, config.layer_types = num_layers, layer_types
    config.full_attn_idxs = [i for i, kind in enumerate(layer_types) if kind == "full_attention"]
    config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id = 1, 0, None, None
    config.use_cache, config.tie_word_embeddings = False, False
    config._attn_implementation = "sdpa"  # LfmFusion relies on sdpa's is_causal when it passes no mask
    return config


def resolve_checkpoint(pretrained_model: str) -> Path:
    """A local folder, or the hub snapshot (config + safetensors only). Raises CheckpointNotFoundError."""
    path = Path(pretrained_model)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(pretrained_model, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as err:  # hub errors come in many types (offline, gated, 404); all mean "not here"
        raise CheckpointNotFoundError(
            f"{pretrained_model}: LFM2 checkpoint not found locally and not downloadable ({type(err).__name__}: "
            f"{err}). Download it ahead with `hf download {pretrained_model}`, pass a local folder as "
            "model.fusion.pretrained_model, or use model.fusion.use_pretrained=false / --preset tiny."
        ) from err


def build_backbone(config: Lfm2Config, checkpoint_dir: Path | None) -> Lfm2Model:
    """Lfm2Model with config's layers and no embedding table; weights from checkpoint_dir when given."""
    if checkpoint_dir is None:
        model = Lfm2Model(config)
        model.embed_tokens = None
        return model
    with torch.device("meta"):
        model = Lfm2Model(config)
    model.embed_tokens = None
    model.to_empty(device="cpu")
    model.rotary_emb = Lfm2RotaryEmbedding(config)  # its non-persistent buffers were left empty
    model.load_state_dict(_read_layer_weights(checkpoint_dir, config.num_hidden_layers), strict=True)
    return model


def _read_layer_weights(checkpoint_dir: Path, num_layers: int) -> dict[str, Tensor]:
    """Only `layers.{i<num_layers}.*` and the final norm, read tensor by tensor from the safetensors files."""
    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointNotFoundError(f"{checkpoint_dir}: no .safetensors files; download the full checkpoint")
    wanted = tuple(f"layers.{i}." for i in range(num_layers)) + ("embedding_norm.",)
    state: dict[str, Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                name = key.removeprefix("model.")
                if name.startswith(wanted):
                    state[name] = f.get_tensor(key).float()
    log.info("LFM2: read %d tensors (%d layers + final norm) from %s", len(state), num_layers, checkpoint_dir)
    return state


class LfmFusion(nn.Module):
    """Projects branch tokens to LFM2 width, appends the summary token, runs the truncated LFM2."""

    def __init__(
        self, backbone: Lfm2Model, audio_dim: int | None, visual_dim: int | None,
        num_audio_tokens: int, num_visual_tokens: int,
    ) -> None:
        super().__init__()
        implementation = backbone.config._attn_implementation
        if implementation not in CAUSAL_WITHOUT_MASK:
            raise ConfigError(f"LFM2 attention implementation {implementation!r}: without a mask it would attend "
                              f"both ways (LfmFusion passes none); use one of {CAUSAL_WITHOUT_MASK}")
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.hidden_size = hidden
        self.audio_proj = nn.Linear(audio_dim, hidden) if audio_dim else None
        self.visual_proj = nn.Linear(visual_dim, hidden) if visual_dim else None
        self.audio_embed = nn.Parameter(torch.randn(num_audio_tokens, hidden) * 0.02) if audio_dim else None
        self.visual_embed = nn.Parameter(torch.randn(num_visual_tokens, hidden) * 0.02) if visual_dim else None
        self.summary = nn.Parameter(torch.randn(hidden) * 0.02)

    def forward(self, audio: Tensor | None, visual: Tensor | None) -> Tensor:
        """audio: (B, S, Da') segment tokens; visual: (B, Lv, Dv') segment tokens (missing clips already
        carry the model's learned missing embedding). returns (B, H): the final-norm state of the summary
        token, placed last because LFM2 is causal."""
        parts = []
        if audio is not None:
            parts.append(self.audio_proj(audio) + self.audio_embed)        # modality + position embedding
        if visual is not None:
            parts.append(self.visual_proj(visual) + self.visual_embed)
        batch = (audio if audio is not None else visual).shape[0]
        parts.append(self.summary.expand(batch, 1, -1))
        x = torch.cat(parts, dim=1)                                       # (B, S + Lv + 1, H)
        return self.encode(x)[:, -1]

    def encode(self, inputs_embeds: Tensor) -> Tensor:
        """The truncated LFM2 over (B, L, H) input embeddings -> (B, L, H) final-norm hidden states."""
        # No padding reaches LFM2, so no mask: sdpa applies causal attention itself (is_causal), as
        # transformers does for unpadded input; skipping its mask builder also lets this run on "meta".
        no_mask = {"full_attention": None, "conv": None}
        return self.backbone(inputs_embeds=inputs_embeds, attention_mask=no_mask, use_cache=False).last_hidden_state

    def set_mode(self, mode: str, lora_rank: int, lora_alpha: int, dropout: float) -> None:
        """finetune: all LFM2 weights train; frozen: none (no grads); lora: only peft LoRA adapters train."""
        if mode == "finetune":
            return
        self.backbone.requires_grad_(False)
        if mode == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            targets = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]
            cfg = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=targets)
            inject_adapter_in_model(cfg, self.backbone)
            for name, param in self.backbone.named_parameters():
                param.requires_grad_("lora_" in name)
        elif mode != "frozen":
            raise ValueError(f"fusion.mode must be finetune, frozen or lora, got {mode!r}")

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each LFM2 layer in backward (transformers' per-layer activation checkpointing)."""
        bb = self.backbone
        bb.main_input_name = "inputs_embeds"  # no embedding table: skip transformers' input-embedding grad hook
        if enabled:
            enable = getattr(bb, "activation_checkpointing_enable", None) or bb.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        elif any(getattr(layer, "gradient_checkpointing", False) for layer in bb.layers):
            (getattr(bb, "activation_checkpointing_disable", None) or bb.gradient_checkpointing_disable)()
